"""Private files (ferryman.files): what Ferryman writes is 0600, the folders it makes 0700.

The helpers themselves, then the real writers: the store's SQLite file with its -wal and -shm,
the audit checkpoint key, a ``ferryman run`` journal, and ``ferryman audit export -o``. The
``ferryman run`` command end to end is in tests/batch/test_private_files.py.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from ferryman.files import (
    atomic_private,
    open_private,
    private_database,
    private_dir,
    private_file,
    tighten,
    write_private,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def mode(path: Path | str) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask, under which a plain open() would make 0644 files and 0755 folders."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data directory that does not exist yet (two levels of it)."""
    folder = tmp_path / "home" / "data"
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(folder))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ferryman.toml
    return folder


# -- folders ------------------------------------------------------------------------------------


def test_private_dir_makes_every_missing_folder_0700_and_leaves_existing_ones_alone(tmp_path):
    os.chmod(tmp_path, 0o755)
    made = private_dir(tmp_path / "a" / "b" / "c")
    assert made == tmp_path / "a" / "b" / "c" and made.is_dir()
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700, 0o700, 0o700]
    assert mode(tmp_path) == 0o755, "a folder that was there (the cwd, /tmp) is the user's"
    assert private_dir(str(made)) == made  # again: nothing to do


def test_private_dir_keeps_an_existing_folders_mode_unless_told_it_is_ferrymans(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    private_dir(folder)
    assert mode(folder) == 0o755
    private_dir(folder, tighten=True)
    assert mode(folder) == 0o700


def test_private_dir_holds_under_a_umask_that_takes_owner_bits(tmp_path):
    os.umask(0o277)
    private_dir(tmp_path / "x" / "y")
    assert mode(tmp_path / "x") == mode(tmp_path / "x" / "y") == 0o700


def test_private_dir_on_a_file_is_an_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError):
        private_dir(tmp_path / "f")


# -- files --------------------------------------------------------------------------------------


def test_open_private_creates_0600_in_text_and_binary(tmp_path):
    with open_private(tmp_path / "t.txt", "w") as handle:
        handle.write("héllo\n")
    with open_private(tmp_path / "b.bin", "wb") as handle:
        handle.write(b"\x00\x01")
    assert mode(tmp_path / "t.txt") == mode(tmp_path / "b.bin") == 0o600
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"


