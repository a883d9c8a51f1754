"""``ferryman doctor``'s checks: is this setup (settings, upstreams, store, files) ready to serve?

Settings are validated when they load, but a valid file can still describe a setup that does not
work: a key the upstream refuses, a model that retired last month, a price table a year old, an
audit key file anyone can read, two workers each enforcing their own rate limits. Each check here
looks at one thing a running Ferryman depends on and says ``ok``, ``warn``, ``fail`` or ``skip``
(not checked: offline, not configured, nothing there yet), what it found, and what to do.

Checks only look. They never create, migrate or tighten anything (the data directory's modes are
reported as found, an SQLite database is opened read-only), so a report describes the setup as it
was, not as doctor left it, and two runs say the same. Every text a check returns goes through
:mod:`ferryman.redact` before anyone sees it: an upstream's error message may quote a key.
A check that crashes is reported as that check failing; the others still run.

The upstream checks (keys, models and retirements, rate limits) are in
:mod:`ferryman.doctor_upstream`; the store, Redis and the audit chain in
:mod:`ferryman.doctor_store`; the command in :mod:`ferryman.doctor_cli`. Every check that depends
on the date takes ``today``, so a test, or ``--today``, says which day it is.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ferryman import catalogue, redact
from ferryman.config import Settings, default_data_dir

Status = Literal["ok", "warn", "fail", "skip"]
OK: Status = "ok"
WARN: Status = "warn"
FAIL: Status = "fail"
SKIP: Status = "skip"

# The newest openai SDK release Ferryman's suite ran against (the pipeline patches the SDK's
# client classes, so a release that moves them is worth knowing about before production does).
TESTED_OPENAI = "3.63.0"
PRICE_MAX_AGE_DAYS = 60  # OpenAI changes prices and launches models every few weeks
DEFAULT_TIMEOUT_S = 5.0  # per network call: doctor should answer in seconds, not wait a TCP timeout out


@dataclass
class Check:
    """One finding: ``check`` names what was looked at (``upstream:openai``, ``store``)."""

    check: str
    status: Status
    message: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def redacted(self) -> Check:
        """This finding with every configured secret, key and bearer token removed."""
        details = redact.json_value(self.details, pii=False)
        return Check(self.check, self.status, redact.secrets(self.message), redact.secrets(self.hint), details)

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "message": self.message,
            "hint": self.hint,
            "details": self.details,
        }


def run(
    settings: Settings,
    *,
    today: dt.date,
    probe: bool = False,
    offline: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Check]:
    """Every check, in the order the report lists them, redacted."""
    from ferryman import doctor_store, doctor_upstream

    steps: list[tuple[str, Callable[[], Iterable[Check]]]] = [
        (
            "upstream",
            lambda: doctor_upstream.check_upstreams(
                settings, today=today, probe=probe, offline=offline, timeout=timeout
            ),
        ),
        ("openai-sdk", lambda: [check_sdk(installed_openai(), TESTED_OPENAI, required_openai())]),
        ("prices", lambda: check_prices(settings, today)),
        ("store", lambda: [doctor_store.check_store(settings, timeout)]),
        ("redis", lambda: [doctor_store.check_redis(settings, timeout)]),
        ("audit", lambda: [doctor_store.check_audit(settings, timeout)]),
        ("permissions", lambda: [check_permissions(settings)]),
        ("sharing", lambda: [check_sharing(settings)]),
    ]
    found: list[Check] = []
    for name, step in steps:
        try:
            found.extend(step())
        except Exception as error:  # one broken check must not hide what the others found
            found.append(
                Check(
                    name,
                    FAIL,
                    f"the check itself failed: {type(error).__name__}: {str(error)[:300]}",
                    "this is a bug in ferryman doctor: please report it with this line",
                )
            )
    return [check.redacted() for check in found]


def exit_code(checks: Iterable[Check], strict: bool = False) -> int:
    """0 when nothing failed (warnings and skips allowed, unless ``strict``), else 1."""
    bad = {FAIL, WARN} if strict else {FAIL}
    return 1 if any(check.status in bad for check in checks) else 0


# -- the openai SDK ---------------------------------------------------------------------------

_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)(.*)$")
_CLAUSE = re.compile(r"^\s*(~=|===|==|!=|<=|>=|<|>)\s*([0-9][0-9A-Za-z.*+!-]*)\s*$")


def installed_openai() -> str | None:
    try:
        return importlib.metadata.version("openai")
    except importlib.metadata.PackageNotFoundError:
        return None


def required_openai() -> str | None:
    """The ``openai`` version range Ferryman's own metadata (its pyproject) declares."""
    try:
        requirements = importlib.metadata.requires("ferryman") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for requirement in requirements:
        spec, _, marker = requirement.partition(";")
        match = re.match(r"^\s*openai\s*(?:\[[^\]]*\])?\s*([<>=!~][^;]*)?$", spec)
        if match and "extra" not in marker:
            return (match.group(1) or "").replace(" ", "") or None
    return None


