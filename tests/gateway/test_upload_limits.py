"""Upload limits of a real ``ferryman serve`` process, measured from outside: its memory (VmRSS,
VmHWM from ``/proc/<pid>/status``) while it takes uploads far larger than any buffer it may hold.

The gateway runs as a subprocess (:mod:`tests.gateway.processes`) in front of the mock, which
runs as a subprocess too (``python -m ferryman.cli mock``: its file limit is 512 MiB by default,
so a 400 MiB file is accepted), with ``gateway.max_upload_mb=512`` and
``gateway.max_concurrent_uploads=3``. The gateway's ``TMPDIR`` is a directory of the test's own,
so the unlinked files it spools uploads to show up in ``/proc/<pid>/fd`` as ``<dir>/#… (deleted)``:
that is how the test sees that an upload holds one of the three slots.

- a declared 700 MiB upload, its body trickling in, is refused (413) within a second, the
  gateway's memory hardly moving;
- three uploads held open mid-body take the three slots: a fourth is refused with 429
  ``too_many_uploads`` and ``retry-after``; released, the three complete (200);
- three concurrent 400 MiB uploads, each streamed from a generator of 1 MiB chunks (the test
  holds no more than that either), all succeed with a file object, the gateway's peak memory
  above idle staying under 300 MB.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest

from ferryman.mock.server import free_port
from tests.gateway.processes import GatewayProcess, gateway_env, start_gateway
from tests.leak_guard import assert_no_secrets

MIB = 1024 * 1024
MB = 1000 * 1000
BIG = 400 * MIB  # each of the concurrent uploads
DECLARED = 734003200  # 700 MiB: over gateway.max_upload_mb=512
SLOTS = 3  # gateway.max_concurrent_uploads
LINE = b"ferryman upload test data, line after line of it.\n"
CHUNK = (LINE * (MIB // len(LINE) + 1))[:MIB]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")


# -- the processes ---------------------------------------------------------------------------------


@dataclass
class MockProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        deadline = time.monotonic() + deadline_s
        with httpx2.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the mock exited with {self.process.returncode}:\n{self.output()[-3000:]}")
                try:
                    if http.get(self.url + "/_ferryman/health").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)  # polling with a deadline, not ordering
        raise TimeoutError(f"the mock on port {self.port} was not ready in {deadline_s}s:\n{self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_mock(workdir: Path) -> MockProcess:
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"mock-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "OPENAI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env["FERRYMAN_MOCK_TODAY"] = os.environ["FERRYMAN_MOCK_TODAY"]  # the suite's date (tests/conftest.py)
    command = [sys.executable, "-m", "ferryman.cli", "mock", "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    return MockProcess(port, process, log)


@dataclass
class Setup:
    gateway: GatewayProcess
    mock: MockProcess
    key: str
    spool_dir: Path

    @property
    def pid(self) -> int:
        return self.gateway.process.pid


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp("upload-limits")
    spool_dir = workdir / "spool"
    spool_dir.mkdir()
    mock = start_mock(workdir / "mock")
    gateway: GatewayProcess | None = None
    try:  # both start at once (the gateway's /readyz does not ask the upstream)
        env = gateway_env(
            f"{mock.url}/v1",
            workdir / "data",
            GATEWAY__MAX_UPLOAD_MB="512",
            GATEWAY__MAX_CONCURRENT_UPLOADS=str(SLOTS),
        )
        env["TMPDIR"] = str(spool_dir)  # where tempfile puts the gateway's spools
        gateway = start_gateway(env, workdir / "gateway")
        mock.wait_ready()
        gateway.wait_ready()
        key, _ = gateway.create_key("uploads")
        yield Setup(gateway, mock, key, spool_dir)
        assert gateway.process.poll() is None, f"the gateway died:\n{gateway.output()[-3000:]}"
    finally:
        if gateway is not None:
            gateway.stop()
            gateway.assert_no_secrets_logged()
        mock.stop()
        assert_no_secrets(mock.output(), "the mock's output")


# -- measuring the gateway -------------------------------------------------------------------------


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])  # "VmRSS:   123456 kB"
    raise KeyError(field)


def rss(pid: int) -> int:
    return status_kb(pid, "VmRSS") * 1024


def reset_peak(pid: int) -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak(pid: int) -> int:
    return status_kb(pid, "VmHWM") * 1024


class Sampler:
    """VmRSS of a process every 50 ms on a thread, keeping the largest (and the most spools
    open at once, to show the uploads overlapped)."""

    def __init__(self, pid: int, spool_dir: Path) -> None:
        self.pid = pid
        self.spool_dir = spool_dir
        self.largest = rss(pid)
        self.most_spools = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.largest = max(self.largest, rss(self.pid))
                self.most_spools = max(self.most_spools, spools(self.pid, self.spool_dir))
                self.samples += 1
            except (OSError, KeyError):
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def spools(pid: int, spool_dir: Path) -> int:
    """The gateway's open, unlinked files in ``spool_dir``: one per upload being received."""
    count = 0
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(spool_dir) + "/") and target.endswith(" (deleted)"):
            count += 1
    return count


