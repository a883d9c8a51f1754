"""Opening the store: engine, pragmas, migrations, and running blocking calls off the loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url

from ferryman.config import Settings
from ferryman.files import private_database

T = TypeVar("T")

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str) -> Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        _private_sqlite_file(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def _private_sqlite_file(url: str) -> None:
    """The database file made 0600 (or tightened to it) before SQLite opens it: SQLite gives the
    ``-wal`` and ``-shm`` files the main file's mode. In-memory and ``file:`` URI databases are
    left alone, and so is a file in a missing or unwritable folder: SQLite reports that itself."""
    try:
        parsed = make_url(url)
    except Exception:  # SQLAlchemy's own error comes from create_engine
        return
    database = parsed.database
    if not database or database.startswith((":memory:", "file:")) or parsed.query.get("uri"):
        return
    path = Path(database)  # as SQLite reads it: relative to the working directory, no ~
    if not path.parent.is_dir():
        return
    with contextlib.suppress(OSError):
        private_database(path)


# The key of the PostgreSQL advisory lock migrations hold (any constant; this one spells "ferryman").
MIGRATION_LOCK = 0x66657272796D616E


def schema_head() -> str:
    """The newest migration's revision: what ``alembic_version`` holds after :func:`migrate`."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return str(ScriptDirectory.from_config(config).get_current_head())


def shipped_head() -> str:
    """The newest migration's revision, read from the migration files themselves (the one no other
    names as its ``down_revision``) without importing Alembic, which costs a tenth of a second at
    every start; :func:`schema_head` asks Alembic, and a test holds the two equal."""
    import re

    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        revision = re.search(r'^revision\s*=\s*"([^"]+)"', text, re.M)
        parent = re.search(r'^down_revision\s*=\s*"([^"]+)"', text, re.M)
        if revision:
            revisions.add(revision.group(1))
        if parent:
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"the shipped migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _at_head(engine: Engine) -> bool:
    """Whether ``alembic_version`` holds the shipped head already (the usual start: one query)."""
    try:
        with engine.connect() as connection:
            rows = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except Exception:  # no table yet (a new database), or unreadable: let Alembic say
        return False
    return [str(row[0]) for row in rows] == [shipped_head()]


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (Alembic, run in-process), under a lock so that
    any number of instances may start at once on one database: on PostgreSQL a transaction-level
    advisory lock (released when the migration commits), on SQLite an exclusive ``flock`` on a
    ``-migrate.lock`` file beside the database. The instances that waited find the schema at head
    and change nothing. A schema at head already is found so with one query, without Alembic."""
    if _at_head(engine):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _sqlite_migration_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def _sqlite_migration_lock(engine: Engine) -> Any:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database.startswith((":memory:", "file:")) or not Path(database).parent.is_dir():
        yield
        return
    import fcntl

    from ferryman.files import open_private

    with open_private(Path(database + "-migrate.lock"), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
        yield


class Store:
    """The database (and Redis, when configured) one process uses.

    Blocking database work runs on a small thread pool (one thread for SQLite, which allows one
    writer at a time) so the event loop never waits on the disk.
    """

    def __init__(self, engine: Engine, redis_url: str | None = None, redis_prefix: str = "ferryman:") -> None:
        self.engine = engine
        self.is_sqlite = engine.dialect.name == "sqlite"
        self._pool = ThreadPoolExecutor(max_workers=1 if self.is_sqlite else 8, thread_name_prefix="ferryman-db")
        self.redis_url = redis_url
        self.redis_prefix = redis_prefix
        self._redis: Any = None
        self._redis_lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def read(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` on the store's threads, outside a transaction."""

        def work() -> T:
            with self.engine.connect() as conn:
                return fn(conn)

        return await self.run(work)

    async def write(self, fn: Callable[[Connection], T]) -> T:
        """``fn(connection)`` on the store's threads, in one transaction (committed on return)."""

        def work() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return await self.run(work)

    def redis(self) -> Any:
        """A ``redis.asyncio.Redis`` for this process, or None when no Redis is configured."""
        if self.redis_url is None:
            return None
        with self._redis_lock:
            if self._redis is None:
                self._redis = redis_client(self.redis_url)
            return self._redis

    def disk_free(self) -> int | None:
        """The bytes free beside an SQLite database file (None for a server database or an
        in-memory one): a full disk refuses writes while reads still work."""
        if not self.is_sqlite:
            return None
        database = self.engine.url.database
        if not database or database.startswith((":memory:", "file:")):
            return None
        folder = Path(database).parent
        try:
            stat = os.statvfs(folder)
        except OSError:
            return None
        return stat.f_bavail * stat.f_frsize

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.engine.dispose()


def redis_client(url: str, *, sync: bool = False) -> Any:
    """The one way Ferryman connects to Redis (``redis.asyncio.Redis``, or ``redis.Redis`` when
    ``sync``). Maintenance notifications (a managed-Redis feature, ``"auto"`` by default in
    redis-py 8) are off: while they are on, the async pool skips its check that a pooled
    connection is still alive, so after a Redis restart every idle connection fails its next
    command once, and a budget settlement sent on one was lost (tests/pipeline/
    test_budget_redis_restart.py)."""
    from redis.maint_notifications import MaintNotificationsConfig

    if sync:
        import redis

        return redis.Redis.from_url(url, maint_notifications_config=MaintNotificationsConfig(enabled=False))
    import redis.asyncio as aioredis

    return aioredis.from_url(url, maint_notifications_config=MaintNotificationsConfig(enabled=False))


def open_store(settings: Settings, url: str | None = None, migrate_schema: bool = True) -> Store:
    engine = make_engine(url or settings.database_url())
    if migrate_schema:
        migrate(engine)
    return Store(engine, settings.store.redis_url, settings.store.redis_prefix)