def version_key(version: str) -> tuple[tuple[int, ...], int]:
    """``3.60.0`` → ((3, 60, 0, 0), 1); a pre-release (``3.61.0rc1``) sorts before its release,
    a post-release (``3.61.0.post1``) after it."""
    match = _VERSION.match(version)
    if not match:
        return ((0,), 0)
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers += (0,) * (4 - len(numbers))
    rest = match.group(2).lstrip(".-_").lower()
    if rest.startswith("post"):
        return numbers, 2
    return numbers, 0 if rest[:1].isalpha() else 1


def satisfies(version: str, requirement: str) -> bool:
    """Whether ``version`` meets ``requirement`` (``>=3.50,<4``: PEP 440's comparisons, without
    its pre-release subtleties). An unreadable clause is not held against the version."""
    have = version_key(version)
    for clause in filter(None, (part.strip() for part in requirement.split(","))):
        match = _CLAUSE.match(clause)
        if not match:
            continue
        op, wanted = match.groups()
        if op in ("==", "!=", "===") and wanted.endswith(".*"):
            prefix = version_key(wanted[:-2])[0][: len(wanted[:-2].split("."))]
            equal = have[0][: len(prefix)] == prefix
        else:
            equal = have[0] == version_key(wanted)[0]
        want = version_key(wanted)
        ok = {
            ">=": have >= want,
            ">": have > want,
            "<=": have <= want,
            "<": have < want,
            "==": equal,
            "===": equal,
            "!=": not equal,
            "~=": have >= want and have[0][: len(wanted.split(".")) - 1] == want[0][: len(wanted.split(".")) - 1],
        }[op]
        if not ok:
            return False
    return True


def check_sdk(installed: str | None, tested: str = TESTED_OPENAI, requirement: str | None = None) -> Check:
    """The installed ``openai`` against the range Ferryman allows and the newest it was tested with."""
    name = "openai-sdk"
    details = {"installed": installed, "tested": tested, "required": requirement}
    allowed = f"openai{requirement}" if requirement else "openai"
    if installed is None:
        return Check(name, FAIL, "the openai package is not installed", f"pip install '{allowed}'", details)
    if requirement and not satisfies(installed, requirement):
        return Check(
            name,
            FAIL,
            f"openai {installed} is outside the range Ferryman supports ({requirement})",
            f"pip install '{allowed}'",
            details,
        )
    have, newest = version_key(installed), version_key(tested)
    if have < newest:
        return Check(
            name,
            WARN,
            f"openai {installed} is older than {tested}, the newest release Ferryman was tested with",
            f"upgrade: pip install 'openai>={tested}" + (f",{_upper(requirement)}'" if _upper(requirement) else "'"),
            details,
        )
    if have > newest:
        return Check(
            name,
            WARN,
            f"openai {installed} is untested: newer than {tested}, the newest release Ferryman was tested with",
            f"it is likely fine; if calls misbehave, pin it: pip install 'openai=={tested}'",
            details,
        )
    return Check(name, OK, f"openai {installed}, the release Ferryman was tested with", "", details)


def _upper(requirement: str | None) -> str:
    """The upper bounds of a requirement (``<4`` of ``>=3.50,<4``), to keep in an upgrade hint."""
    clauses = (part.strip() for part in (requirement or "").split(","))
    return ",".join(c for c in clauses if c.startswith("<"))


# -- the price table --------------------------------------------------------------------------


