"""``ferryman audit verify | prune | export``: tampering caught, pruning kept verifiable, JSONL out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import Connection, Engine, select, text
from typer.testing import CliRunner

from ferryman.audit import Chain, CheckpointKey, load_key, record_hash
from ferryman.audit.chain import normalise
from ferryman.cli import app
from ferryman.config import Settings
from ferryman.store import open_store
from ferryman.store.tables import audit, audit_checkpoints

runner = CliRunner()
DAY = 86400.0
RECORDS = 10


def record(i: int, ts: float | None = None) -> dict[str, Any]:
    return {
        "ts": ts if ts is not None else time.time(),
        "request_id": f"req_{i}",
        "principal": "process",
        "upstream": "mock",
        "model": "gpt-4o-mini",
        "endpoint": "/chat/completions",
        "status": 200,
        "attempts": 1,
        "latency_ms": 12.5 + i,
        "ttft_ms": None,
        "input_tokens": 10 + i,
        "cached_tokens": 0,
        "output_tokens": 20 + i,
        "reasoning_tokens": 0,
        "cost_usd": Decimal("0.0000123") * (i + 1),
        "cache": "off",
        "tags": {"team": "a"},
        "error": None,
        "request_body": f'{{"n": {i}}}',
        "response_body": f'{{"answer": "number {i}"}}',
    }


class Log:
    def __init__(self, url: str, chain: Chain) -> None:
        self.url = url
        self.chain = chain
        self.engine: Engine = chain.engine

    def append(self, n: int, ts: float | None = None) -> None:
        start = self.count()
        for i in range(n):
            self.chain.append(record(start + i, ts))

    def count(self) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(audit.c.seq)).all())

    def sql(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray ferryman.toml
    return tmp_path / "data"


@pytest.fixture
def make_log(tmp_path: Path, data_dir: Path) -> Iterator[Callable[[], Log]]:
    """``make_log()`` → an empty log in a fresh SQLite file, signed with the data directory's key."""
    stores = []

    def make() -> Log:
        url = f"sqlite:///{tmp_path / f'audit{len(stores)}.db'}"
        store = open_store(Settings(store={"url": url}), url)
        stores.append(store)
        return Log(url, Chain(store.engine, load_key(create=True)))

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def log(make_log: Callable[[], Log]) -> Log:
    """An intact log of ten records."""
    made = make_log()
    made.append(RECORDS)
    return made


