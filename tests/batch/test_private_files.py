"""``ferryman run`` writes only private files: results, errors, journal and the pipeline's data dir."""

from __future__ import annotations

import os
import sys

import pytest

from tests.batch.conftest import Job, chat_line

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def test_a_run_leaves_every_file_it_wrote_0600_and_every_folder_0700(batch_job: Job) -> None:
    os.chmod(batch_job.root, 0o755)
    batch_job.write([chat_line("a"), chat_line("b"), "not json"])
    old = os.umask(0o022)  # the CLI inherits the usual umask
    try:
        done = batch_job.run()
    finally:
        os.umask(old)
    assert done.returncode == 1, done.stderr  # a bad line: exit 1, and an errors file with a row
    assert [r["custom_id"] for r in batch_job.results()] == ["a", "b"]
    written = {
        path.relative_to(batch_job.root).as_posix(): os.stat(path).st_mode & 0o777
        for path in batch_job.root.rglob("*")
        if path != batch_job.input
    }
    expected = {"out.jsonl", "out.errors.jsonl", "out.jsonl.journal", "data", "data/ferryman.db", "data/audit.key"}
    assert expected <= set(written), written
    folders = {name for name in written if (batch_job.root / name).is_dir()}
    assert {name: m for name, m in written.items() if m != (0o700 if name in folders else 0o600)} == {}
    assert os.stat(batch_job.root).st_mode & 0o777 == 0o755  # the folder it was given is the user's