def wait_for_spools(setup: Setup, count: int, deadline_s: float = 15.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if spools(setup.pid, setup.spool_dir) >= count:
            return
        time.sleep(0.02)  # polling the gateway's fd table with a deadline, not ordering
    raise TimeoutError(
        f"the gateway did not open {count} spools in {deadline_s}s (has {spools(setup.pid, setup.spool_dir)})"
    )


# -- requests --------------------------------------------------------------------------------------


def multipart(size: int, filename: str = "data.bin") -> tuple[str, bytes, bytes, int]:
    """(boundary, the bytes before the file's data, the bytes after it, the whole length)."""
    boundary = f"ferryman-{uuid.uuid4().hex}"
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        "user_data\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    return boundary, head, tail, len(head) + size + len(tail)


def file_data(size: int) -> Iterator[bytes]:
    """``size`` bytes in 1 MiB chunks (the same chunk each time: nothing accumulates)."""
    left = size
    while left > 0:
        piece = CHUNK if left >= MIB else CHUNK[:left]
        left -= len(piece)
        yield piece


def request_head(setup: Setup, boundary: str, length: int) -> bytes:
    return (
        "POST /v1/files HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{setup.gateway.port}\r\n"
        f"Authorization: Bearer {setup.key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {length}\r\n"
        "\r\n"
    ).encode()


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def read_reply(sock: socket.socket) -> RawReply:
    stream = sock.makefile("rb")
    try:
        status_line = stream.readline(65537)
        if not status_line:
            raise ConnectionError("the gateway closed the connection without a reply")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while line := stream.readline(65537).rstrip(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = stream.read(int(headers.get("content-length", "0")))
        return RawReply(status, headers, body)
    finally:
        stream.close()


def upload_with_httpx(setup: Setup, size: int, filename: str) -> httpx2.Response:
    boundary, head, tail, length = multipart(size, filename)

    def body() -> Iterator[bytes]:
        yield head
        yield from file_data(size)
        yield tail

    with httpx2.Client(timeout=httpx2.Timeout(120)) as http:
        return http.post(
            setup.gateway.base_url + "/files",
            content=body(),
            headers={
                "authorization": f"Bearer {setup.key}",
                "content-type": f"multipart/form-data; boundary={boundary}",
                "content-length": str(length),
            },
        )


def assert_file_object(reply: httpx2.Response | RawReply, size: int, filename: str) -> None:
    status = reply.status_code if isinstance(reply, httpx2.Response) else reply.status
    assert status == 200, reply.text if isinstance(reply, httpx2.Response) else reply.body
    body = reply.json()
    assert body["object"] == "file", body
    assert body["id"].startswith("file-"), body
    assert body["bytes"] == size, body
    assert body["filename"] == filename, body
    assert body["purpose"] == "user_data", body


# -- the tests -------------------------------------------------------------------------------------


def test_a_declared_700_mb_upload_is_refused_at_once(setup: Setup) -> None:
    boundary, head, _, _ = multipart(DECLARED)
    idle = rss(setup.pid)
    can_reset = reset_peak(setup.pid)
    stop = threading.Event()
    sent = [0]

    with socket.create_connection(("127.0.0.1", setup.gateway.port), timeout=10) as sock:

        def trickle() -> None:  # the body, slowly: 64 KiB every 20 ms
            piece = CHUNK[: 64 * 1024]
            try:
                while not stop.wait(0.02):
                    sock.sendall(piece)
                    sent[0] += len(piece)
            except OSError:
                return  # the gateway closed the connection: fine

        sock.sendall(request_head(setup, boundary, DECLARED) + head)
        started = time.monotonic()
        sender = threading.Thread(target=trickle, name="trickle", daemon=True)
        sender.start()
        try:
            reply = read_reply(sock)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            sender.join(5)

    after = rss(setup.pid)
    high = peak(setup.pid) if can_reset else after
    print(
        f"\n700 MiB declared: {reply.status} after {elapsed * 1000:.0f} ms ({sent[0] // 1024} KiB of body sent); "
        f"gateway RSS idle {idle / MB:.1f} MB, after {after / MB:.1f} MB, peak {high / MB:.1f} MB"
    )
    assert reply.status == 413, reply.body
    assert reply.json()["error"]["code"] == "request_too_large"
    assert elapsed < 1.0, f"the 413 came after {elapsed:.2f}s"
    assert high - idle < 50 * MB, f"the gateway grew by {(high - idle) / MB:.1f} MB"
    assert after - idle < 50 * MB


def test_an_upload_beyond_the_concurrent_limit_is_refused_with_429(setup: Setup) -> None:
    assert spools(setup.pid, setup.spool_dir) == 0
    size = 4 * MIB
    release = threading.Event()
    replies: dict[int, RawReply | BaseException] = {}
    holders: list[threading.Thread] = []

    def hold(n: int) -> None:
        boundary, head, tail, length = multipart(size, f"held-{n}.bin")
        data = file_data(size)
        try:
            with socket.create_connection(("127.0.0.1", setup.gateway.port), timeout=60) as sock:
                sock.sendall(request_head(setup, boundary, length) + head + next(data))  # 1 MiB of the 4
                if not release.wait(30):
                    raise TimeoutError("never released")
                for piece in data:
                    sock.sendall(piece)
                sock.sendall(tail)
                replies[n] = read_reply(sock)
        except BaseException as error:
            replies[n] = error

    try:
        for n in range(SLOTS):
            thread = threading.Thread(target=hold, args=(n,), name=f"upload-holder-{n}", daemon=True)
            thread.start()
            holders.append(thread)
        wait_for_spools(setup, SLOTS)  # every slot is taken

        refused = upload_with_httpx(setup, MIB, "fourth.bin")
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert error["code"] == "too_many_uploads", error
        assert refused.headers.get("retry-after") == "1", dict(refused.headers)
    finally:
        release.set()
        for thread in holders:
            thread.join(60)

    for n in range(SLOTS):
        reply = replies.get(n)
        assert isinstance(reply, RawReply), f"held upload {n}: {reply!r}"
        assert_file_object(reply, size, f"held-{n}.bin")
    # the slots are free again
    assert_file_object(upload_with_httpx(setup, MIB, "after.bin"), MIB, "after.bin")


def test_three_concurrent_400_mb_uploads_keep_the_gateway_small(setup: Setup) -> None:
    idle = rss(setup.pid)
    can_reset = reset_peak(setup.pid)
    replies: dict[int, httpx2.Response | BaseException] = {}

    def upload(n: int) -> None:
        try:
            replies[n] = upload_with_httpx(setup, BIG, f"big-{n}.bin")
        except BaseException as error:
            replies[n] = error

    started = time.monotonic()
    with Sampler(setup.pid, setup.spool_dir) as sampler:
        threads = [threading.Thread(target=upload, args=(n,), name=f"big-upload-{n}") for n in range(SLOTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    elapsed = time.monotonic() - started
    high = max(sampler.largest, peak(setup.pid) if can_reset else 0)
    print(
        f"\n3 x 400 MiB: {elapsed:.1f}s; gateway RSS idle {idle / MB:.1f} MB, sampled peak "
        f"{sampler.largest / MB:.1f} MB ({sampler.samples} samples), VmHWM {peak(setup.pid) / MB:.1f} MB"
        f"{'' if can_reset else ' (not reset)'}; peak above idle {(high - idle) / MB:.1f} MB; "
        f"at most {sampler.most_spools} spools open at once"
    )
    for n in range(SLOTS):
        reply = replies.get(n)
        assert isinstance(reply, httpx2.Response), f"upload {n}: {reply!r}"
        assert_file_object(reply, BIG, f"big-{n}.bin")
    assert sampler.most_spools == SLOTS, f"the uploads did not overlap ({sampler.most_spools} at most)"
    assert high - idle < 300 * MB, f"the gateway grew by {(high - idle) / MB:.1f} MB"
    assert spools(setup.pid, setup.spool_dir) == 0, "a spool is still open after the uploads"
