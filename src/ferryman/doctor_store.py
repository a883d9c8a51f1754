"""Doctor's store checks: the database reachable and at the schema head, Redis answering, and the
audit chain verifying.

Read-only on purpose. ``Settings.database_url()`` and ``make_engine`` make the data directory and
the SQLite file, and tighten their modes, as a Ferryman start should; doctor must not, or it would
report the state it made instead of the one it found (and create an empty database where the
user's was expected). So an SQLite database is opened with ``mode=ro`` and a missing one is
reported, not made; a server database goes through ``make_engine`` with a connect timeout, as
Redis gets socket timeouts, so a host that drops packets costs seconds, not minutes. The audit
chain is checked by the very :meth:`~ferryman.audit.chain.Chain.verify` that ``ferryman audit
verify`` runs, and summarised by its summary.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ferryman.config import Settings, default_data_dir
from ferryman.doctor import FAIL, OK, SKIP, WARN, Check

DATABASE_FILE = "ferryman.db"  # in the data directory, when store.url is not set (Settings.database_url)


def database_url(settings: Settings) -> str:
    """The store's URL, as ``Settings.database_url()`` gives it, without making the data directory."""
    return settings.store.url or f"sqlite:///{default_data_dir() / DATABASE_FILE}"


def sqlite_path(url: str) -> Path | None:
    """The file of an SQLite URL (None: not SQLite, in memory, or a ``file:`` URI)."""
    if not url.startswith("sqlite"):
        return None
    try:
        database = make_url(url).database
    except Exception:
        return None
    if not database or database.startswith((":memory:", "file:")):
        return None
    return Path(database)


def shown_url(url: str) -> str:
    """A URL fit to print: its password, if any, replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("://", 1)[0] + "://…"


def _cause(error: BaseException) -> str:
    """An exception as one line: the driver's own error when SQLAlchemy wraps one."""
    cause = getattr(error, "orig", None) or error
    text = (str(cause).strip().splitlines() or [""])[0]
    return f"{type(cause).__name__}: {text[:300]}" if text else type(cause).__name__