def cli(*args: str) -> Any:
    return runner.invoke(app, ["audit", *args], env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_an_intact_log_verifies(log):
    result = cli("verify", "--db", log.url)
    assert result.exit_code == 0, result.output
    assert "intact: 10 records (seq 1..10)" in result.output


def _rehash(conn: Connection, first: int) -> None:
    """What a forger without the key can do: recompute the hashes from ``first`` on."""
    rows = [
        dict(r) for r in conn.execute(select(audit).where(audit.c.seq >= first - 1).order_by(audit.c.seq)).mappings()
    ]
    prev = rows[0]["hash"] if rows[0]["seq"] < first else rows[0]["prev_hash"]
    for row in rows:
        if row["seq"] < first:
            continue
        digest = record_hash(prev, row)
        conn.execute(audit.update().where(audit.c.seq == row["seq"]).values(prev_hash=prev, hash=digest))
        prev = digest


def edit(log: Log) -> None:
    log.sql("UPDATE audit SET status = 500 WHERE seq = 4")


def edit_and_rehash_one(log: Log) -> None:
    log.sql("UPDATE audit SET output_tokens = 1 WHERE seq = 4")
    with log.engine.begin() as conn:
        row = conn.execute(select(audit).where(audit.c.seq == 4)).mappings().one()
        conn.execute(audit.update().where(audit.c.seq == 4).values(hash=record_hash(row["prev_hash"], row)))


def rewrite_the_tail(log: Log) -> None:
    log.sql("UPDATE audit SET output_tokens = 1 WHERE seq = 4")
    with log.engine.begin() as conn:
        _rehash(conn, 4)


def delete(log: Log) -> None:
    log.sql("DELETE FROM audit WHERE seq = 5")


def swap(log: Log) -> None:
    log.sql(
        "UPDATE audit SET seq = -3 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -3",
    )


def truncate(log: Log) -> None:
    log.sql("DELETE FROM audit WHERE seq > 7")


def forge_checkpoint(log: Log) -> None:
    log.sql("UPDATE audit_checkpoints SET count = count + 1, seq = seq + 1 WHERE kind = 'head'")


def truncate_and_sign_with_another_key(log: Log) -> None:
    truncate(log)
    other = Chain(log.engine, CheckpointKey(b"not-the-real-key-0123456789abcdef", "test"))
    with log.engine.begin() as conn:
        last = conn.execute(select(audit.c.hash).where(audit.c.seq == 7)).scalar_one()
        conn.execute(audit_checkpoints.delete())
        other._put_checkpoint(conn, "head", 7, last, 7)


def remove_checkpoint(log: Log) -> None:
    log.sql("DELETE FROM audit_checkpoints")


def append_behind_the_checkpoint(log: Log) -> None:
    with log.engine.begin() as conn:
        head = conn.execute(select(audit.c.hash).where(audit.c.seq == RECORDS)).scalar_one()
        row = normalise({**record(99), "seq": RECORDS + 1})
        digest = record_hash(head, row)
        conn.execute(
            audit.insert().values(**{**row, "cost_usd": Decimal(row["cost_usd"])}, prev_hash=head, hash=digest)
        )


TAMPERING: list[tuple[Callable[[Log], None], str, str]] = [
    (edit, "seq 4:", "edited"),
    (edit_and_rehash_one, "seq 5:", "prev_hash"),
    (rewrite_the_tail, "seq 10:", "head checkpoint's hash"),
    (delete, "seq 5:", "missing"),
    (swap, "seq 3:", "reordered"),
    (truncate, "seq 8:", "truncated"),
    (forge_checkpoint, "head checkpoint", "bad signature"),
    (truncate_and_sign_with_another_key, "head checkpoint", "bad signature"),
    (remove_checkpoint, "head checkpoint", "missing"),
    (append_behind_the_checkpoint, "seq 11:", "after the head checkpoint"),
]


@pytest.mark.parametrize(("tamper", "where", "what"), TAMPERING, ids=[t[0].__name__ for t in TAMPERING])
def test_verify_catches_tampering(log, tamper, where, what):
    tamper(log)
    result = cli("verify", "--db", log.url)
    assert result.exit_code == 1, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("TAMPERED:") and where in first and what in first, result.output


def test_verify_json_names_the_first_bad_seq(log):
    delete(log)
    result = cli("verify", "--db", log.url, "--json")
    assert result.exit_code == 1
    report = orjson.loads(result.output)
    assert report["ok"] is False and report["problems"][0]["seq"] == 5


def test_appends_never_re_sign_a_forged_head(log):
    truncate(log)
    log.sql("UPDATE audit_checkpoints SET seq = 7, count = 7, hash = (SELECT hash FROM audit WHERE seq = 7)")
    appended = log.chain.append(record(50))
    assert not appended.anchored  # chained on, but the forged checkpoint is left for verify to find
    result = cli("verify", "--db", log.url)
    assert result.exit_code == 1 and "bad signature" in result.output


def test_verify_in_a_real_process(log):
    env = {**os.environ, "NO_COLOR": "1"}
    command = [sys.executable, "-m", "ferryman.cli", "audit", "verify", "--db", log.url]
    intact = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert intact.returncode == 0 and "intact: 10 records" in intact.stdout, intact.stderr
    swap(log)
    tampered = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert tampered.returncode == 1 and "seq 3:" in tampered.stdout


def test_prune_keeps_the_rest_verifiable(make_log):
    log = make_log()
    log.append(4, ts=time.time() - 100 * DAY)
    log.append(3, ts=time.time() - 10 * DAY)
    result = cli("prune", "--older-than", "90d", "--db", log.url)
    assert result.exit_code == 0 and "pruned 4 records (up to seq 4)" in result.output, result.output
    assert log.count() == 3
    assert cli("verify", "--db", log.url).exit_code == 0
    log.append(2)  # the chain goes on from its head
    verified = cli("verify", "--db", log.url)
    assert verified.exit_code == 0 and "intact: 5 records (seq 5..9)" in verified.output
    assert "pruned up to seq 4" in verified.output
    assert cli("prune", "--older-than", "2w", "--db", log.url).exit_code == 0  # nothing that old left
    assert log.count() == 5
    log.sql("DELETE FROM audit WHERE seq = 5")  # cutting more off the start still shows
    result = cli("verify", "--db", log.url)
    assert result.exit_code == 1 and "seq 5:" in result.output and "missing" in result.output


def test_prune_everything_then_carry_on(make_log):
    log = make_log()
    log.append(3, ts=time.time() - 2 * DAY)
    assert cli("prune", "--older-than", "12h", "--db", log.url).exit_code == 0
    assert log.count() == 0
    assert "intact: 0 records" in cli("verify", "--db", log.url).output
    log.append(1)
    verified = cli("verify", "--db", log.url)
    assert verified.exit_code == 0 and "intact: 1 records (seq 4..4)" in verified.output


def test_prune_refuses_a_tampered_log(log):
    log.sql(f"UPDATE audit SET ts = {time.time() - 100 * DAY}")
    result = cli("prune", "--older-than", "30d", "--db", log.url)
    assert result.exit_code == 1 and "refusing to prune" in result.output
    assert log.count() == RECORDS


def test_export_round_trips_as_jsonl(log, tmp_path):
    out = tmp_path / "audit.jsonl"
    result = cli("export", "--db", log.url, "-o", str(out))
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in out.read_text().splitlines()]
    with log.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(audit).order_by(audit.c.seq)).mappings()]
    assert len(lines) == RECORDS
    for line, row in zip(lines, rows, strict=True):
        assert isinstance(line["cost_usd"], str) and Decimal(line["cost_usd"]) == row["cost_usd"]
        assert line == {**normalise(row), "prev_hash": row["prev_hash"], "hash": row["hash"]}
        assert record_hash(line["prev_hash"], line) == line["hash"]
    assert [line["prev_hash"] for line in lines[1:]] == [line["hash"] for line in lines[:-1]]


