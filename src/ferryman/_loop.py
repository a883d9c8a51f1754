"""One background event loop per process, where the sync SDK's calls run the async pipeline;
:func:`run` waits for a coroutine on it, :class:`Pump` lets a sync reader iterate an async stream."""

from __future__ import annotations

import _thread
import asyncio
import atexit
import contextlib
import os
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
# What holds connections on the loop (the sync SDK's upstreams): closed at exit, before the
# interpreter's teardown would find them open ("Unclosed client session").
_closables: weakref.WeakSet[Any] = weakref.WeakSet()


def close_with(owner: Any, thing: Any) -> None:
    """``await thing.aclose()`` on the background loop when ``owner`` is garbage-collected (not
    waited for: collection may happen on any thread), or when the process exits, whichever is
    first."""
    _closables.add(thing)

    def collected() -> None:
        loop = _loop
        if loop is not None and loop.is_running() and _pid == os.getpid() and thing in _closables:
            _closables.discard(thing)
            with contextlib.suppress(RuntimeError):
                asyncio.run_coroutine_threadsafe(thing.aclose(), loop)

    weakref.finalize(owner, collected).atexit = False  # at exit, _shut_down closes and waits


def new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when it is installed (less CPU per wake-up and per socket read), else asyncio's."""
    if os.environ.get("FERRYMAN_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's pipeline loop, started on first use (and again after a fork)."""
    global _loop, _pid
    loop = _loop
    if loop is not None and _pid == os.getpid() and loop.is_running():
        return loop
    with _lock:
        if _loop is None or _pid != os.getpid() or not _loop.is_running():
            loop = new_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="ferryman-pipeline", daemon=True).start()
            ready.wait()
            _loop, _pid = loop, os.getpid()
            atexit.register(_shut_down, loop)
        return _loop


def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    """At exit, close what is still open on the loop: what :func:`close_at_exit` was given, then
    the async generators (the way ``asyncio.run`` would), waiting a moment at most."""
    if loop.is_running() and _pid == os.getpid():

        async def close_all() -> None:
            things = list(_closables)
            _closables.clear()
            await asyncio.gather(*(thing.aclose() for thing in things), return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(close_all(), 2), loop).result(timeout=3)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(loop.shutdown_asyncgens(), loop).result(timeout=2)


def run(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop | None = None) -> T:
    """Run ``coro`` on the background loop and wait for its result (from a sync caller, never
    from the loop's own thread).

    Lighter than ``run_coroutine_threadsafe(...).result()`` (no concurrent Future, no Condition):
    one wake-up of the loop, one lock released when the task is done. If the caller is
    interrupted while it waits (KeyboardInterrupt), the task is cancelled."""
    loop = loop or background_loop()
    done = _thread.allocate_lock()
    done.acquire()
    box: list[asyncio.Task[T]] = []

    def finished(_task: asyncio.Task[T]) -> None:
        done.release()

    def start() -> None:
        task = loop.create_task(coro)
        box.append(task)
        task.add_done_callback(finished)

    loop.call_soon_threadsafe(start)
    try:
        done.acquire()
    except BaseException:
        loop.call_soon_threadsafe(lambda: box[0].cancel() if box else coro.close())
        raise
    return box[0].result()


# -- async streams read from sync code ----------------------------------------------------------

# How long closing a stream waits for a read under way before it cancels it (seconds).
CLOSE_GRACE = 0.5
# The message of the cancellation that stops a read under way because the stream was closed
# meanwhile (from another thread): stages watching a stream treat it as the caller leaving (see
# :func:`abandoned`), like the ``GeneratorExit`` an ``aclose()`` raises.
ABANDONED = "ferryman: the stream was closed by its reader"
_END = object()


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def abandoned(error: BaseException) -> bool:
    """True for the cancellation of a read under way whose reader closed the stream."""
    return isinstance(error, asyncio.CancelledError) and ABANDONED in error.args


class Pump:
    """An async byte stream read from another thread, one chunk per request of the reader.

    One task on ``loop`` reads the stream for the whole of its life (no task, future and
    condition per chunk): it reads a chunk when the sync reader asks for one and hands it over
    through a queue. The stream is read no further than its reader has asked, so the stages
    watching it see what the caller saw (an abandoned stream stays abandoned, its record is
    written when the caller is done with it). :meth:`close` (from any thread, the loop's own
    included) stops the task and closes the stream on the loop.
    """

    def __init__(self, stream: AsyncIterator[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.stream = stream
        self.loop = loop
        self._items: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._wanted: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._reading = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        if self._task is not None or self._closed:
            return
        call = self.loop.call_soon_threadsafe
        call(self._start)
        items = self._items
        while True:
            item = items.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
            call(self._next)  # the reader asks for more

    def _start(self) -> None:
        if not self._closed and self._task is None:
            self._task = self.loop.create_task(self._run())

    def _next(self) -> None:
        wanted = self._wanted
        if wanted is not None and not wanted.done():
            wanted.set_result(None)

    async def _run(self) -> None:
        iterator = self.stream.__aiter__()
        try:
            while True:
                self._reading = True
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    self._reading = False
                if self._closed:  # closed while this chunk was on its way: nobody will read it
                    break
                self._wanted = self.loop.create_future()
                self._items.put(chunk)
                await self._wanted
            self._items.put(_END)
        except BaseException as error:
            self._items.put(_END if self._closed else _Failed(error))
            if not isinstance(error, Exception):
                raise

    def close(self) -> None:
        """Stop reading and close the stream (waits for that, except on the loop's own thread)."""
        if self._closed:
            return
        self._closed = True
        if asyncio._get_running_loop() is self.loop:  # collected or closed on the loop's own thread
            self.loop.create_task(self.aclose())
        else:
            run(self.aclose(), self.loop)

    async def aclose(self) -> None:
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            if self._reading:  # closed from another thread while its reader waits for a chunk
                await asyncio.wait({task}, timeout=CLOSE_GRACE)
                if not task.done():
                    task.cancel(ABANDONED)
            else:
                task.cancel()  # between two chunks: the stream is stopped at a yield
            await asyncio.wait({task})
        try:
            close = getattr(self.stream, "aclose", None)
            if close is not None:
                await close()  # a stream stopped at a yield sees GeneratorExit
        finally:
            self._items.put(_END)  # a reader still waiting (on another thread) stops
