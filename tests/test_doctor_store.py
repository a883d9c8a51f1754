"""``ferryman.doctor_store``: the database reachable and at the schema head, Redis answering, the
audit chain verifying (and failing when tampered with, as ``ferryman audit verify`` does), all
without creating, migrating or tightening anything."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ferryman.audit import Chain, load_key
from ferryman.config import Settings
from ferryman.doctor import FAIL, OK, SKIP, WARN
from ferryman.doctor_store import check_audit, check_redis, check_store, shown_url
from ferryman.mock.server import free_port
from ferryman.store import open_store
from ferryman.store.database import Store, shipped_head
from tests.cli.test_audit_cli import record


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[Store]:
    """The default store (SQLite in the data directory), migrated, as a first start leaves it."""
    opened = open_store(Settings())
    yield opened
    opened.close()


@pytest.fixture
def audit_log(store: Store) -> Callable[[int], Chain]:
    """``audit_log(n)``: n records in the default store's chain, signed with the data directory's key."""

    def make(n: int) -> Chain:
        chain = Chain(store.engine, load_key(create=True))
        for i in range(n):
            chain.append(record(i))
        return chain

    return make


def sql(store: Store, *statements: str) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.iterdir()]}


# -- the database -----------------------------------------------------------------------------


def test_a_migrated_store_is_at_head(store: Store):
    found = check_store(Settings(), 2.0)
    assert found.status == OK, found
    assert found.message.endswith(f"schema at head ({shipped_head()})")


def test_no_database_is_reported_and_not_made(data_dir: Path):
    found = check_store(Settings(), 2.0)
    assert found.status == SKIP
    assert found.message == f"no database yet at {data_dir / 'ferryman.db'}: the first start makes it"
    assert not data_dir.exists()


def test_a_store_behind_head_warns(store: Store):
    sql(store, "UPDATE alembic_version SET version_num = '0004'")
    found = check_store(Settings(), 2.0)
    assert found.status == WARN
    assert f"schema 0004, behind head {shipped_head()}: migrations pending" in found.message
    assert found.details["revision"] == ["0004"]


def test_a_store_from_a_newer_ferryman_fails(store: Store):
    sql(store, "UPDATE alembic_version SET version_num = 'ffff9999'")
    found = check_store(Settings(), 2.0)
    assert found.status == FAIL
    assert "schema ffff9999 is unknown to this Ferryman" in found.message
    assert "upgrade Ferryman" in found.hint


def test_an_empty_database_has_no_schema(data_dir: Path):
    data_dir.mkdir(mode=0o700)
    (data_dir / "ferryman.db").touch(mode=0o600)
    found = check_store(Settings(), 2.0)
    assert found.status == WARN
    assert "holds no Ferryman schema yet" in found.message


def test_the_store_is_read_and_left_as_found(store: Store, data_dir: Path):
    os.chmod(data_dir / "ferryman.db", 0o644)
    before = modes(data_dir)
    assert check_store(Settings(), 2.0).status == OK
    assert check_audit(Settings(), 2.0).status in (OK, SKIP)
    after = modes(data_dir)
    assert {name: after[name] for name in before} == before  # nothing tightened
    assert after["ferryman.db"] == 0o644


def test_an_unreachable_postgres_fails_with_its_cause_and_no_password(data_dir: Path):
    password = "doctor-" + os.urandom(6).hex()
    url = f"postgresql://ferryman:{password}@127.0.0.1:{free_port()}/ferryman"
    found = check_store(Settings(store={"url": url}), 2.0)
    assert found.status == FAIL
    assert found.message.startswith("cannot open the database postgresql://ferryman:***@127.0.0.1:")
    assert "OperationalError" in found.message
    assert password not in str(found.as_json())


def test_a_postgres_store_at_head(postgres_url: str, data_dir: Path):
    from tests.gateway.processes import fresh_postgres_database

    with fresh_postgres_database(postgres_url) as url:  # migrated
        settings = Settings(store={"url": url})
        found = check_store(settings, 2.0)
        assert found.status == OK, found
        assert found.details["dialect"] == "postgresql"
        assert check_audit(settings, 2.0).status == SKIP  # no records, no key file


def test_shown_urls_hide_passwords():
    assert shown_url("postgresql://u:pw@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert shown_url("redis://:pw@cache:6379/0") == "redis://:***@cache:6379/0"


# -- Redis ------------------------------------------------------------------------------------


def test_no_redis_configured_is_skipped():
    assert check_redis(Settings(), 1.0).status == SKIP


def test_a_dead_redis_fails():
    found = check_redis(Settings(store={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}), 1.0)
    assert found.status == FAIL
    assert "does not answer: ConnectionError" in found.message


def test_a_live_redis_answers(redis_url: str):
    found = check_redis(Settings(store={"redis_url": redis_url}), 2.0)
    assert found.status == OK, found
    assert found.message.startswith("Redis ")


# -- the audit chain --------------------------------------------------------------------------


def test_an_intact_chain_verifies(audit_log: Callable[[int], Chain]):
    audit_log(5)
    found = check_audit(Settings(), 2.0)
    assert found.status == OK, found
    assert found.message.startswith("intact: 5 records (seq 1..5)")
    assert found.details["records"] == 5


def test_a_tampered_chain_fails(audit_log: Callable[[int], Chain], store: Store):
    audit_log(5)
    sql(store, "UPDATE audit SET status = 500 WHERE seq = 3")
    found = check_audit(Settings(), 2.0)
    assert found.status == FAIL
    assert found.message.startswith("TAMPERED: seq 3: contents do not match the record's hash: edited")
    assert found.details["problems"][0] == {"seq": 3, "message": "contents do not match the record's hash: edited"}
    assert "ferryman audit verify" in found.hint


def test_a_truncated_chain_fails(audit_log: Callable[[int], Chain], store: Store):
    audit_log(5)
    sql(store, "DELETE FROM audit WHERE seq = 5")
    found = check_audit(Settings(), 2.0)
    assert found.status == FAIL
    assert "truncated" in found.message


def test_records_without_their_key_fail(audit_log: Callable[[int], Chain], data_dir: Path):
    audit_log(2)
    (data_dir / "audit.key").unlink()
    found = check_audit(Settings(), 2.0)
    assert found.status == FAIL
    assert found.message.startswith("2 audit records but no checkpoint key")
    assert "restore the key file" in found.hint


def test_a_readable_key_file_fails(audit_log: Callable[[int], Chain], data_dir: Path):
    audit_log(1)
    os.chmod(data_dir / "audit.key", 0o644)
    found = check_audit(Settings(), 2.0)
    assert found.status == FAIL
    assert "readable by group or others" in found.message


def test_the_wrong_key_fails(audit_log: Callable[[int], Chain], monkeypatch: pytest.MonkeyPatch):
    audit_log(2)
    monkeypatch.setenv("DOCTOR_TEST_AUDIT_KEY", os.urandom(16).hex())
    found = check_audit(Settings(audit={"checkpoint_key": "env:DOCTOR_TEST_AUDIT_KEY"}), 2.0)
    assert found.status == FAIL
    assert "bad signature" in found.message


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"audit": {"enabled": False}}, "audit is off (audit.enabled = false)"), ({}, "no audit log yet (no database)")],
)
def test_nothing_to_verify_is_skipped(data_dir: Path, settings: dict[str, Any], message: str):
    found = check_audit(Settings(**settings), 2.0)
    assert found.status == SKIP
    assert found.message == message


def test_an_empty_log_without_a_key_is_skipped(store: Store):
    found = check_audit(Settings(), 2.0)
    assert found.status == SKIP
    assert found.message == "no audit records yet"