def test_export_since_and_until_to_stdout(make_log):
    log = make_log()
    for day in range(4):  # 2026-01-01 .. 2026-01-04, noon UTC
        log.append(1, ts=1767225600.0 + day * DAY + 12 * 3600)
    result = cli("export", "--db", log.url, "--since", "2026-01-02", "--until", "2026-01-04T00:00:00Z")
    assert result.exit_code == 0, result.output
    exported = [orjson.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["seq"] for line in exported] == [2, 3]


def test_export_warns_on_a_tampered_log(log, tmp_path):
    edit(log)
    result = cli("export", "--db", log.url, "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 1 and "does not verify" in result.output
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == RECORDS


@pytest.mark.parametrize("duration", ["30d", "12h", "2w", "45m", "10s"])
def test_prune_accepts_durations(log, duration):
    result = cli("prune", "--older-than", duration, "--db", log.url)
    assert result.exit_code == 0 and "nothing to prune" in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["prune", "--older-than", "90x"],
        ["prune", "--older-than", "0d"],
        ["export", "--since", "yesterday"],
        ["verify", "--key", "env:FERRYMAN_TEST_UNSET_AUDIT_KEY"],
        ["verify", "--key", "literal-key-no-reference"],
    ],
)
def test_usage_errors_exit_2(log, args):
    result = cli(*args, "--db", log.url)
    assert result.exit_code == 2, result.output


def test_config_errors_exit_2(tmp_path, log, data_dir):
    missing = cli("verify", "--db", f"sqlite:///{tmp_path / 'nope.db'}")
    assert missing.exit_code == 2 and "no database" in missing.output
    (tmp_path / "empty.db").write_bytes(b"")
    empty = cli("verify", "--db", f"sqlite:///{tmp_path / 'empty.db'}")
    assert empty.exit_code == 2 and "no audit tables" in empty.output
    key = data_dir / "audit.key"
    key.chmod(0o644)
    loose = cli("verify", "--db", log.url)
    assert loose.exit_code == 2 and "chmod 600" in loose.output
    key.unlink()
    no_key = cli("verify", "--db", log.url)
    assert no_key.exit_code == 2 and "no audit checkpoint key" in no_key.output


def test_a_key_reference_verifies_and_its_text_is_never_printed(log, monkeypatch):
    secret = (Path(os.environ["FERRYMAN_DATA_DIR"]) / "audit.key").read_text().strip()
    monkeypatch.setenv("AUDIT_KEY_FOR_TEST", secret)
    result = cli("verify", "--db", log.url, "--key", "env:AUDIT_KEY_FOR_TEST")
    assert result.exit_code == 0 and secret not in result.output
    monkeypatch.setenv("AUDIT_KEY_FOR_TEST", "x" * 40)
    wrong = cli("verify", "--db", log.url, "--key", "env:AUDIT_KEY_FOR_TEST")
    assert wrong.exit_code == 1 and "bad signature" in wrong.output and secret not in wrong.output