def check_prices(settings: Settings, today: dt.date) -> list[Check]:
    """The shipped price table's age, and the ``pricing_file``'s (readable, and how old)."""
    shipped = catalogue.price_table().get("_source") or {}
    found = [_age("prices", "the shipped price table (data/prices.json)", shipped.get("as_of"), today)]
    if settings.pricing_file is not None:
        found.append(_pricing_file(Path(settings.pricing_file), today))
    return found


def _pricing_file(path: Path, today: dt.date) -> Check:
    from ferryman.pricing import PriceTable

    name = "prices:file"
    try:
        PriceTable.default().with_overrides(path)  # what the pipeline would load
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return Check(name, FAIL, f"pricing_file {path} cannot be read: {reason}", "fix pricing_file or unset it")
    except (ValueError, AttributeError) as error:  # bad JSON, or not the price table's shape
        return Check(
            name,
            FAIL,
            f"pricing_file {path} is not a price table: {str(error)[:200]}",
            'the format is data/prices.json\'s: {"_source": {"as_of": "YYYY-MM-DD"}, "models": {…}}',
        )
    source = data.get("_source") if isinstance(data, dict) else None
    as_of = source.get("as_of") if isinstance(source, dict) else None
    if catalogue.parse_date(as_of) is None:
        return Check(
            name,
            WARN,
            f"pricing_file {path} has no _source.as_of date: its age is unknown",
            'add "_source": {"as_of": "YYYY-MM-DD"} with the day its prices were read',
            {"path": str(path)},
        )
    return _age(name, f"pricing_file {path}", as_of, today)


def _age(name: str, what: str, as_of: Any, today: dt.date) -> Check:
    dated = catalogue.parse_date(as_of)
    if dated is None:
        return Check(name, WARN, f"{what} has no as_of date: its age is unknown", "", {"as_of": as_of})
    days = (today - dated).days
    details = {"as_of": dated.isoformat(), "age_days": days, "max_age_days": PRICE_MAX_AGE_DAYS}
    if days > PRICE_MAX_AGE_DAYS:
        return Check(
            name,
            WARN,
            f"{what} is {days} days old (as of {dated.isoformat()}): costs and budgets may be off",
            "upgrade Ferryman for a newer table, or put current prices in pricing_file (same format)",
            details,
        )
    return Check(name, OK, f"{what} is {max(days, 0)} days old (as of {dated.isoformat()})", "", details)


# -- file permissions -------------------------------------------------------------------------

_GROUP_OTHER = stat.S_IRWXG | stat.S_IRWXO
_GROUP_OTHER_WRITE = stat.S_IWGRP | stat.S_IWOTH


def secret_files(settings: Settings) -> list[Path]:
    """The files named by the settings' ``file:`` secret references."""
    references = [ref for d in settings.deployments for ref in d.api_keys]
    references += [settings.gateway.admin_key, settings.audit.checkpoint_key or ""]
    return [Path(ref[5:]).expanduser() for ref in references if ref.startswith("file:") and ref[5:]]


