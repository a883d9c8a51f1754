"""``ferryman audit verify`` on malformed records: named by seq and by what is wrong, exit 1, no traceback.

A real chain is written through the pipeline against the mock (the SDK, Ferryman's audit stage,
a SQLite file); one row is then corrupted with raw SQL, the way a bad restore, a hand edit or
a broken migration would, and the command runs as a real process.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import ferryman
from ferryman.audit import Chain, load_key
from ferryman.config import Settings
from ferryman.mock.control_client import MockControl
from ferryman.mock.server import BackgroundServer
from ferryman.store.database import make_engine
from tests.pipeline.conftest import UPSTREAM_KEY, mock_deployment

RECORDS = 5


def verify(db: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ferryman.cli", "audit", "verify", "--db", f"sqlite:///{db}", *extra]
    return subprocess.run(
        command, env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"}, capture_output=True, text=True, timeout=60
    )


def sql(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def loosen(db: Path, seq_type: str | None = None) -> None:
    """Rebuild the audit table without its NOT NULL constraints (and, with ``seq_type``, with a
    seq column of that type, merely unique, instead of the INTEGER primary key): what a migration
    gone wrong leaves, or a database whose constraints were dropped by hand."""
    conn = sqlite3.connect(db)
    try:
        (create,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit'").fetchone()
        if seq_type is not None:
            create = create.replace("seq INTEGER", f"seq {seq_type}", 1).replace("PRIMARY KEY (seq)", "UNIQUE (seq)")
        conn.executescript(
            "ALTER TABLE audit RENAME TO audit_before;"
            f"{create.replace(' NOT NULL', '')};"
            "INSERT INTO audit SELECT * FROM audit_before;"
            "DROP TABLE audit_before;"
        )
        conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def written(ferryman_mock_server: BackgroundServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding an intact chain of five records (``ferryman.db``, and the checkpoint key
    in ``data/``), written once by five calls through the pipeline to the mock."""
    root = tmp_path_factory.mktemp("chain")
    mock = MockControl(ferryman_mock_server.url, app=ferryman_mock_server.app)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FERRYMAN_DATA_DIR", str(root / "data"))
        env.setenv("FERRYMAN_TEST_UPSTREAM_KEY", UPSTREAM_KEY)
        env.delenv("FERRYMAN_CONFIG", raising=False)
        env.chdir(root)
        mock.reset()
        settings = Settings(deployments=[mock_deployment(mock)], store={"url": f"sqlite:///{root / 'ferryman.db'}"})
        client = ferryman.OpenAI(ferryman={"settings": settings}, api_key="sk-caller-side-placeholder")
        try:
            for i in range(RECORDS):
                client.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"hello number {i}"}],
                    extra_headers={"ferryman-tags": f"team=search,n={i}"},
                )
        finally:
            client.close()
            mock.close()
        engine = make_engine(settings.database_url())
        try:
            report = Chain(engine, load_key()).verify()
        finally:
            engine.dispose()
    assert report.ok and report.records == RECORDS, report.problems
    return root


