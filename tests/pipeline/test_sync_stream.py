"""Async streams read from sync code (``ferryman._loop``): one task per stream, no hop per chunk."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import httpx2
import pytest

from ferryman import _loop


class Source:
    """An async stream on the background loop that notes how far it was read and how it ended."""

    def __init__(self, chunks: int, stall_after: int | None = None, fail_after: int | None = None) -> None:
        self.chunks = chunks
        self.stall_after = stall_after
        self.fail_after = fail_after
        self.pulled = 0
        self.ended: BaseException | str | None = None
        self.ended_event = threading.Event()

    async def stream(self) -> AsyncIterator[bytes]:
        try:
            for i in range(self.chunks):
                if i == self.stall_after:
                    await asyncio.Event().wait()  # an upstream that never sends another byte
                if i == self.fail_after:
                    raise httpx2.ReadError("the upstream went away")
                self.pulled += 1
                yield b"chunk %d;" % i
            self.ended = "finished"
        except BaseException as exc:
            self.ended = exc
            raise
        finally:
            self.ended_event.set()


def pump(source: Source) -> _loop.Pump:
    return _loop.Pump(source.stream(), _loop.background_loop())


def test_chunks_are_read_only_as_the_reader_asks():
    source = Source(5)
    reader = iter(pump(source))
    assert next(reader) == b"chunk 0;"
    assert source.pulled == 1  # nothing read ahead: stages see what the caller saw
    assert next(reader) == b"chunk 1;"
    assert source.pulled == 2
    assert list(reader) == [b"chunk 2;", b"chunk 3;", b"chunk 4;"]
    assert source.ended == "finished"


def test_an_error_reaches_the_reader_after_the_chunks_before_it():
    source = Source(5, fail_after=2)
    reader = iter(pump(source))
    assert [next(reader), next(reader)] == [b"chunk 0;", b"chunk 1;"]
    with pytest.raises(httpx2.ReadError, match="went away"):
        next(reader)


def test_closing_between_chunks_closes_the_stream_at_its_yield():
    source = Source(5)
    stream = pump(source)
    reader = iter(stream)
    next(reader)
    stream.close()  # waits for the stream's own close
    assert isinstance(source.ended, GeneratorExit)
    stream.close()  # twice is fine


def test_closing_before_reading_closes_the_stream():
    source = Source(3)
    stream = pump(source)
    stream.close()
    assert source.pulled == 0 and list(stream) == []


def test_a_read_left_waiting_is_cut_off_as_abandoned(monkeypatch):
    monkeypatch.setattr(_loop, "CLOSE_GRACE", 0.05)
    source = Source(5, stall_after=1)
    stream = pump(source)
    got: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        got.extend(stream)  # blocks in the second read, which never comes
        done.set()

    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + 10
    while source.pulled < 1 or not stream._reading:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stream.close()  # from another thread, while the reader waits for a chunk
    assert source.ended_event.wait(10) and done.wait(10)
    reader.join()
    assert got == [b"chunk 0;"]
    assert isinstance(source.ended, asyncio.CancelledError) and _loop.abandoned(source.ended)


def test_closing_on_the_loop_thread_does_not_wait_for_itself():
    source = Source(3)
    stream = pump(source)
    reader = iter(stream)
    next(reader)

    async def collect_on_loop() -> None:
        stream.close()  # as the garbage collector might, on the loop's own thread

    _loop.run(collect_on_loop())
    assert source.ended_event.wait(10)
    assert isinstance(source.ended, GeneratorExit)


def test_run_returns_results_and_raises_errors():
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        raise ValueError("no")

    assert _loop.run(answer()) == 42
    with pytest.raises(ValueError, match="no"):
        _loop.run(fail())
