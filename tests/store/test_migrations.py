"""The migrations make exactly the schema ``store/tables.py`` declares, on SQLite and PostgreSQL,
and upgrading a database made by an older release keeps what it holds (renaming, in 0006, the
live keys that shared a name, so the new unique index can be made).

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
from sqlalchemy import Engine, insert, select, text, update
from sqlalchemy.exc import IntegrityError

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


def _at(engine: Engine, revision: str) -> None:
    """The schema at ``revision`` whether it is behind (a new SQLite file) or at head (a fresh
    PostgreSQL database comes migrated): upgraded to it, then downgraded to it."""
    _upgrade(engine, revision)
    with engine.begin() as connection:
        command.downgrade(_config(connection), revision)


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


def test_upgrading_renames_live_keys_that_share_a_name(engine: Engine) -> None:
    """A database at 0005 whose live keys share names upgrades (0006 adds the unique index): in
    creation order the first keeps the name, the later ones get the first free ``-N`` (one a key
    had already is skipped), cut to stay within 128 characters; a revoked key keeps its name.
    After the upgrade the database itself refuses a second live key of one name."""
    _at(engine, "0005")
    long_name = "n" * 128
    rows = [
        ("key_a1", "team-a", 1.0, None),
        ("key_a2", "team-a", 2.0, None),
        ("key_a3", "team-a", 3.0, None),
        ("key_ar", "team-a", 0.5, 9.0),  # revoked: not a duplicate, keeps its name
        ("key_b", "team-a-2", 4.0, None),  # already had the first suffix: key_a2 gets -3
        ("key_l1", long_name, 5.0, None),
        ("key_l2", long_name, 6.0, None),
        ("key_s", "solo", 7.0, None),
    ]
    with engine.begin() as connection:
        for key_id, name, created, revoked in rows:
            values = {"id": key_id, "name": name, "hash": key_id.ljust(64, "0"), "hint": "x", "created": created}
            connection.execute(insert(virtual_keys).values(**values, revoked=revoked, metadata={}))
    migrate(engine)
    with engine.connect() as connection:
        names = dict(connection.execute(select(virtual_keys.c.id, virtual_keys.c.name)).all())
    assert names == {
        "key_a1": "team-a",
        "key_a2": "team-a-3",
        "key_a3": "team-a-4",
        "key_ar": "team-a",
        "key_b": "team-a-2",
        "key_l1": long_name,
        "key_l2": "n" * 126 + "-2",
        "key_s": "solo",
    }

    def add(key_id: str, name: str, revoked: float | None) -> None:
        with engine.begin() as connection:
            values = {"id": key_id, "name": name, "hash": key_id.ljust(64, "1"), "hint": "x", "created": 8.0}
            connection.execute(insert(virtual_keys).values(**values, revoked=revoked, metadata={}))

    with pytest.raises(IntegrityError):
        add("key_s2", "solo", None)
    add("key_s3", "solo", 10.0)  # a revoked key may share a live one's name
    with engine.begin() as connection:
        connection.execute(update(virtual_keys).where(virtual_keys.c.id == "key_s").values(revoked=11.0))
    add("key_s4", "solo", None)  # and once the live one is revoked, the name is free
