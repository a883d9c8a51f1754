"""``ferryman run`` names its calls in the audit log: ``run`` for live lines, ``run-batch-api``
(and ``via_batch``) for every call the Batch API driver makes. The batch's own lines are not
calls through the pipeline and have no records (their usage is in the run's journal)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from ferryman.store.database import make_engine
from ferryman.store.tables import audit
from tests.batch.conftest import Job, chat_line
from tests.batch.test_batch_api import BATCH_S, POLL, run_in_process


def audit_rows(job: Job) -> list[dict[str, Any]]:
    engine = make_engine(f"sqlite:///{job.data / 'ferryman.db'}")
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]
    finally:
        engine.dispose()


def test_live_lines_are_recorded_with_source_run(batch_job, monkeypatch):
    batch_job.write([chat_line("a", seed=1), chat_line("b", seed=1), chat_line("c", max_tokens=4)])
    done = run_in_process(batch_job, monkeypatch)
    assert done.exit_code == 0, done.output
    rows = audit_rows(batch_job)
    assert len(rows) == 3 and {r["source"] for r in rows} == {"run"} and {r["via_batch"] for r in rows} == {False}
    assert sorted(r["output_cap"] for r in rows) == [3, 3, 4]
    assert len({r["request_fp"] for r in rows}) == 3  # each line names its own custom_id in its message


def test_batch_api_calls_are_recorded_as_run_batch_api_via_batch(batch_job, monkeypatch):
    batch_job.mock.settings(batch_seconds=BATCH_S)
    batch_job.write([chat_line("a", seed=1), chat_line("b", seed=2)])
    done = run_in_process(batch_job, monkeypatch, "--via", "batch-api", *POLL)
    assert done.exit_code == 0, done.output
    rows = audit_rows(batch_job)
    calls = {(r["endpoint"].split("/")[1], r["status"]) for r in rows}
    assert ("files", 200) in calls and ("batches", 200) in calls
    assert {r["source"] for r in rows} == {"run-batch-api"} and {r["via_batch"] for r in rows} == {True}
    assert not any(r["endpoint"] == "/chat/completions" for r in rows)  # the lines ran inside the batch
    assert sum(r["input_tokens"] + r["output_tokens"] for r in rows) == 0  # polls repeat no usage
