"""``ferryman keys …`` and ``ferryman teams …``: one live key per name, keys found by what a person
types, listings people and programs can read.

Each command runs as a real subprocess (``python -m ferryman.cli``, as tests/gateway/test_keys.py
does) on a real store: a SQLite file under a temporary ``FERRYMAN_DATA_DIR`` and, where the
server answers, a PostgreSQL database of the test's own. Independent commands run at once, to keep
the suite fast; the rows they act on are made (and their ids fixed) through the store first.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, update

from ferryman.config import Settings
from ferryman.gateway.key_format import decimal_text, iso, money, when
from ferryman.gateway.key_rules import parse_budget
from ferryman.gateway.keys import KeyStore
from ferryman.store import Store, open_store
from ferryman.store.tables import audit, virtual_keys
from tests.leak_guard import find_secrets

ENV = {"COLUMNS": "250", "NO_COLOR": "1"}
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
TABLE_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\dZ")
NOT_FOUND = "(by id, id prefix or name); `ferryman keys list` shows them"


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from nowhere but a temporary data directory (inherited by the subprocesses)."""
    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("FERRYMAN_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path / "data"


def start(url: str, *args: str, columns: str = "250") -> subprocess.Popen[str]:
    """``ferryman ARGS --store URL``, started, not waited for."""
    return subprocess.Popen(
        [sys.executable, "-m", "ferryman.cli", *args, "--store", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **ENV, "COLUMNS": columns},
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=60)
    return process.returncode, out, err


def cli(url: str, *args: str, columns: str = "250") -> tuple[int, str, str]:
    return finish(start(url, *args, columns=columns))


def at_once(url: str, commands: dict[str, tuple[str, ...]]) -> dict[str, tuple[int, str, str]]:
    """Every command started together, then each one's (exit code, stdout, stderr)."""
    started = {name: start(url, *args) for name, args in commands.items()}
    return {name: finish(process) for name, process in started.items()}


def opened(url: str) -> tuple[Store, KeyStore]:
    store = open_store(Settings(), url=url)
    return store, KeyStore(store)


def run(store: Store, coroutine: Any) -> Any:
    """One KeyStore call, as the CLI makes it (its own event loop; the store's threads do the work)."""
    return asyncio.run(coroutine)


def set_id(store: Store, old: str, new: str) -> None:
    with store.engine.begin() as connection:
        connection.execute(update(virtual_keys).where(virtual_keys.c.id == old).values(id=new))


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# -- one live key per name ---------------------------------------------------------------------


def test_a_second_key_or_team_of_one_name_is_refused(store_url, data_dir):
    """keys create of a live key's name exits 1 with one line naming the key that has it (and
    prints no secret); once that key is revoked the name is free. teams create of a team's name
    exits 1 too, while teams set still changes it."""
    code, first_secret, err = cli(store_url, "keys", "create", "--name", "team-a")
    assert code == 0, err
    first_id = re.search(r"key_[0-9a-f]{20}", err).group(0)

    code, out, err = cli(store_url, "keys", "create", "--name", "team-a", "--budget", "5/day")
    assert (code, out) == (1, ""), err
    assert error_line(err) == (
        f"error: a key named 'team-a' already exists ({first_id}); use another --name or revoke it first"
    )

    assert cli(store_url, "keys", "revoke", "team-a")[0] == 0
    code, second_secret, err = cli(store_url, "keys", "create", "--name", "team-a")
    assert code == 0, err
    code, out, err = cli(store_url, "keys", "list", "--all", "--json")
    assert code == 0, err
    listed = {k["id"]: (k["name"], k["state"]) for k in json.loads(out)}
    assert listed.pop(first_id) == ("team-a", "revoked") and list(listed.values()) == [("team-a", "active")]
    assert first_secret.strip() not in out and second_secret.strip() not in out and not find_secrets(out)

    assert cli(store_url, "teams", "create", "alpha", "--budget", "500/month")[0] == 0
    code, out, err = cli(store_url, "teams", "create", "alpha")
    assert code == 1, err
    assert error_line(err) == (
        "error: a team named 'alpha' already exists; use another name, or `ferryman teams set` to change it"
    )
    code, _, err = cli(store_url, "teams", "set", "alpha", "--rpm", "5")
    assert code == 0 and "rpm 5" in err, err
    code, out, err = cli(store_url, "teams", "list", "--json")
    assert code == 0, err
    assert [(t["name"], t["rpm"], t["budget"]) for t in json.loads(out)] == [("alpha", 5, None)]  # set: all at once


# -- finding a key -----------------------------------------------------------------------------


def test_a_key_is_found_by_id_id_prefix_or_name(store_url, data_dir):
    """Full id, 6+ hex digits of it (key_ optional, any case) and the name all find a key; a
    prefix two keys share, or a name one key has and a prefix of another's id, exits 1 listing
    both; too short a prefix and an unknown reference exit 1 saying how keys are named. A revoked
    key is still found by its name when no live key has it."""
    store, keys = opened(store_url)
    try:
        ids = {}
        for name, new_id in (
            ("alpha-key", "key_abcdef0000000000aaaa"),
            ("beta-key", "key_abcdef1111111111bbbb"),
            ("c0ffee", "key_123456000000000000cc"),  # a name that is also a prefix of the next id
            ("coffee-id", "key_c0ffee000000000000dd"),
            ("gone", "key_99999900000000000000"),
        ):
            _, record = run(store, keys.create(name))
            set_id(store, record.id, new_id)
            ids[name] = new_id
        run(store, keys.revoke(ids["gone"]))
        before = hashes(store)
    finally:
        store.close()

    results = at_once(
        store_url,
        {
            "full id": ("keys", "show", ids["alpha-key"], "--json"),
            "prefix": ("keys", "show", "abcdef0", "--json"),
            "prefix with key_": ("keys", "show", "key_abcdef1", "--json"),
            "upper case": ("keys", "show", "ABCDEF11", "--json"),
            "name": ("keys", "show", "beta-key", "--json"),
            "revoked name": ("keys", "show", "gone", "--json"),
            "shared prefix": ("keys", "show", "abcdef"),
            "name and prefix": ("keys", "revoke", "c0ffee"),
            "too short": ("keys", "show", "abcde"),
            "unknown": ("keys", "rotate", "nobody"),
            "rotate": ("keys", "rotate", "abcdef00"),
            "tags": ("keys", "tags", "coffee-id", "project=apollo"),
        },
    )
    found = {name: results[name] for name in ("full id", "prefix", "prefix with key_", "upper case", "name")}
    found["revoked name"] = results["revoked name"]
    assert {name: code for name, (code, _, _) in found.items()} == dict.fromkeys(found, 0), found
    assert {name: json.loads(out)["id"] for name, (_, out, _) in found.items()} == {
        "full id": ids["alpha-key"],
        "prefix": ids["alpha-key"],
        "prefix with key_": ids["beta-key"],
        "upper case": ids["beta-key"],
        "name": ids["beta-key"],
        "revoked name": ids["gone"],
    }
    assert json.loads(results["revoked name"][1])["state"] == "revoked"

    code, _, err = results["shared prefix"]
    assert code == 1 and "'abcdef' fits 2 keys" in err and "Traceback" not in err
    assert ids["alpha-key"] in err and ids["beta-key"] in err and "alpha-key (active)" in err
    code, _, err = results["name and prefix"]
    assert code == 1 and "'c0ffee' fits 2 keys" in err and ids["c0ffee"] in err and ids["coffee-id"] in err
    for name in ("too short", "unknown"):
        code, out, err = results[name]
        assert (code, out) == (1, ""), err
        ref = "abcde" if name == "too short" else "nobody"
        assert error_line(err) == f"error: no key {ref!r} {NOT_FOUND}"

    code, out, err = results["rotate"]
    assert code == 0 and out.strip().startswith("fm-") and ids["alpha-key"] in err, err
    code, _, err = results["tags"]
    assert code == 0 and ids["coffee-id"] in err and "project=apollo" in err, err
    code, out, err = cli(store_url, "keys", "list", "--all", "--json")
    assert code == 0, err
    after = {k["id"]: k for k in json.loads(out)}
    assert [k["state"] for k in after.values()].count("revoked") == 1  # the ambiguous revoke revoked nothing
    store, _ = opened(store_url)
    try:
        now = hashes(store)
    finally:
        store.close()
    assert [i for i in now if now[i] != before[i]] == [ids["alpha-key"]]  # only the one named rotated


def hashes(store: Store) -> dict[str, str]:
    with store.engine.connect() as connection:
        return {row.id: row.hash for row in connection.execute(select(virtual_keys.c.id, virtual_keys.c.hash))}


# -- listings ----------------------------------------------------------------------------------


def test_listings_show_dates_and_money_as_people_write_them(data_dir):
    """keys list, keys show and teams list: UTC times to the minute, $50.00/month budgets, a tiny
    spend in four significant digits, the id whole even in a narrow terminal; --json parses, with
    ISO 8601 times and exact decimal strings, and holds no secret and no hash."""
    url = f"sqlite:///{data_dir.parent / 'keys.db'}"
    store, keys = opened(url)
    try:
        secret, record = run(
            store,
            keys.create("team-a", team="alpha", budget=parse_budget("50/month"), rpm=100, expires_in_s=30 * 86400.0),
        )
        run(store, keys.set_team("alpha", budget=parse_budget("500/month"), tags={"project": "apollo"}))
        spent_at = time.time()
        with store.engine.begin() as connection:
            for cost in ("0.01", "0.0023"):  # the spend the audit holds: 0.0123
                connection.execute(insert(audit).values(audit_row(record.id, spent_at, cost)))
    finally:
        store.close()

    results = at_once(
        url,
        {
            "list": ("keys", "list"),
            "list json": ("keys", "list", "--json"),
            "show": ("keys", "show", "team-a"),
            "show json": ("keys", "show", "team-a", "--json"),
            "teams": ("teams", "list"),
            "teams json": ("teams", "list", "--json"),
        },
    )
    assert {name: code for name, (code, _, _) in results.items()} == dict.fromkeys(results, 0), results
    everything = "".join(out + err for _, out, err in results.values())
    assert secret not in everything and not find_secrets(everything) and record.id in everything

    table = results["list"][1]
    (row,) = [line for line in table.splitlines() if record.id in line]
    cells = [c.strip() for c in row.strip("│ \n").split("│")]
    assert cells[:8] == [record.id, "team-a", "alpha", record.hint, "active", "$50.00/month", "100", "-"]
    assert cells[10:12] == ["2", "$0.0123"] and TABLE_TIME.fullmatch(cells[12]) and TABLE_TIME.fullmatch(cells[13])
    assert not re.search(r"\d{9,}\.\d", everything)  # no epoch floats anywhere
    narrow = cli(url, "keys", "list", columns="60")[1]
    assert record.id in narrow  # piped: as wide as it needs, whatever COLUMNS says

    (listed,) = json.loads(results["list json"][1])
    assert listed == json.loads(results["show json"][1])
    assert listed["budget"] == {"usd": "50", "period": "month"} and listed["usage"]["cost_usd"] == "0.0123"
    assert listed["usage"]["calls"] == 2 and listed["usage"]["last_used"] == iso(spent_at)
    assert all(ISO.fullmatch(listed[k]) for k in ("created", "expires")) and listed["revoked"] is None
    assert listed["created"] == iso(record.created) and listed["hint"] == record.hint
    assert not {"hash", "key", "secret"} & set(listed)

    lines = dict(line.split(": ", 1) for line in results["show"][1].splitlines())
    assert lines["budget"] == "$50.00/month" and lines["spent"] == "$0.0123" and lines["calls"] == "2"
    assert lines["created"] == when(record.created) and lines["last used"] == when(spent_at)
    assert TABLE_TIME.fullmatch(lines["expires"])

    (team_row,) = [line for line in results["teams"][1].splitlines() if "alpha" in line]
    team_cells = [c.strip() for c in team_row.strip("│ \n").split("│")]
    assert team_cells[:5] == ["alpha", "$500.00/month", "-", "-", "project=apollo"]
    (team,) = json.loads(results["teams json"][1])
    assert team["budget"] == {"usd": "500", "period": "month"} and team["tags"] == {"project": "apollo"}
    assert ISO.fullmatch(team["created"])


def audit_row(principal: str, ts: float, cost: str) -> dict[str, Any]:
    return {
        "ts": ts,
        "principal": principal,
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "attempts": 1,
        "latency_ms": 1.0,
        "cost_usd": Decimal(cost),
        "cache": "miss",
        "tags": {},
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }


@pytest.mark.parametrize(
    ("amount", "shown"),
    [
        ("0", "$0.00"),
        ("0E-10", "$0.00"),
        ("1", "$1.00"),
        ("50.0000000000", "$50.00"),
        ("1234.5", "$1,234.50"),
        ("2.005", "$2.01"),  # from a dollar: cents, rounded half up
        ("0.99996", "$1.00"),
        ("0.5", "$0.50"),  # below a dollar: four significant digits, at least two decimals
        ("0.0123", "$0.0123"),
        ("0.123456", "$0.1235"),
        ("0.000123", "$0.000123"),
        ("0.0000000001", "$0.0000000001"),  # the store's smallest amount is not $0.00
    ],
)
def test_money_reads_as_people_write_it(amount, shown):
    assert money(Decimal(amount)) == shown


def test_json_forms_are_exact():
    exact = [decimal_text(v) for v in ("50.0000000000", "0.0123000", "0E-10", "1234.5")]
    assert exact == ["50", "0.0123", "0", "1234.5"]
    assert iso(1796347200.75) == "2026-12-04T01:20:00Z" and when(1796347200.75) == "2026-12-04 01:20Z"
    assert iso(None) is None and when(None) == "-"
