"""``ferryman run --via batch-api``: split, upload, create, poll, download, merge, resume, Ctrl-C.

The CLI runs as a real subprocess (or :class:`BatchAPIRunner` is driven directly) against the
session's mock with fast batches; the mock's request log shows what was uploaded, created,
cancelled and sent live, and the journal (real SQLite) what was recorded.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest

from ferryman.batch.batch_api import BatchAPIRunner, split
from ferryman.batch.inputs import Line
from ferryman.batch.journal import Journal
from ferryman.batch.output import write_results
from ferryman.config import Settings, load
from ferryman.mock.control_client import MockControl
from tests.batch.conftest import TEST_KEY, Job, batch_line, chat_line, read_jsonl

BATCH_S = 0.3  # the mock's batches run validating → completed in this long
POLL = ("--poll-s", "0.05")
VOLATILE = ("id", "created", "system_fingerprint")  # differ between any two replies


def embedding_line(custom_id: str, text: str) -> dict[str, Any]:
    body = {"model": "text-embedding-3-small", "input": text, "dimensions": 8}
    return batch_line(custom_id, "/v1/embeddings", body)


def normalised(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Results without what two runs of the same line legitimately differ in: the route, the
    price tier, and the reply's id, creation time and fingerprint."""
    out = []
    for row in rows:
        row = {k: v for k, v in row.items() if k not in ("via", "cost_usd")}
        if isinstance(row["response"], dict):
            row["response"] = {k: v for k, v in row["response"].items() if k not in VOLATILE}
        out.append(row)
    return out


def requests_to(mock: MockControl, method: str, path: str) -> list[dict[str, Any]]:
    return [r for r in mock.requests() if r["method"] == method and r["path"] == path]


def parts_of(journal: Path) -> list[dict[str, Any]]:
    """The journal's parts table (safe while a run writes it: WAL); [] before it exists."""
    if not journal.exists():
        return []
    db = sqlite3.connect(journal, timeout=5)
    db.row_factory = sqlite3.Row
    try:
        rows = [dict(row) for row in db.execute("SELECT * FROM parts ORDER BY part")]
    except sqlite3.Error:
        return []
    finally:
        db.close()
    return [{**row, "custom_ids": orjson.loads(row["custom_ids"])} for row in rows]


def wait_for_batches(job: Job, process: subprocess.Popen[Any], count: int, timeout_s: float = 20.0) -> None:
    """Poll the journal until ``count`` parts have a recorded batch id (the run must go on)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"the run ended (exit {process.returncode}) before its batches were made:\n{err}")
        if sum(1 for part in parts_of(job.journal) if part["batch_id"]) >= count:
            return
        time.sleep(0.02)
    process.kill()
    process.communicate()
    raise AssertionError(f"no {count} batches recorded within {timeout_s} s")


def wait_for_file_text(path: Path, text: str, process: subprocess.Popen[Any], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            break
        time.sleep(0.02)
    process.kill()
    process.wait()
    raise AssertionError(f"{text!r} never showed in {path.name}:\n{path.read_text(errors='replace')}")


def run_in_process(job: Job, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    """``ferryman run`` for ``job`` in this process, with the job's environment."""
    from typer.testing import CliRunner

    from ferryman.cli import app

    for name in list(os.environ):
        if name.startswith(("FERRYMAN_", "OPENAI_", "AZURE_OPENAI")):
            monkeypatch.delenv(name)
    for name, value in job.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(job.root)
    return CliRunner().invoke(app, ["run", str(job.input), "-o", str(job.output), "--no-progress", *args])


@pytest.fixture
def fast_batches(ferryman_mock: MockControl) -> MockControl:
    ferryman_mock.settings(batch_seconds=BATCH_S)
    return ferryman_mock


