"""A pytest plugin: no key may leak anywhere during the whole test suite.

Enabled for the suite by ``pytest_plugins = ["tests.leak_guard"]`` in ``tests/conftest.py`` (or
``-p tests.leak_guard``). During the session it watches

- every log record, formatted with its exception and stack text (a handler on the root logger;
  the ``ferryman`` logger is opened to DEBUG when nothing set its level), scanned as it is emitted;
- the text of every warning, and the message (with its causes) of every exception that ends a
  test, other than assertion errors and pytest outcomes, whose text quotes test source;

and when the session ends it also scans

- the Prometheus exposition of ``ferryman.pipeline.telemetry.REGISTRY``;
- every audit table (``*audit*``) of every SQLite file (``*.db``, ``*.sqlite*``) under the session's
  temporary directory, where the tests' stores live, and PostgreSQL's audit tables (rows written
  since the session started) when the test server answers.

A finding is an ``sk-…`` or ``fm-…`` key, a ``Bearer`` token, or one of the suite's own test keys;
the redaction placeholder ``[REDACTED]``, OpenAI's masked form (``sk-****…6789``) and placeholders
like ``Bearer YOUR_KEY`` are not. Any
finding fails the session (exit status 1) with a list of where each was seen; the keys themselves
are shown cut short. Test source code is never scanned.

:func:`assert_no_secrets` is the same check for one piece of text, for tests to call directly.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

# The keys the suite itself uses: they must never show up anywhere but the test source.
KNOWN_KEYS = ("sk-ferryman-mock-test", "sk-ferryman-upstream-test-key")
_KEY = re.compile(r"(?<![A-Za-z])(?:sk|fm)-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]{8,}")
_PLACEHOLDER = re.compile(r"[A-Z_]+")  # Bearer YOUR_KEY, as in OpenAI's own "missing key" message
_DB_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_MAX_FINDINGS = 200


def find_secrets(text: str) -> list[str]:
    """The keys and bearer tokens in ``text`` (as found)."""
    if not text:
        return []
    found = [m.group(0) for m in _KEY.finditer(text)]
    found += [m.group(0) for m in _BEARER.finditer(text) if not _PLACEHOLDER.fullmatch(m.group(0).split()[-1])]
    found += [key for key in KNOWN_KEYS if key in text and not any(key in f for f in found)]
    return found


def shown(secret: str) -> str:
    """A finding cut short enough to name it without repeating it."""
    return secret[:10] + "…" if len(secret) > 10 else secret


def _context(text: str, secret: str) -> str:
    at = text.find(secret)
    start, end = max(0, at - 60), min(len(text), at + len(secret) + 60)
    snippet = text[start:end].replace(secret, shown(secret))
    return " ".join(snippet.split())


def assert_no_secrets(text: str, where: str = "text") -> None:
    """Fail (AssertionError) if ``text`` holds a key or bearer token; the message shows them cut short."""
    found = find_secrets(text)
    if found:
        lines = "\n".join(f"  {shown(s)!r} in: …{_context(text, s)}…" for s in found[:20])
        raise AssertionError(f"{len(found)} secret(s) leaked in {where}:\n{lines}")


# -- the session-wide guard --------------------------------------------------------------------


class _Capture(logging.Handler):
    def __init__(self, guard: LeakGuard) -> None:
        super().__init__(logging.NOTSET)
        self.guard = guard
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            text = f"{record.name} {record.levelname} {record.msg!s} {record.args!r}"
        self.guard.scan(text, f"log record ({record.name} {record.levelname})")


class LeakGuard:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.started = time.time()
        self.current: str | None = None
        self.findings: dict[tuple[str, str], str] = {}
        self.handler = _Capture(self)
        self._ferryman_level: int | None = None

    # what is watched during the session

    def start(self) -> None:
        logging.getLogger().addHandler(self.handler)
        ferryman = logging.getLogger("ferryman")
        if ferryman.level == logging.NOTSET:
            self._ferryman_level = ferryman.level
            ferryman.setLevel(logging.DEBUG)

    def stop(self) -> None:
        logging.getLogger().removeHandler(self.handler)
        if self._ferryman_level is not None:
            logging.getLogger("ferryman").setLevel(self._ferryman_level)

    def scan(self, text: str, source: str) -> None:
        for secret in find_secrets(text):
            where = f"{source}{f' during {self.current}' if self.current else ''}"
            key = (where, shown(secret))
            if key not in self.findings and len(self.findings) < _MAX_FINDINGS:
                self.findings[key] = _context(text, secret)

    # what is scanned at the end

    def scan_at_end(self) -> None:
        self.current = None
        telemetry = sys.modules.get("ferryman.pipeline.telemetry")
        if telemetry is not None:
            from prometheus_client import generate_latest

            self.scan(generate_latest(telemetry.REGISTRY).decode(), "Prometheus metrics")
        for path in self._databases():
            for table, text in _sqlite_audit_rows(path):
                self.scan(text, f"audit table {table} of {path}")
        for table, text in _postgres_audit_rows(self.started):
            self.scan(text, f"PostgreSQL audit table {table}")

    def _databases(self) -> Iterator[Path]:
        factory = getattr(self.config, "_tmp_path_factory", None)
        base = getattr(factory, "_basetemp", None)  # only if the session made one
        if base is None or not Path(base).is_dir():
            return
        for path in sorted(Path(base).rglob("*")):
            if path.suffix in _DB_SUFFIXES and path.is_file():
                yield path

    def report(self, session: pytest.Session) -> None:
        if not self.findings:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{secret!r} in {where}: …{context}…" for (where, secret), context in self.findings.items()]
        if reporter is not None:
            reporter.write("\n")
            reporter.write_sep("=", f"SECRET LEAKS: {len(lines)} key(s) or token(s) seen", red=True, bold=True)
            for line in lines:
                reporter.write_line(line)
        else:
            print("SECRET LEAKS:\n" + "\n".join(lines), file=sys.stderr)
        if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _row_text(row: Iterable[Any]) -> str:
    parts = []
    for value in row:
        if isinstance(value, bytes | bytearray | memoryview):
            parts.append(bytes(value).decode("utf-8", errors="replace"))
        elif value is not None:
            parts.append(str(value))
    return " | ".join(parts)


def _sqlite_audit_rows(path: Path) -> Iterator[tuple[str, str]]:
    try:
        db = sqlite3.connect(path, timeout=2)
    except sqlite3.Error:
        return
    try:
        tables = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE '%audit%'")
        ]
        for table in tables:
            quoted = table.replace('"', '""')
            for row in db.execute(f'SELECT * FROM "{quoted}"'):
                yield table, _row_text(row)
    except sqlite3.Error:
        return  # not a database, or one being rewritten: nothing to read
    finally:
        db.close()


def _postgres_audit_rows(since: float) -> Iterator[tuple[str, str]]:
    url = os.environ.get("FERRYMAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        import psycopg
    except ImportError:
        return
    try:
        conn = psycopg.connect(url, connect_timeout=1, autocommit=True)
    except Exception:
        return  # no server: nothing the suite could have written there
    with conn:
        try:
            tables = conn.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_name LIKE '%%audit%%' "
                "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
            ).fetchall()
            for schema, table in tables:
                columns = {
                    r[0]
                    for r in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s",
                        (schema, table),
                    )
                }
                name = f'"{schema}"."{table}"'
                query = f"SELECT * FROM {name}" + (" WHERE ts >= %s" if "ts" in columns else "") + " LIMIT 100000"
                params = (since - 1,) if "ts" in columns else ()
                try:
                    rows = conn.execute(query, params).fetchall()
                except Exception:
                    continue  # dropped meanwhile by a concurrent run
                for row in rows:
                    yield f"{schema}.{table}", _row_text(row)
        except Exception:
            return


# -- hooks ---------------------------------------------------------------------------------------

_active: LeakGuard | None = None  # one session per process

_OUTCOMES: tuple[type[BaseException], ...] = (
    AssertionError,
    pytest.skip.Exception,
    pytest.fail.Exception,
    pytest.xfail.Exception,
    pytest.exit.Exception,
)


def pytest_configure(config: pytest.Config) -> None:
    global _active
    if _active is None:
        _active = LeakGuard(config)
        _active.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _active
    if _active is not None and _active.config is config:
        _active.stop()
        _active = None


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    if _active is not None:
        _active.current = nodeid


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    if _active is not None:
        _active.current = None


def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> None:
    if _active is None or call.excinfo is None or isinstance(call.excinfo.value, _OUTCOMES):
        return
    seen: set[int] = set()
    error: BaseException | None = call.excinfo.value
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        _active.scan(f"{type(error).__name__}: {error}", f"exception ({type(error).__name__}) ending the test")
        error = error.__cause__ or error.__context__


def pytest_warning_recorded(warning_message: Any, when: str, nodeid: str, location: Any) -> None:
    if _active is not None:
        _active.scan(str(warning_message.message), f"warning {warning_message.category.__name__}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _active is None:
        return
    _active.scan_at_end()
    _active.report(session)