@contextlib.contextmanager
def read_only_engine(url: str, timeout: float) -> Iterator[Engine]:
    """An engine that can only read: SQLite opened ``mode=ro`` (never created, never chmod-ed),
    a server database through ``make_engine`` with ``connect_timeout``."""
    path = sqlite_path(url)
    if path is not None:
        uri = f"file:{quote(str(path.absolute()))}?mode=ro"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False)

        engine = create_engine("sqlite://", creator=connect)
    else:
        from ferryman.store.database import make_engine

        parsed = make_url(url)
        if parsed.drivername.startswith("postgresql") and "connect_timeout" not in parsed.query:
            parsed = parsed.update_query_dict({"connect_timeout": str(max(1, round(timeout)))})
        engine = make_engine(parsed.render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()


def _no_database(url: str) -> Check | None:
    """A skip for an in-memory database, or an SQLite file that is not there yet."""
    path = sqlite_path(url)
    if url.startswith("sqlite") and path is None:
        return Check("store", SKIP, f"{shown_url(url)} is not a file: nothing persists to check")
    if path is not None and not path.exists():
        return Check("store", SKIP, f"no database yet at {path}: the first start makes it", "", {"path": str(path)})
    return None


def check_store(settings: Settings, timeout: float) -> Check:
    """The database answers and its schema is the one this Ferryman's migrations end at."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from ferryman.store.database import MIGRATIONS, shipped_head

    url = database_url(settings)
    missing = _no_database(url)
    if missing is not None:
        return missing
    where = shown_url(url)
    details: dict[str, Any] = {"url": where}
    try:
        with read_only_engine(url, timeout) as engine, engine.connect() as conn:
            details["dialect"] = conn.dialect.name
            rows = None
            if "alembic_version" in set(inspect(conn).get_table_names()):
                rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
    except Exception as error:
        sqlite = url.startswith("sqlite")
        hint = "check the file and its folder can be read" if sqlite else "is the server up, and store.url right?"
        return Check("store", FAIL, f"cannot open the database {where}: {_cause(error)}", hint, details)
    head = shipped_head()
    details["head"] = head
    if not rows:
        return Check(
            "store",
            WARN,
            f"{where} holds no Ferryman schema yet",
            "the first start migrates it (ferryman serve, or the pipeline with a store)",
            details,
        )
    revisions = [str(row[0]) for row in rows]
    details["revision"] = revisions
    if revisions == [head]:
        return Check("store", OK, f"{where}: schema at head ({head})", "", details)
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    script = ScriptDirectory.from_config(config)
    try:
        known = all(script.get_revision(revision) is not None for revision in revisions)
    except CommandError:
        known = False
    if not known:
        return Check(
            "store",
            FAIL,
            f"{where}: schema {', '.join(revisions)} is unknown to this Ferryman (head {head}): "
            "a newer one migrated it",
            "upgrade Ferryman on this host to the version the others run",
            details,
        )
    return Check(
        "store",
        WARN,
        f"{where}: schema {', '.join(revisions)}, behind head {head}: migrations pending",
        "the next start migrates it (under a lock: safe with several instances starting at once)",
        details,
    )


def _redis_url(url: str, timeout: float) -> str:
    """``url`` with socket timeouts (redis-py reads them from the query) unless it sets its own."""
    extra = [f"{name}={timeout:g}" for name in ("socket_connect_timeout", "socket_timeout") if f"{name}=" not in url]
    if not extra:
        return url
    return url + ("&" if "?" in url else "?") + "&".join(extra)


def check_redis(settings: Settings, timeout: float) -> Check:
    """Redis (``store.redis_url``) answers a PING, when one is configured."""
    from ferryman.store.database import redis_client

    url = settings.store.redis_url
    if not url:
        return Check("redis", SKIP, "not configured (store.redis_url): limits and pacing live in each process")
    where = shown_url(url)
    try:
        client = redis_client(_redis_url(url, timeout), sync=True)
    except Exception as error:  # a malformed URL
        return Check("redis", FAIL, f"store.redis_url {where} is not usable: {_cause(error)}", "", {"url": where})
    try:
        client.ping()
        version = (client.info("server") or {}).get("redis_version", "?")
    except Exception as error:
        return Check(
            "redis",
            FAIL,
            f"Redis at {where} does not answer: {_cause(error)}",
            "is Redis up, and store.redis_url right? Without it, shared limits and budgets stop",
            {"url": where},
        )
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return Check("redis", OK, f"Redis {version} at {where} answers", "", {"url": where, "version": version})


def check_audit(settings: Settings, timeout: float) -> Check:
    """The audit chain verifies with the checkpoint key, as ``ferryman audit verify`` checks it."""
    from ferryman.audit.chain import Chain
    from ferryman.audit.cli import verify_summary as summary
    from ferryman.audit.keys import AuditKeyError, key_file, load_key
    from ferryman.store.tables import audit

    if not settings.audit.enabled:
        return Check("audit", SKIP, "audit is off (audit.enabled = false)")
    url = database_url(settings)
    if _no_database(url) is not None:
        return Check("audit", SKIP, "no audit log yet (no database)")
    reference = settings.audit.checkpoint_key
    details: dict[str, Any] = {"key": reference or f"file:{key_file()}"}
    try:
        with read_only_engine(url, timeout) as engine:
            if not {"audit", "audit_checkpoints"} <= set(inspect(engine).get_table_names()):
                return Check("audit", SKIP, "no audit log yet (the database has no audit tables)", "", details)
            if reference is None and not key_file().exists():
                with engine.connect() as conn:
                    count = conn.execute(select(func.count()).select_from(audit)).scalar_one()
                if not count:
                    return Check("audit", SKIP, "no audit records yet", "", details)
                return Check(
                    "audit",
                    FAIL,
                    f"{count} audit records but no checkpoint key: {key_file()} is missing and "
                    "audit.checkpoint_key is not set, so the chain cannot be verified",
                    "restore the key file from a backup (a new key cannot verify the old chain), "
                    "or set audit.checkpoint_key to the key it was signed with",
                    details,
                )
            report = Chain(engine, load_key(reference, create=False)).verify()
    except AuditKeyError as error:
        return Check("audit", FAIL, str(error), "fix the key (mode 0600, the one the chain was signed with)", details)
    except SQLAlchemyError as error:
        return Check("audit", FAIL, f"cannot read the audit log: {_cause(error)}", "", details)
    details.update(
        records=report.records,
        first_seq=report.first_seq,
        last_seq=report.last_seq,
        problems=[{"seq": p.seq, "message": p.message} for p in report.problems[:20]],
    )
    text = summary(report)
    if report.ok:
        return Check("audit", OK, text, "", details)
    lines = text.splitlines()
    return Check(
        "audit",
        FAIL,
        f"{lines[0]} ({lines[-1]})" if len(lines) > 1 else lines[0],
        "ferryman audit verify lists every problem; keep this database as evidence and restore from a backup",
        details,
    )
