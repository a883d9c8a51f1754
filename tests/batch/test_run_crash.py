"""``ferryman run`` killed part-way (``kill -9``, Ctrl-C) resumes exactly once.

The CLI runs as a real subprocess against the session's mock with injected 500s and a low RPM;
the mock's request log (each chat request names its line in its message) proves which lines were
sent when.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import time
from typing import Any

from ferryman.mock.control_client import MockControl
from tests.batch.conftest import Job, chat_line, journal_recorded, request_line_id

LINES = 1000
KILL_AT = 300


def wait_for_results(job: Job, process: subprocess.Popen[str], count: int, timeout_s: float = 30.0) -> None:
    """Poll the journal until ``count`` lines have results (the process must still be running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the run ended (exit {process.returncode}) before {count} results:\n{err}")
        if journal_recorded(job.journal) >= count:
            return
        time.sleep(0.01)
    process.kill()
    process.communicate()
    raise AssertionError(f"no {count} results within {timeout_s} s")


def settled_log(mock: MockControl, quiet_s: float = 0.3, timeout_s: float = 10.0) -> int:
    """Wait until the mock has logged every request a killed client left behind (no new entry for
    ``quiet_s``); returns the last entry's seq."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        log = mock.requests()
        seq = log[-1]["seq"] if log else 0
        if seq != last:
            last, since = seq, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return seq
        time.sleep(0.05)
    raise AssertionError(f"the mock was still logging requests {timeout_s} s after the kill")


def sent_by_line(entries: list[dict[str, Any]], cut_ok: bool = False) -> dict[str, list[dict[str, Any]]]:
    """The chat requests of ``entries`` by the line they were sent for. ``cut_ok``: skip requests
    whose body never arrived whole (cut off by the kill; the mock logs them without a body)."""
    by_line: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for entry in entries:
        if entry["path"] == "/v1/chat/completions":
            line_id = request_line_id(entry)
            if line_id is None and cut_ok and entry.get("body") is None:
                continue
            assert line_id is not None, entry
            by_line[line_id].append(entry)
    return by_line


def test_kill_9_part_way_then_rerun_gives_exactly_one_result_per_line_and_resends_no_recorded_line(
    batch_job: Job,
) -> None:
    mock = batch_job.mock
    mock.set_faults(["path=/v1/chat/*;p=0.05;status=500"])
    mock.set_limits(rpm=900)  # the first 900 at once, then 15/s: the pacer must learn it from headers
    ids = [f"c{i:04d}" for i in range(LINES)]
    batch_job.write(chat_line(i) for i in ids)
    env = {"FERRYMAN_RETRY__MAX_ATTEMPTS": "6"}  # a line fails for good with p = 0.05**6

    first = batch_job.start(**env)
    wait_for_results(batch_job, first, KILL_AT)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=10)
    killed_at = time.time()
    assert first.returncode == -signal.SIGKILL

    states = batch_job.states()  # read after the kill: exactly what the journal had committed
    recorded = {i for i, state in states.items() if state in ("done", "failed")}
    assert KILL_AT <= len(recorded) < LINES, "the kill must land part-way"
    assert not batch_job.output.exists(), "the killed run never got to write its results"

    mark = settled_log(mock)  # every request of the killed run is logged at or before this
    second = batch_job.run(**env)
    assert second.returncode == 0, second.stderr
    assert "nothing to send" not in second.stderr

    # Exactly one result per custom_id, each a whole JSON line, in input order, all succeeded.
    raw = batch_job.output.read_bytes().splitlines()
    assert len(raw) == LINES
    results = batch_job.results()
    assert [r["custom_id"] for r in results] == ids
    assert [r["line"] for r in results] == list(range(1, LINES + 1))
    assert all(r["status"] == 200 and r["error"] is None for r in results)
    assert all(r["response"]["object"] == "chat.completion" for r in results)
    assert batch_job.error_rows() == []
    assert set(batch_job.states().values()) == {"done"}

    # The mock's log: no line recorded before the kill was sent again after it.
    log = mock.requests()
    after_kill = sent_by_line([e for e in log if e["time"] > killed_at or e["seq"] > mark], cut_ok=True)
    assert not recorded & set(after_kill), f"recorded lines sent again: {sorted(recorded & set(after_kill))[:10]}"
    # Every line not recorded at the kill was sent by the re-run, and only those.
    rerun = sent_by_line([e for e in log if e["seq"] > mark])
    assert set(rerun) == set(ids) - recorded

    # The injected 500s were retried by the pipeline, and each result counts its own attempts:
    # a line's attempts are the requests the run that recorded it sent for it.
    by_result = {r["custom_id"]: r for r in results}
    before_kill = sent_by_line([e for e in log if e["seq"] <= mark], cut_ok=True)
    for line_id in ids:
        sent = before_kill[line_id] if line_id in recorded else rerun[line_id]
        assert by_result[line_id]["attempts"] == len(sent), line_id
        assert [e["status"] for e in sent] == [500] * (len(sent) - 1) + [200], line_id
    retried = [r for r in results if r["attempts"] > 1]
    assert retried, "with 5 % injected 500s some lines must have needed a retry"
    assert sum(len(v) for v in sent_by_line(log, cut_ok=True).values()) >= LINES + len(retried)
    # Paced to the limit learned from the headers: the mock never had to refuse a request.
    assert [e for e in log if e["status"] == 429] == []
    # The summary counts them (over both runs: it is the journal's).
    summary = re.search(r"retried\s+(\d+)", second.stderr)
    assert summary is not None and int(summary.group(1)) == len(retried)
    assert re.search(rf"done\s+{LINES}\b", second.stderr)


def test_ctrl_c_stops_with_130_writes_what_is_recorded_and_rerun_finishes(batch_job: Job) -> None:
    mock = batch_job.mock
    mock.settings(latency_ms=40)
    ids = [f"c{i:03d}" for i in range(200)]
    batch_job.write(chat_line(i) for i in ids)

    first = batch_job.start("--concurrency", "4")
    wait_for_results(batch_job, first, 40)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=20)
    assert first.returncode == 130, err
    assert "interrupted" in err and "run the same command again" in err
    states = batch_job.states()
    recorded = {i for i, state in states.items() if state == "done"}
    assert 40 <= len(recorded) < len(ids)
    assert sum(1 for s in states.values() if s == "pending") == len(ids) - len(recorded)
    # The results file holds exactly the recorded lines, each whole.
    assert {r["custom_id"] for r in batch_job.results()} == recorded

    mark = settled_log(mock)
    mock.settings(latency_ms=0)
    second = batch_job.run()
    assert second.returncode == 0, second.stderr
    assert [r["custom_id"] for r in batch_job.results()] == ids
    assert set(sent_by_line(mock.requests(mark))) == set(ids) - recorded