def check_permissions(settings: Settings) -> Check:
    """The data directory 0700 and every file Ferryman keeps (database, ``admin.key``,
    ``audit.key``, the tokenizer cache, secret files the settings name) 0600, as
    :mod:`ferryman.files` makes them: reported as found, never changed."""
    from ferryman.doctor_store import database_url, sqlite_path

    name = "permissions"
    if os.name == "nt":
        return Check(name, SKIP, "not checked on Windows (no POSIX modes)")
    data_dir = default_data_dir()
    folders: list[Path] = []
    files: list[Path] = []
    if data_dir.is_dir():
        folders.append(data_dir)
        for entry in sorted(data_dir.iterdir()):
            (folders if entry.is_dir() else files).append(entry)
    database = sqlite_path(database_url(settings))
    if database is not None:
        files += [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    files += secret_files(settings)
    seen: dict[str, str] = {}
    problems: list[tuple[Status, Path, str]] = []
    for path, is_dir in [(p, True) for p in folders] + [(p, False) for p in files]:
        if str(path) in seen:
            continue
        try:
            found = path.stat()
        except OSError:
            continue  # not there (yet): nothing to protect
        if not (stat.S_ISDIR(found.st_mode) if is_dir else stat.S_ISREG(found.st_mode)):
            continue
        mode = stat.S_IMODE(found.st_mode)
        seen[str(path)] = f"{mode:04o}"
        problems += [(status, path, why) for status, why in _mode_problems(found, mode, is_dir)]
    details: dict[str, Any] = {
        "data_dir": str(data_dir),
        "modes": seen,
        "problems": [{"path": str(p), "status": s, "problem": why} for s, p, why in problems],
    }
    if not seen:
        return Check(name, SKIP, f"no data directory yet at {data_dir}: nothing to check", "", details)
    if not problems:
        where = f", the data directory {data_dir} among them" if folders else ""
        paths = f"{len(seen)} path{'' if len(seen) == 1 else 's'}"
        return Check(name, OK, f"{paths} private (0700 folders, 0600 files){where}", "", details)
    status = FAIL if any(s == FAIL for s, _, _ in problems) else WARN
    shown = "; ".join(f"{p} {why}" for _, p, why in problems[:4])
    more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
    return Check(name, status, shown + more, _chmod_hint(problems), details)


def _mode_problems(found: os.stat_result, mode: int, is_dir: bool) -> list[tuple[Status, str]]:
    out: list[tuple[Status, str]] = []
    if is_dir and mode & _GROUP_OTHER_WRITE:
        out.append((FAIL, f"is {mode:04o}: others can add, replace or delete files in it"))
    elif is_dir and mode & _GROUP_OTHER:
        out.append((WARN, f"is {mode:04o}: others can list it (files Ferryman makes there are 0600)"))
    elif not is_dir and mode & _GROUP_OTHER:
        out.append((FAIL, f"is {mode:04o}: group or others can {'write' if mode & _GROUP_OTHER_WRITE else 'read'} it"))
    geteuid = getattr(os, "geteuid", None)
    if geteuid is not None and found.st_uid != geteuid():
        out.append((WARN, f"belongs to uid {found.st_uid}, not to this user ({geteuid()})"))
    return out


def _chmod_hint(problems: list[tuple[Status, Path, str]]) -> str:
    """The commands that fix the modes found (a path's owner is the administrator's to change)."""
    modes = [path for _, path, why in problems if why.startswith("is ")]
    folders = sorted({shlex.quote(str(p)) for p in modes if p.is_dir()})
    files = sorted({shlex.quote(str(p)) for p in modes if not p.is_dir()})
    commands = [f"chmod 700 {' '.join(folders)}"] if folders else []
    commands += [f"chmod 600 {' '.join(files)}"] if files else []
    if any(why.startswith("belongs") for _, _, why in problems):
        commands.append("chown them to the user Ferryman runs as")
    return "; ".join(commands)


# -- sharing ----------------------------------------------------------------------------------


def check_sharing(settings: Settings) -> Check:
    """Settings that mean several processes: do they have the shared state that needs?

    ``store.shared`` without PostgreSQL, Redis and one checkpoint key is refused when the settings
    load (the validator in :mod:`ferryman.config`), so doctor never sees it; ``gateway.workers``
    has no such rule, because SQLite serves the workers of one host, but without Redis each worker
    keeps its own per-key limits and pacing buckets in memory."""
    name = "sharing"
    store, workers = settings.store, settings.gateway.workers
    url = store.url or "sqlite"
    details = {
        "workers": workers,
        "shared": store.shared,
        "database": url.split(":", 1)[0].split("+", 1)[0],
        "redis": bool(store.redis_url),
    }
    if store.shared:
        return Check(name, OK, "store.shared: PostgreSQL, Redis and one audit key, as it needs", "", details)
    if workers > 1 and not store.redis_url:
        return Check(
            name,
            WARN,
            f"gateway.workers = {workers} without store.redis_url: each worker keeps its own rate limits and "
            f"pacing, so a key gets {workers} times its rpm/tpm and the upstream is paced {workers} times over",
            "set store.redis_url so the workers share them (several hosts: PostgreSQL and store.shared too)",
            details,
        )
    if workers > 1:
        where = "one SQLite file: fine on one host" if url.startswith("sqlite") else "the database"
        return Check(name, OK, f"{workers} workers share Redis and {where}", "", details)
    return Check(name, OK, "one process: nothing to share (gateway.workers = 1, store.shared = false)", "", details)