@pytest.fixture
def chain(written: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the written chain (and its key): the database file to corrupt."""
    db = tmp_path / "ferryman.db"
    source, target = sqlite3.connect(written / "ferryman.db"), sqlite3.connect(db)
    try:
        source.backup(target)  # the WAL's pages included
    finally:
        source.close()
        target.close()
    shutil.copytree(written / "data", tmp_path / "data")  # the key keeps its 0600
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return db


def test_the_written_chain_verifies_in_a_real_process(chain):
    intact = verify(chain)
    assert intact.returncode == 0 and f"intact: {RECORDS} records" in intact.stdout, intact.stdout + intact.stderr


def _assert_named(result: subprocess.CompletedProcess[str], where: str, what: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    problems = [line.strip() for line in result.stdout.splitlines()]
    assert any(where in line and what in line for line in problems), output


CORRUPTIONS: list[tuple[str, list[str], str, str]] = [
    ("tags_not_json", ["UPDATE audit SET tags = '{not json' WHERE seq = 3"], "seq 3:", "tags is not valid JSON"),
    ("tags_a_list", ["UPDATE audit SET tags = '[1, 2]' WHERE seq = 3"], "seq 3:", "tags is not a JSON object"),
    ("tags_a_string", ["UPDATE audit SET tags = '\"team\"' WHERE seq = 3"], "seq 3:", "tags is not a JSON object"),
    (
        "hash_not_hex",
        ["UPDATE audit SET hash = 'zz' || substr(hash, 3) WHERE seq = 3"],
        "seq 3:",
        "hash is not 64 lowercase hex digits",
    ),
    (
        "hash_too_short",
        ["UPDATE audit SET hash = substr(hash, 1, 40) WHERE seq = 3"],
        "seq 3:",
        "hash is not 64 lowercase hex digits",
    ),
    (
        "prev_hash_not_hex",
        ["UPDATE audit SET prev_hash = 'not-a-hash' WHERE seq = 3"],
        "seq 3:",
        "prev_hash is not 64 lowercase hex digits",
    ),
    ("cost_not_a_number", ["UPDATE audit SET cost_usd = 'lots' WHERE seq = 3"], "seq 3:", "cost_usd is not a number"),
    ("ts_not_a_number", ["UPDATE audit SET ts = 'yesterday' WHERE seq = 3"], "seq 3:", "ts is not a number"),
    ("status_text", ["UPDATE audit SET status = 'OK' WHERE seq = 3"], "seq 3:", "status is not a whole number"),
    ("status_fraction", ["UPDATE audit SET status = 200.5 WHERE seq = 3"], "seq 3:", "status is not a whole number"),
    ("tokens_blob", ["UPDATE audit SET input_tokens = x'00ff' WHERE seq = 3"], "seq 3:", "input_tokens is not a whole"),
    ("principal_blob", ["UPDATE audit SET principal = x'00ff' WHERE seq = 3"], "seq 3:", "principal is not text"),
    ("seq_gap", ["DELETE FROM audit WHERE seq = 3"], "seq 3:", "missing"),
]


@pytest.mark.parametrize(("corrupt", "where", "what"), [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_a_malformed_record_is_named(chain, corrupt, where, what):
    sql(chain, *corrupt)
    _assert_named(verify(chain), where, what)


NULLS = ["principal", "tags", "hash", "prev_hash", "cost_usd", "ts", "status", "endpoint", "cache"]


@pytest.mark.parametrize("column", NULLS)
def test_a_null_where_a_value_is_required_is_named(chain, column):
    loosen(chain)
    sql(chain, f"UPDATE audit SET {column} = NULL WHERE seq = 4")
    _assert_named(verify(chain), "seq 4:", f"{column} is NULL where a value is required")


def test_a_seq_that_is_not_a_number_is_named_by_its_place(chain):
    loosen(chain, seq_type="NUMERIC")
    sql(chain, "UPDATE audit SET seq = 'three' WHERE seq = 3")
    result = verify(chain)
    _assert_named(result, "malformed record", "seq is not a whole number ('three')")


def test_a_dropped_column_is_named(chain):
    sql(chain, "ALTER TABLE audit DROP COLUMN tags")
    _assert_named(verify(chain), "audit table has no column tags", "schema was changed")


def test_a_malformed_checkpoint_is_named(chain):
    sql(chain, "UPDATE audit_checkpoints SET hash = 'nope' WHERE kind = 'head'")
    _assert_named(verify(chain), "head checkpoint is malformed", "hash is not 64 lowercase hex digits")
    sql(
        chain,
        "UPDATE audit_checkpoints SET hash = (SELECT hash FROM audit WHERE seq = 5), seq = 'x' WHERE kind = 'head'",
    )
    _assert_named(verify(chain), "head checkpoint is malformed", "seq is not a whole number")


def test_verify_carries_on_past_a_malformed_record(chain):
    """A malformed record does not stop the check: an edit further on is still found, and the
    records around the malformed one are not blamed for it."""
    sql(chain, "UPDATE audit SET tags = 'garbage' WHERE seq = 2", "UPDATE audit SET status = 500 WHERE seq = 4")
    result = verify(chain, "--json")
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    report = orjson.loads(result.stdout)
    assert report["ok"] is False and report["records"] == RECORDS
    assert [(p["seq"], p["message"]) for p in report["problems"]] == [
        (2, "malformed record: tags is not valid JSON"),
        (4, "contents do not match the record's hash: edited"),
    ]


def test_every_malformed_field_of_a_record_is_listed(chain):
    sql(chain, "UPDATE audit SET tags = 'x', hash = 'y', cost_usd = 'z' WHERE seq = 5")
    result = verify(chain)
    _assert_named(result, "seq 5: malformed record:", "cost_usd is not a number ('z')")
    first = result.stdout.splitlines()[0]
    assert first.startswith("TAMPERED: seq 5: malformed record:")
    assert "tags is not valid JSON" in first and "hash is not 64 lowercase hex digits ('y')" in first