@pytest.fixture
def runner_env(
    fast_batches: MockControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[], Settings]]:
    """Settings for driving :class:`BatchAPIRunner` in-process against the mock."""
    for name in list(os.environ):
        if name.startswith(("FERRYMAN_", "OPENAI_", "AZURE_OPENAI")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_BASE_URL", fast_batches.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_KEY)
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray ferryman.toml
    yield load


def chat(number: int, custom_id: str | None = None, **body: Any) -> Line:
    line = chat_line(custom_id or f"r{number}", seed=number, **body)
    return Line(number, line["custom_id"], line["url"], line["body"])


def open_journal(tmp_path: Path, lines: list[Line]) -> Journal:
    journal = Journal.open(tmp_path / "out.jsonl.journal", "input-sha256-of-the-test")
    journal.add(lines)
    return journal


# -- the same results as live ----------------------------------------------------------------------


def test_batch_api_results_file_matches_the_live_run_for_the_same_input(
    fast_batches: MockControl, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [chat_line(f"c{i}", seed=i) for i in range(1, 6)]
    rows[2:2] = [embedding_line("e1", "first text"), embedding_line("e2", "second text")]
    live_job, batch_job = Job(tmp_path / "live", fast_batches), Job(tmp_path / "batch", fast_batches)
    for job in (live_job, batch_job):
        job.root.mkdir()
        job.write(rows)

    live = run_in_process(live_job, monkeypatch)  # the same CLI; no second interpreter to start
    assert live.exit_code == 0, live.output
    fast_batches.clear_requests()
    done = batch_job.run("--via", "batch-api", *POLL)
    assert done.returncode == 0, done.stderr

    batch_rows, live_rows = batch_job.results(), live_job.results()
    assert [r["custom_id"] for r in batch_rows] == [r["custom_id"] for r in rows]  # input order
    assert normalised(batch_rows) == normalised(live_rows)
    assert {r["via"] for r in batch_rows} == {"batch-api"} and {r["via"] for r in live_rows} == {"live"}
    for b, lv in zip(batch_rows, live_rows, strict=True):  # the Batch API's tier is cheaper
        assert Decimal(0) < Decimal(b["cost_usd"]) < Decimal(lv["cost_usd"]), (b, lv)
    assert batch_job.error_rows() == []
    # One part per endpoint, in the order the endpoints first appear; nothing went out live.
    created = requests_to(fast_batches, "POST", "/v1/batches")
    assert [r["body"]["endpoint"] for r in created] == ["/v1/chat/completions", "/v1/embeddings"]
    assert [p["custom_ids"] for p in parts_of(batch_job.journal)] == [["c1", "c2", "c3", "c4", "c5"], ["e1", "e2"]]
    assert all(p["merged"] == 1 and p["status"] == "completed" for p in parts_of(batch_job.journal))
    assert not requests_to(fast_batches, "POST", "/v1/chat/completions")


# -- splitting -----------------------------------------------------------------------------------


def test_max_lines_splits_8_lines_into_3_parts_all_merged(runner_env: Callable[[], Settings], tmp_path: Path) -> None:
    lines = [chat(n) for n in range(1, 9)]
    journal = open_journal(tmp_path, lines)
    runner = BatchAPIRunner(runner_env(), journal, {x.custom_id: x for x in lines}, poll_s=0.05, max_lines=3)
    runner.run_blocking(lines)

    parts = journal.parts()
    assert [p.custom_ids for p in parts] == [["r1", "r2", "r3"], ["r4", "r5", "r6"], ["r7", "r8"]]
    assert all(p.merged and p.status == "completed" and p.batch_id for p in parts)
    assert len({p.batch_id for p in parts}) == 3
    assert journal.counts() == {"pending": 0, "done": 8, "failed": 0, "bad": 0}
    assert {row["via"] for row in journal.rows()} == {"batch-api"}
    journal.close()


def test_max_bytes_splits_by_size_in_order_and_a_line_too_big_for_any_file_fails_unsent(
    runner_env: Callable[[], Settings], tmp_path: Path, fast_batches: MockControl
) -> None:
    lines = [chat(n) for n in range(1, 6)]
    lines[2] = chat(3, content_note="x" * 2000)  # an extra body field: far bigger than the others
    size = len(lines[0].batch_line()) + 1
    assert [len(group) for group in split(lines[:2] + lines[3:], max_bytes=2 * size + 5)] == [2, 2]

    journal = open_journal(tmp_path, lines)
    runner = BatchAPIRunner(runner_env(), journal, {x.custom_id: x for x in lines}, poll_s=0.05, max_bytes=2 * size + 5)
    runner.run_blocking(lines)

    assert [p.custom_ids for p in journal.parts()] == [["r1", "r2"], ["r4", "r5"]]
    rows = {row["custom_id"]: row for row in journal.rows()}
    assert rows["r3"]["state"] == "failed" and "more than a batch input file may hold" in rows["r3"]["error"]
    assert rows["r3"]["attempts"] == 0
    assert all(rows[i]["state"] == "done" for i in ("r1", "r2", "r4", "r5"))
    assert len(requests_to(fast_batches, "POST", "/v1/files")) == 2
    journal.close()


# -- resuming ------------------------------------------------------------------------------------


def test_kill_9_after_the_batch_was_created_then_rerun_polls_it_without_uploading_or_creating_again(
    batch_job: Job, ferryman_mock: MockControl
) -> None:
    ferryman_mock.settings(batch_seconds=30)  # still running when it is killed
    batch_job.write(chat_line(f"c{i}", seed=i) for i in range(1, 5))
    first = batch_job.start("--via", "batch-api", *POLL)
    wait_for_batches(batch_job, first, 1)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    [part] = parts_of(batch_job.journal)
    assert part["input_file_id"] and part["batch_id"] and not part["merged"]

    ferryman_mock.settings(batch_seconds=BATCH_S)  # the running batch speeds up (read live)
    second = batch_job.run("--via", "batch-api", *POLL)
    assert second.returncode == 0, second.stderr
    assert f"resuming batch {part['batch_id']}" in second.stderr

    assert len(requests_to(ferryman_mock, "POST", "/v1/files")) == 1
    assert len(requests_to(ferryman_mock, "POST", "/v1/batches")) == 1
    assert [r["custom_id"] for r in batch_job.results()] == ["c1", "c2", "c3", "c4"]
    assert all(r["status"] == 200 and r["via"] == "batch-api" for r in batch_job.results())
    [merged] = parts_of(batch_job.journal)
    assert merged["batch_id"] == part["batch_id"] and merged["merged"] == 1


def test_a_restart_with_files_but_no_batch_ids_recorded_creates_only_the_missing_batch(
    runner_env: Callable[[], Settings], tmp_path: Path, fast_batches: MockControl
) -> None:
    """As after a kill between uploading and creating (part 1), or between creating the batch and
    recording its id (part 2): nothing is uploaded again, and part 2's batch is found, not made twice."""
    lines = [chat(n) for n in range(1, 5)]
    journal = open_journal(tmp_path, lines)
    sdk = openai.OpenAI(base_url=fast_batches.base_url, api_key=TEST_KEY, max_retries=0)
    files = []
    for group in (lines[:2], lines[2:]):
        data = b"".join(line.batch_line() + b"\n" for line in group)
        files.append(sdk.files.create(file=("part.jsonl", data), purpose="batch").id)
        part = journal.add_part([line.custom_id for line in group])
        journal.update_part(part, input_file_id=files[-1])
    made = sdk.batches.create(input_file_id=files[1], endpoint="/v1/chat/completions", completion_window="24h")
    sdk.close()
    fast_batches.clear_requests()

    BatchAPIRunner(runner_env(), journal, {x.custom_id: x for x in lines}, poll_s=0.05).run_blocking(lines)

    assert not requests_to(fast_batches, "POST", "/v1/files")
    [created] = requests_to(fast_batches, "POST", "/v1/batches")
    assert created["body"]["input_file_id"] == files[0]
    parts = journal.parts()
    assert parts[1].batch_id == made.id and parts[0].batch_id not in (None, made.id)
    assert all(p.merged for p in parts)
    assert journal.counts()["done"] == 4
    journal.close()


# -- failed lines ---------------------------------------------------------------------------------


def test_a_line_the_batch_answers_with_an_error_is_failed_with_its_reason_in_the_errors_file(
    runner_env: Callable[[], Settings], tmp_path: Path
) -> None:
    lines = [chat(1), chat(2, model="no-such-model"), chat(3)]
    journal = open_journal(tmp_path, lines)
    BatchAPIRunner(runner_env(), journal, {x.custom_id: x for x in lines}, poll_s=0.05).run_blocking(lines)
    output = tmp_path / "out.jsonl"
    write_results(journal, output)
    journal.close()

    [error] = read_jsonl(tmp_path / "out.errors.jsonl")
    assert error["custom_id"] == "r2" and error["status"] == 404
    assert error["error"].startswith("HTTP 404 model_not_found: The model `no-such-model` does not exist")
    results = read_jsonl(output)
    assert [(r["custom_id"], r["status"], r["via"]) for r in results] == [
        ("r1", 200, "batch-api"),
        ("r2", 404, "batch-api"),
        ("r3", 200, "batch-api"),
    ]


def test_resubmit_failed_live_sends_the_lines_the_batch_failed_once_more_live(
    batch_job: Job, fast_batches: MockControl
) -> None:
    batch_job.write([chat_line("c1", seed=1), chat_line("bad", model="no-such-model"), chat_line("c3", seed=3)])
    done = batch_job.run("--via", "batch-api", *POLL, "--resubmit-failed-live")
    assert done.returncode == 1, done.stderr  # the model does not exist live either
    assert "resubmitting 1 failed lines live" in done.stderr

    live = requests_to(fast_batches, "POST", "/v1/chat/completions")
    assert [r["body"]["model"] for r in live] == ["no-such-model"]  # only the failed line, once
    assert [(r["custom_id"], r["via"]) for r in batch_job.results()] == [
        ("c1", "batch-api"),
        ("bad", "live"),
        ("c3", "batch-api"),
    ]
    [error] = batch_job.error_rows()
    assert error["custom_id"] == "bad" and "model_not_found" in error["error"]


def test_a_batch_that_fails_validation_fails_every_line_of_its_part_with_the_reason(
    runner_env: Callable[[], Settings], tmp_path: Path
) -> None:
    model = "text-embedding-3-small"
    lines = [
        Line(1, "small", "/v1/embeddings", {"model": model, "input": "fine"}),
        Line(2, "huge", "/v1/embeddings", {"model": model, "input": ["a"] * 50_001}),  # over the batch's inputs
    ]
    journal = open_journal(tmp_path, lines)
    BatchAPIRunner(runner_env(), journal, {x.custom_id: x for x in lines}, poll_s=0.05).run_blocking(lines)

    [part] = journal.parts()
    assert part.status == "failed" and part.merged
    rows = list(journal.rows())
    assert [(r["custom_id"], r["state"]) for r in rows] == [("small", "failed"), ("huge", "failed")]
    for row in rows:
        assert row["error"].startswith(f"batch {part.batch_id} failed validation: embedding_input_limit_exceeded")
        assert row["error"].endswith("(input line 2)")
    journal.close()


# -- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_on_a_terminal_asks_and_yes_cancels_the_running_batch(
    batch_job: Job, ferryman_mock: MockControl
) -> None:
    ferryman_mock.settings(batch_seconds=30)
    batch_job.write(chat_line(f"c{i}", seed=i) for i in range(1, 4))
    err_path = batch_job.root / "stderr.txt"
    master, slave = os.openpty()
    with err_path.open("w") as err_file:
        process = subprocess.Popen(
            batch_job.argv("--via", "batch-api", *POLL),
            cwd=batch_job.root,
            env=batch_job.env(),
            stdin=slave,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    os.close(slave)
    try:
        wait_for_batches(batch_job, process, 1)
        process.send_signal(signal.SIGINT)
        wait_for_file_text(err_path, "Cancel the 1 running batch?", process)
        os.write(master, b"y\n")
        assert process.wait(timeout=20) == 130, err_path.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)

    [part] = parts_of(batch_job.journal)
    [cancel] = requests_to(ferryman_mock, "POST", f"/v1/batches/{part['batch_id']}/cancel")
    assert cancel["status"] == 200
    assert part["status"] in ("cancelling", "cancelled") and not part["merged"]
    assert ferryman_mock.client.batches.retrieve(part["batch_id"]).status in ("cancelling", "cancelled")


def test_ctrl_c_without_a_terminal_leaves_the_batch_running_without_asking(
    batch_job: Job, ferryman_mock: MockControl
) -> None:
    ferryman_mock.settings(batch_seconds=30)
    batch_job.write(chat_line(f"c{i}", seed=i) for i in range(1, 4))
    first = batch_job.start("--via", "batch-api", *POLL)  # stdin: a pipe, not a terminal
    wait_for_batches(batch_job, first, 1)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=20)
    assert first.returncode == 130, err
    assert "left 1 batch running" in err and "Cancel the" not in err
    assert not [r for r in ferryman_mock.requests() if r["path"].endswith("/cancel")]
    [part] = parts_of(batch_job.journal)
    assert not part["merged"]  # a re-run polls it again (see the kill -9 test)
    assert ferryman_mock.client.batches.retrieve(part["batch_id"]).status in ("validating", "in_progress")
    assert batch_job.results() == []  # the results file is written, with nothing merged yet