def test_open_private_tightens_a_file_it_appends_to_or_overwrites(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text("one\n")
    os.chmod(path, 0o644)
    with open_private(path, "a") as handle:
        handle.write("two\n")
    assert path.read_text() == "one\ntwo\n" and mode(path) == 0o600
    os.chmod(path, 0o664)
    with open_private(path, "w") as handle:
        handle.write("new\n")
    assert path.read_text() == "new\n" and mode(path) == 0o600


def test_open_private_x_refuses_an_existing_file(tmp_path):
    path = tmp_path / "f"
    path.write_text("keep")
    with pytest.raises(FileExistsError):
        open_private(path, "x")
    assert path.read_text() == "keep"


def test_open_private_refuses_read_modes(tmp_path):
    with pytest.raises(ValueError):
        open_private(tmp_path / "f", "r")


def test_open_private_leaves_what_is_not_a_regular_file_alone():
    before = mode("/dev/null")
    with open_private("/dev/null", "w") as handle:
        handle.write("nothing")
    assert mode("/dev/null") == before  # -o /dev/stdout must not chmod the terminal


def test_a_created_file_is_0600_under_any_umask(tmp_path):
    os.umask(0o277)  # would make 0400
    with open_private(tmp_path / "f", "w") as handle:
        handle.write("x")
    private_file(tmp_path / "g")
    assert mode(tmp_path / "f") == mode(tmp_path / "g") == 0o600


def test_private_file_creates_empty_or_tightens_without_truncating(tmp_path):
    fresh = private_file(tmp_path / "new.db")
    assert fresh.read_bytes() == b"" and mode(fresh) == 0o600
    old = tmp_path / "old.db"
    old.write_bytes(b"data")
    os.chmod(old, 0o644)
    private_file(old)
    assert old.read_bytes() == b"data" and mode(old) == 0o600
    readonly = tmp_path / "ro.db"
    readonly.write_bytes(b"ro")
    os.chmod(readonly, 0o400)
    private_file(readonly)  # not opened for writing: no error, and owner-only bits are kept
    assert mode(readonly) == 0o400


def test_tighten_ignores_missing_files(tmp_path):
    tighten(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_private_database_tightens_leftover_wal_and_shm(tmp_path):
    db = tmp_path / "x.db"
    for name in ("x.db", "x.db-wal", "x.db-shm"):
        (tmp_path / name).write_bytes(b"")
        os.chmod(tmp_path / name, 0o644)
    private_database(db)
    assert [mode(tmp_path / n) for n in ("x.db", "x.db-wal", "x.db-shm")] == [0o600] * 3


def test_atomic_private_replaces_whole_with_0600_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    os.chmod(path, 0o644)
    with atomic_private(path, "wb") as handle:
        handle.write(b"new\n")
    assert path.read_bytes() == b"new\n" and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_atomic_private_leaves_the_old_file_on_an_error(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_private(path, "w") as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_write_private_text_and_bytes(tmp_path):
    write_private(tmp_path / "a", "é")
    write_private(tmp_path / "b", b"\xff", fsync=False)
    assert (tmp_path / "a").read_bytes() == "é".encode() and (tmp_path / "b").read_bytes() == b"\xff"
    assert mode(tmp_path / "a") == mode(tmp_path / "b") == 0o600


# -- the real writers ---------------------------------------------------------------------------


def test_the_store_on_a_fresh_data_dir_is_private_wal_and_shm_included(data_dir):
    from ferryman.config import load
    from ferryman.store import open_store

    store = open_store(load())
    try:
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE private_check (x INTEGER)"))
            conn.execute(text("INSERT INTO private_check VALUES (1)"))
        files = {p.name: mode(p) for p in data_dir.iterdir()}
        assert {"ferryman.db", "ferryman.db-wal", "ferryman.db-shm"} <= set(files), files
        assert {name: m for name, m in files.items() if m != 0o600} == {}
        assert mode(data_dir) == mode(data_dir.parent) == 0o700
    finally:
        store.close()


def test_a_sqlite_url_naming_an_existing_file_is_tightened(tmp_path):
    from ferryman.config import Settings
    from ferryman.store import open_store

    os.chmod(tmp_path, 0o755)
    db = tmp_path / "mine.db"
    db.write_bytes(b"")
    os.chmod(db, 0o644)
    url = f"sqlite:///{db}"
    store = open_store(Settings(store={"url": url}), url)
    try:
        with store.engine.begin() as conn:
            conn.execute(text("CREATE TABLE private_check (x INTEGER)"))
        assert mode(db) == mode(f"{db}-wal") == mode(f"{db}-shm") == 0o600
        assert mode(tmp_path) == 0o755  # the folder was there: not Ferryman's to change
    finally:
        store.close()


def test_an_in_memory_sqlite_url_writes_no_file(tmp_path, monkeypatch):
    from ferryman.store.database import make_engine

    monkeypatch.chdir(tmp_path)
    for url in ("sqlite://", "sqlite:///:memory:"):
        engine = make_engine(url)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    assert list(tmp_path.iterdir()) == []


def test_the_audit_key_file_is_0600_in_a_0700_data_dir(data_dir):
    from ferryman.audit import load_key
    from ferryman.audit.keys import key_file

    load_key(create=True)
    assert key_file().parent == data_dir
    assert mode(key_file()) == 0o600
    assert mode(data_dir) == mode(data_dir.parent) == 0o700
    assert sorted(p.name for p in data_dir.iterdir()) == ["audit.key"]  # no temporary left


def test_a_run_journal_and_its_wal_are_0600(tmp_path):
    from ferryman.batch.inputs import Line
    from ferryman.batch.journal import Journal, Result, journal_path
    from ferryman.batch.output import errors_path, write_results

    output = tmp_path / "out.jsonl"
    journal = Journal.open(journal_path(output), "0" * 64)
    try:
        journal.add([Line(custom_id="a", number=1, url="/v1/chat/completions", body={})])
        journal.record(Result("a", 200, {"ok": True}))
        path = journal_path(output)
        assert mode(path) == mode(f"{path}-wal") == mode(f"{path}-shm") == 0o600
        write_results(journal, output)
    finally:
        journal.close()
    assert mode(output) == mode(errors_path(output)) == 0o600


def test_audit_export_to_a_file_is_0600(data_dir, tmp_path):
    from ferryman.audit import Chain, load_key
    from ferryman.cli import app
    from ferryman.config import Settings
    from ferryman.store import open_store

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_store(Settings(store={"url": url}), url)
    try:
        Chain(store.engine, load_key(create=True)).append(
            {
                "ts": time.time(),
                "request_id": "req_1",
                "principal": "process",
                "upstream": "mock",
                "model": "gpt-4o-mini",
                "endpoint": "/chat/completions",
                "status": 200,
                "attempts": 1,
                "latency_ms": 1.0,
                "ttft_ms": None,
                "input_tokens": 1,
                "cached_tokens": 0,
                "output_tokens": 1,
                "reasoning_tokens": 0,
                "cost_usd": Decimal("0.000001"),
                "cache": "off",
                "tags": {},
                "error": None,
                "request_body": None,
                "response_body": None,
            }
        )
    finally:
        store.close()
    fresh, existing = tmp_path / "export.jsonl", tmp_path / "existing.jsonl"
    existing.write_text("stale\n")
    os.chmod(existing, 0o644)
    for out in (fresh, existing):
        result = CliRunner().invoke(app, ["audit", "export", "--db", url, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert mode(out) == 0o600
        assert out.read_text().count("\n") == 1 and "req_1" in out.read_text()


def test_the_mocks_state_directory_is_private(tmp_path):
    from ferryman.mock.state import ObjectStore

    state = tmp_path / "state"
    store = ObjectStore(state)
    store.put("files", {"id": "file-abc", "created_at": 1})
    store.put_blob("file-abc", b"uploaded")
    assert mode(state) == mode(state / "files") == mode(state / "blobs") == 0o700
    assert mode(state / "files" / "file-abc.json") == mode(state / "blobs" / "file-abc") == 0o600
    assert ObjectStore(state).get_blob("file-abc") == b"uploaded"  # read back after a restart


def test_create_private_makes_a_file_once_whole_and_0600(tmp_path):
    """Of many makers at once exactly one wins; every reader sees the winner's whole content."""
    import threading

    from ferryman.files import create_private

    path = tmp_path / "admin.key"
    start = threading.Barrier(8)
    won: list[str] = []

    def make(i: int) -> None:
        start.wait()
        if create_private(path, f"key-{i}\n"):
            won.append(f"key-{i}\n")

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and path.read_text() == won[0]
    assert path.stat().st_mode & 0o777 == 0o600
    assert not create_private(path, "other\n") and path.read_text() == won[0]  # never replaced
    assert [p.name for p in tmp_path.iterdir()] == ["admin.key"]  # no temporary file left
