"""The migrations make exactly the schema ``store/tables.py`` declares, on SQLite and PostgreSQL,
and upgrading a database made by an older release keeps what it holds.

Alembic's own comparison (``compare_metadata``) is the independent check: a column added to
``tables.py`` without a migration (or the reverse) fails here, not on a user's database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Engine, insert, select, text

from ferryman.store.database import MIGRATIONS, make_engine, migrate, schema_head
from ferryman.store.tables import metadata, virtual_keys
from tests.gateway.processes import fresh_postgres_database


def _config(connection: object) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _upgrade(engine: Engine, revision: str) -> None:
    with engine.begin() as connection:
        command.upgrade(_config(connection), revision)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'ferryman.db'}")
        yield made
        made.dispose()
        return
    with fresh_postgres_database(request.getfixturevalue("postgres_url")) as url:
        made = make_engine(url)
        yield made
        made.dispose()


def test_the_migrations_make_the_declared_schema(engine: Engine) -> None:
    migrate(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []


def test_upgrading_a_gateway_database_keeps_its_keys(engine: Engine) -> None:
    """A database at 0002 (keys without billing tags) upgrades to head: the key is still there,
    with no tags."""
    _upgrade(engine, "0002")
    with engine.begin() as connection:
        row = {"id": "key_old", "name": "old", "hash": "0" * 64, "hint": "x", "created": 1.0, "metadata": {}}
        connection.execute(insert(virtual_keys).values(**row))  # only these columns: 0002 has no tags
    migrate(engine)
    with engine.connect() as connection:
        found = connection.execute(select(virtual_keys.c.name, virtual_keys.c.tags)).one()
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert tuple(found) == ("old", None)
    assert version == schema_head()
