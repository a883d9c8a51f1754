"""``ferryman run`` on a full disk: exit 4 with a message naming the file, the journal intact, and a
re-run after room is freed that resumes exactly (every line reaches the mock once, in all).

The disk is a real one: an 8 MiB tmpfs mounted for the test (the test is skipped where mounting is
not permitted), holding the job's output and journal, filled by a filler file at a chosen moment:
before the run, or part-way through it (the mock answers slowly, the journal is polled until some
results are in, then the filler takes all the room that is left). The mock's request log says
which lines were sent when; the journal, read after each run, what was committed.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batch.conftest import Job, chat_line, request_line_id
from tests.batch.test_run_crash import wait_for_results

DISK_BYTES = 8 * 1024 * 1024  # the journal's WAL grows to 4 MiB before SQLite checkpoints it
EXIT_DISK_FULL = 4


@contextlib.contextmanager
def mounted_tmpfs(where: Path, size: int = DISK_BYTES) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``where`` (made), unmounted afterwards whatever happened;
    skips the test when this process may not mount one."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("tmpfs mount not permitted: the tests do not run as root")
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        pytest.skip("tmpfs mount not permitted: there is no mount command")
    if done.returncode != 0:
        pytest.skip(f"tmpfs mount not permitted: {done.stderr.strip() or f'mount exited {done.returncode}'}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)  # still busy: detach


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "disk") as disk:
        yield disk


def free_bytes(disk: Path) -> int:
    found = os.statvfs(disk)
    return found.f_bavail * found.f_frsize


def fill(disk: Path, leave: int = 0) -> Path:
    """Take the room left on ``disk`` but ``leave`` bytes, in one write: a filler that went on
    taking room as it came back (the run's reserve, given back) would race with the run."""
    filler = disk / "filler"
    size = max(0, free_bytes(disk) - leave)
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: the run took some of it meanwhile; it is full
            os.write(fd, bytes(size))
    finally:
        os.close(fd)
    return filler


def fill_now(disk: Path, leave: int = 0) -> Path:
    """:func:`fill`, with nothing else writing to ``disk``: exactly ``leave`` bytes are left."""
    filler = fill(disk, leave)
    assert free_bytes(disk) <= leave + 4096
    return filler


def job_on(disk: Path, job: Job) -> Job:
    """``job`` with its output, errors file and journal on ``disk`` (its input and the pipeline's
    data directory stay where they were: only what the runner itself writes is on the small disk)."""
    job.output = disk / "out.jsonl"
    job.errors = disk / "out.errors.jsonl"
    job.journal = disk / "out.jsonl.journal"
    return job


def journal_intact(path: Path) -> dict[str, str]:
    """custom_id → state, after SQLite's own check of the whole file."""
    db = sqlite3.connect(path, timeout=5)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return dict(db.execute("SELECT custom_id, state FROM lines").fetchall())
    finally:
        db.close()


def sent(job: Job, since: int = 0) -> collections.Counter[str]:
    """How many chat requests the mock received for each line (after log entry ``since``)."""
    return collections.Counter(
        line_id for entry in job.mock.requests(since) if (line_id := request_line_id(entry)) is not None
    )


def last_seq(job: Job) -> int:
    log = job.mock.requests()
    return log[-1]["seq"] if log else 0


def assert_disk_full_message(stderr: str, path: Path) -> None:
    assert "Traceback" not in stderr, stderr
    assert "disk full" in stderr, stderr
    assert str(path) in stderr.replace("\n", ""), stderr
    assert "run the same command again" in stderr, stderr


def test_a_disk_that_fills_part_way_stops_the_run_with_exit_4_and_the_rerun_resumes_exactly(
    batch_job: Job, small_disk: Path
) -> None:
    job = job_on(small_disk, batch_job)
    job.mock.settings(latency_ms=50)  # slow enough that the disk fills while most lines are left
    ids = [f"f{i:03d}" for i in range(150)]
    job.write(chat_line(i) for i in ids)

    first = job.start("--concurrency", "4")
    filler: Path | None = None
    try:
        wait_for_results(job, first, 20)
        filler = fill(small_disk)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == EXIT_DISK_FULL, stderr
    assert_disk_full_message(stderr, job.journal)
    assert "cannot write the journal" in stderr
    assert filler is not None
    filler.unlink()  # room to read the journal in (a reader needs its -shm); it reads what the run left

    # The journal is whole and says exactly what was done: no torn or failed line, the rest pending.
    states = journal_intact(job.journal)
    recorded = {i for i, state in states.items() if state == "done"}
    assert set(states.values()) <= {"done", "pending"}
    assert 20 <= len(recorded) < len(ids), "the disk must fill part-way"
    assert not (small_disk / "out.jsonl.journal-reserve").exists(), "the reserve was given back"
    # The replies in flight when it filled were recorded in the reserve's room: every line the
    # first run sent has its result, so none of them is sent again.
    first_run = sent(job)
    assert set(first_run) == recorded and set(first_run.values()) == {1}
    assert "could not be recorded" not in stderr
    # The results file was written from the journal in the room the reserve gave back: whole lines.
    assert {r["custom_id"] for r in job.results()} == recorded

    mark = last_seq(job)
    second = job.run("--concurrency", "4")
    assert second.returncode == 0, second.stderr
    assert set(sent(job, mark)) == set(ids) - recorded  # only the lines left, each once
    assert sent(job) == collections.Counter(ids), "every line reached the mock exactly once, in all"
    results = job.results()
    assert [r["custom_id"] for r in results] == ids
    assert all(r["status"] == 200 and r["error"] is None for r in results)
    assert job.error_rows() == []
    assert set(journal_intact(job.journal).values()) == {"done"}
    assert not (small_disk / "out.jsonl.journal-reserve").exists()


def test_a_disk_full_before_the_run_sends_nothing_and_names_the_journal(batch_job: Job, small_disk: Path) -> None:
    job = job_on(small_disk, batch_job)
    ids = [f"b{i:02d}" for i in range(30)]
    job.write(chat_line(i) for i in ids)
    filler = fill_now(small_disk)

    first = job.run()
    assert first.returncode == EXIT_DISK_FULL, first.stderr
    assert_disk_full_message(first.stderr, job.journal)
    assert "nothing was sent" in first.stderr
    assert sent(job) == collections.Counter()

    filler.unlink()
    second = job.run()
    assert second.returncode == 0, second.stderr
    assert sent(job) == collections.Counter(ids)
    assert [r["custom_id"] for r in job.results()] == ids


def test_no_room_for_the_results_file_leaves_the_old_one_and_the_next_run_writes_it(
    batch_job: Job, small_disk: Path
) -> None:
    """Every line has its result in the journal; the disk has room to open it but not for the
    results file (about 75 KiB here): the old results file stays as it was, no temporary file is
    left behind, nothing is sent, and once there is room the next run writes it."""
    job = job_on(small_disk, batch_job)
    ids = [f"r{i:03d}" for i in range(100)]
    job.write(chat_line(i) for i in ids)
    done = job.run()
    assert done.returncode == 0, done.stderr
    mark = last_seq(job)
    job.output.write_bytes(b"old\n")  # the earlier file, to see that a failed write leaves it alone
    filler = fill_now(small_disk, leave=48 * 1024)  # the journal's -shm (32 KiB) fits, the results do not

    again = job.run()
    assert again.returncode == EXIT_DISK_FULL, again.stderr
    assert "nothing to send" in again.stderr
    assert_disk_full_message(again.stderr, job.output)
    assert "cannot write the results file" in again.stderr
    assert job.output.read_bytes() == b"old\n"
    assert sorted(p.name for p in small_disk.iterdir() if p.name.endswith(".tmp")) == []
    assert set(journal_intact(job.journal).values()) == {"done"}

    filler.unlink()
    last = job.run()
    assert last.returncode == 0, last.stderr
    assert [r["custom_id"] for r in job.results()] == ids
    assert sent(job, mark) == collections.Counter(), "nothing was sent again"


def test_a_full_disk_under_the_pipelines_database_is_exit_4_naming_it(batch_job: Job, small_disk: Path) -> None:
    """The pipeline's own store (audit, budgets) in a data directory on the full disk: the run
    cannot open it and stops before sending, naming the database."""
    job = batch_job  # output and journal on the ordinary disk; only the data directory is full
    ids = [f"p{i:02d}" for i in range(10)]
    job.write(chat_line(i) for i in ids)
    data = small_disk / "data"
    filler = fill_now(small_disk)

    first = job.run(FERRYMAN_DATA_DIR=str(data))
    assert first.returncode == EXIT_DISK_FULL, first.stderr
    assert_disk_full_message(first.stderr, data / "ferryman.db")
    assert "the pipeline's database" in first.stderr
    assert sent(job) == collections.Counter()
    assert set(journal_intact(job.journal).values()) == {"pending"}

    filler.unlink()
    second = job.run(FERRYMAN_DATA_DIR=str(data))
    assert second.returncode == 0, second.stderr
    assert sent(job) == collections.Counter(ids)


def test_the_journal_records_in_the_reserves_room_once_then_refuses_and_changes_nothing(small_disk: Path) -> None:
    """In-process, on the journal itself: the first write that finds the disk full gives the
    reserve back and succeeds (and says so, so the runner takes no new line); once that room is
    gone too, a write raises DiskFull naming the journal and leaves the line as it was."""
    from ferryman.batch.disk import DiskFull
    from ferryman.batch.inputs import Line
    from ferryman.batch.journal import Journal, Result

    journal = Journal.open(small_disk / "j.journal", "sha")
    try:
        journal.add(Line(i, f"j{i}", "/v1/chat/completions", {}) for i in range(50))
        journal.hold_reserve(64 * 1024)
        filler = fill_now(small_disk)
        assert journal.record(Result("j0", 200, {"ok": True}))
        assert journal.full is not None and "the journal" in str(journal.full)
        fill(small_disk)  # the room the reserve gave back, taken too
        with pytest.raises(DiskFull) as refused:
            for i in range(1, 50):
                journal.record(Result(f"j{i}", 200, {"ok": True}))
        assert refused.value.path == small_disk / "j.journal"
        counts = journal.counts()
        assert counts["done"] >= 1 and counts["done"] + counts["pending"] == 50
    finally:
        journal.close()
    filler.unlink()
    assert set(journal_intact(small_disk / "j.journal").values()) <= {"done", "pending"}
