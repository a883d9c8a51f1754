"""Four instances opening one empty database at the same moment all come up: migrations run
under a lock (an advisory lock on PostgreSQL, a file lock on SQLite), the ones that waited find
the schema at head. Real processes, released together by a barrier."""

from __future__ import annotations

import multiprocessing
import traceback
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from ferryman.store.database import make_engine, migrate, schema_head
from tests.gateway.processes import fresh_postgres_database

INSTANCES = 4


def _start(url: str, barrier: Any, results: Any) -> None:
    try:
        engine = make_engine(url)
        barrier.wait(timeout=60)
        migrate(engine)
        engine.dispose()
        results.put("ok")
    except BaseException:
        results.put(traceback.format_exc())


def _start_together(url: str) -> list[str]:
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(INSTANCES), context.Queue()
    processes = [context.Process(target=_start, args=(url, barrier, results)) for _ in range(INSTANCES)]
    for process in processes:
        process.start()
    found = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    return found


def _version(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    finally:
        engine.dispose()
    assert len(versions) == 1
    return str(versions[0])


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_four_instances_starting_at_once_all_come_up(backend: str, tmp_path: Path, request: pytest.FixtureRequest):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ferryman.db'}"
        assert _start_together(url) == ["ok"] * INSTANCES
        assert _version(url) == schema_head()
        assert (tmp_path / "ferryman.db-migrate.lock").stat().st_mode & 0o777 == 0o600
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        assert _start_together(url) == ["ok"] * INSTANCES
        assert _version(url) == schema_head()
