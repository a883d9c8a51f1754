"""``ferryman serve --workers 2`` with no upstream configured and no key: every worker sends its
calls to the one embedded mock the parent started (not to api.openai.com, which is a 502 here).

A real ``python -m ferryman.cli serve`` subprocess with a clean environment (no ``FERRYMAN_*`` or
``OPENAI_*``, no proxies), the official SDK, real HTTP over loopback. The demo key comes from the
banner; the embedded mock's own request log (its control API, at the URL the banner names) shows
where the calls went. On Linux, which worker served each call is read from ``/proc``: the process
holding the server side of the call's connection.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import httpx2
import openai
import pytest

from ferryman import redact
from ferryman.mock.control_client import MockControl
from tests.gateway.processes import GatewayProcess, start_gateway

MESSAGES = [{"role": "user", "content": "hi"}]
CALLS = 24


def clean_env(data_dir: Path) -> dict[str, str]:
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "OPENAI_")) and k.lower() not in proxies
    }
    env.update(FERRYMAN_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1", COLUMNS="1000")  # no wrapped banner lines
    env["FERRYMAN_MOCK_TODAY"] = os.environ["FERRYMAN_MOCK_TODAY"]  # the embedded mock: the suite's date (conftest)
    return env


def wait_for(process: GatewayProcess, pattern: str, deadline_s: float = 10.0) -> re.Match[str]:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        found = re.search(pattern, process.output(), re.MULTILINE)
        if found:
            return found
        time.sleep(0.05)  # polling the log with a deadline, not ordering
    raise AssertionError(f"no {pattern!r} in the gateway's output:\n{redact.secrets(process.output()[-3000:])}")


def wait_ready(process: GatewayProcess, deadline_s: float) -> None:
    """``GatewayProcess.wait_ready``, its failure without the demo key the output shows."""
    try:
        process.wait_ready(deadline_s)
    except (RuntimeError, TimeoutError) as error:
        raise AssertionError(redact.secrets(str(error))) from None


# -- which worker holds a connection (Linux /proc) ----------------------------------------------------


def children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and b"spawn_main" in cmdline:
            found.add(int(entry.name))
    return found


def established_inodes(port: int) -> set[str]:
    """Inodes of the ESTABLISHED sockets whose local port is ``port`` (the server's side)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rpartition(":")[2], 16) == port and fields[3] == "01":
                inodes.add(fields[9])
    return inodes


def holder(pids: set[int], inodes: set[str]) -> set[int]:
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = set()
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in wanted:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker sockets from /proc")
def test_two_workers_send_every_call_to_the_embedded_mock(tmp_path: Path):
    process = start_gateway(clean_env(tmp_path / "data"), tmp_path / "work", "--workers", "2")
    mock: MockControl | None = None
    try:
        wait_ready(process, 180)  # two workers and the parent each import everything: slow on a busy machine
        banner = wait_for(process, r"^ferryman gateway on .*$").group(0)
        found = wait_for(process, r"upstreams: default \((http://127\.0\.0\.1:\d+/v1), Ferryman's embedded mock\)")
        assert "workers: 2" in banner
        assert "api.openai.com" not in process.output()
        key = wait_for(process, r"export OPENAI_API_KEY=(\S+)").group(1)
        mock = MockControl(found.group(1).removesuffix("/v1"))
        before = len(mock.requests())

        workers = children(process.process.pid)
        assert len(workers) == 2, workers
        served: dict[int, int] = {}
        statuses = []
        calls = 0
        while calls < CALLS or (len(served) < 2 and calls < 200):
            # A new client each time: a new connection, accepted by whichever worker gets it.
            with openai.OpenAI(
                base_url=process.base_url, api_key=key, max_retries=0, http_client=httpx2.Client(timeout=30)
            ) as client:
                raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
                statuses.append(raw.status_code)
                assert raw.parse().choices[0].message.content
                for pid in holder(workers, established_inodes(process.port)):
                    served[pid] = served.get(pid, 0) + 1
            calls += 1

        assert statuses == [200] * calls
        assert set(served) == workers, f"calls per worker: {served}"
        # Every call reached the embedded mock, once (the workers' pipelines retried nothing).
        chats = [e for e in mock.requests()[before:] if e["path"] == "/v1/chat/completions"]
        assert len(chats) == calls
        assert {e["status"] for e in chats} == {200}
    finally:
        if mock is not None:
            mock.close()
        process.stop()  # terminate, wait, SIGKILL after a timeout
    assert process.process.returncode is not None


def test_a_worker_without_the_parents_upstream_refuses_to_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Settings that would have made the parent start the embedded mock, but no mock passed on:
    the worker stops, rather than send calls to OpenAI's API with no key."""
    from ferryman.gateway.server import app_from_env
    from ferryman.logs import remove_json_logging

    for name in ("FERRYMAN_CONFIG", "FERRYMAN_DEPLOYMENTS", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="no embedded mock passed on in FERRYMAN_DEPLOYMENTS"):
            app_from_env()
    finally:
        remove_json_logging()
