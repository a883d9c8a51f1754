"""Virtual keys: ``fm-…`` secrets handed to callers, stored only as a SHA-256 hash.

A key is 32 random bytes (``secrets.token_urlsafe``), so a plain SHA-256 is as good as a slow
hash here: nothing about it can be guessed. A presented key is looked up by its hash and the
stored hash compared with ``hmac.compare_digest``. Each key has an id (``key_…``, safe to log:
it is the caller's principal everywhere), a name, an optional team, limits (RPM, TPM), a budget
(USD per day or month), allowed models (globs), billing tags, an expiry, and a revocation time.

Billing tags (``project=apollo``) are what ``tag:`` budget rules count: a key bills to its own
tags, its team's tags and ``team=<its team>``, never to what a caller's ``ferryman-tags`` header
says (a header adds reporting tags only). Where a key's tag and its team's disagree, the team's
wins: one key cannot be configured out of its team's budget.

A live key's name is unique (a partial unique index, migration 0006) and so is a team's (its
primary key): two creates of one name, even at the same moment, make one key and refuse the
other with :class:`NameTaken`. :meth:`KeyStore.find` is the one place a key named by a person
(CLI argument, admin API path) is resolved: its full id, a unique prefix of its id (six or more
hex digits, with or without ``key_``) or its name (the rules: :mod:`ferryman.gateway.key_lookup`).

What each field may hold is checked in :mod:`ferryman.gateway.key_rules`. :class:`KeyStore` is
the table's one reader and writer (the CLI and the admin API both use it);
:class:`KeyCache` keeps lookups for ``ttl_s`` (default 0.5 s) so a revocation on any instance
takes effect everywhere within that time while the hot path stays off the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ferryman.gateway.key_lookup import KeyAmbiguous, NameTaken, ensure_team, matching_rows
from ferryman.gateway.key_rules import check_limit, check_name, check_tags
from ferryman.store import Store
from ferryman.store.tables import audit, teams, virtual_keys

PREFIX = "fm-"


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", errors="surrogateescape")).hexdigest()


def hint(secret: str) -> str:
    return f"{PREFIX}…{secret[-4:]}"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    name: str
    hint: str
    created: float
    team: str | None = None
    expires: float | None = None
    revoked: float | None = None
    rotated: float | None = None
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    models: tuple[str, ...] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def public(self) -> dict[str, Any]:
        """As the admin API shows it (never a secret: only the hint)."""
        out = asdict(self)
        out["models"] = list(self.models) if self.models is not None else None
        out["budget_usd"] = str(self.budget_usd) if self.budget_usd is not None else None
        out["state"] = self.state(time.time())
        return out


@dataclass(frozen=True)
class TeamRecord:
    name: str
    created: float
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: Decimal | None = None
    budget_period: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        out = asdict(self)
        out["budget_usd"] = str(self.budget_usd) if self.budget_usd is not None else None
        return out


def _key(row: Any, stored_hash: bool = False) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        id=m["id"],
        name=m["name"],
        hint=m["hint"],
        created=m["created"],
        team=m["team"],
        expires=m["expires"],
        revoked=m["revoked"],
        rotated=m["rotated"],
        rpm=m["rpm"],
        tpm=m["tpm"],
        budget_usd=Decimal(m["budget_usd"]) if m["budget_usd"] is not None else None,
        budget_period=m["budget_period"],
        models=tuple(m["models"]) if m["models"] is not None else None,
        tags=dict(m["tags"] or {}),
        metadata=dict(m["metadata"] or {}),
    )


def _team(row: Any) -> TeamRecord:
    m = row._mapping
    return TeamRecord(
        name=m["name"],
        created=m["created"],
        rpm=m["rpm"],
        tpm=m["tpm"],
        budget_usd=Decimal(m["budget_usd"]) if m["budget_usd"] is not None else None,
        budget_period=m["budget_period"],
        tags=dict(m["tags"] or {}),
    )


def billing_tags(key: KeyRecord, team: TeamRecord | None) -> tuple[tuple[str, str], ...]:
    """What ``tag:`` budget rules count for ``key``: its tags, its team's (which win), and
    ``team=<its team>``."""
    tags = dict(key.tags)
    if team is not None:
        tags.update(team.tags)
    if key.team:
        tags["team"] = key.team
    return tuple(sorted(tags.items()))


class KeyError_(LookupError):
    """No such key (by id, id prefix or name)."""


class KeyStore:
    """Create, find, rotate and revoke keys; teams; usage per key from the audit table."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    # -- writing ------------------------------------------------------------------------------

    async def create(
        self,
        name: str,
        *,
        team: str | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: tuple[Decimal, str] | None = None,
        models: list[str] | None = None,
        tags: dict[str, str] | None = None,
        expires_in_s: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: returns its secret (shown once, never stored) and its record."""
        name = check_name(name)
        checked_tags = check_tags(tags)
        team = check_name(team, "team") if team is not None and team.strip() else None
        for label, value in (("rpm", rpm), ("tpm", tpm)):
            check_limit(label, value)
        secret = new_secret()
        now = self.clock()
        values = {
            "id": "key_" + uuid.uuid4().hex[:20],
            "name": name,
            "team": team,
            "hash": digest(secret),
            "hint": hint(secret),
            "created": now,
            "expires": now + expires_in_s if expires_in_s else None,
            "revoked": None,
            "rotated": None,
            "rpm": rpm,
            "tpm": tpm,
            "budget_usd": budget[0] if budget else None,
            "budget_period": budget[1] if budget else None,
            "models": [m.strip() for m in models if m.strip()] if models else None,
            "tags": checked_tags,
            "metadata": metadata or {},
        }

        def write(conn: Connection) -> None:
            conn.execute(insert(virtual_keys).values(**values))  # first: a taken name fails before anything else
            if team is not None:
                ensure_team(conn, team, now)

        try:
            await self.store.write(write)
        except IntegrityError:
            holder = await self._live_named(name)
            if holder is None:
                raise
            raise NameTaken("key", name, holder.id) from None
        record = await self.get(str(values["id"]))
        return secret, record

    async def rotate(self, key_id: str) -> tuple[str, KeyRecord]:
        """A new secret for the same key (limits, budget, usage and objects stay); the old one
        stops working at once."""
        secret = new_secret()
        now = self.clock()
        changed = await self._update(key_id, hash=digest(secret), hint=hint(secret), rotated=now)
        if not changed:
            raise KeyError_(key_id)
        return secret, await self.get(key_id)

    async def revoke(self, key_id: str) -> KeyRecord:
        if not await self._update(key_id, revoked=self.clock(), only_live=True):
            record = await self.get(key_id)  # already revoked: the same answer, not an error
            return record
        return await self.get(key_id)

    async def set_limits(self, key_id: str, **values: Any) -> KeyRecord:
        allowed = {"rpm", "tpm", "budget_usd", "budget_period", "models", "tags", "expires", "team", "name"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"unknown key fields: {sorted(unknown)}")
        if "tags" in values:
            values["tags"] = check_tags(values["tags"])
        if "name" in values:
            values["name"] = check_name(values["name"])
        try:
            if values and not await self._update(key_id, **values):
                raise KeyError_(key_id)
        except IntegrityError:
            holder = await self._live_named(values.get("name", ""))
            if holder is None:
                raise
            raise NameTaken("key", holder.name, holder.id) from None
        return await self.get(key_id)

    async def set_team(
        self,
        name: str,
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        budget: tuple[Decimal, str] | None = None,
        tags: dict[str, str] | None = None,
        new: bool = False,
    ) -> TeamRecord:
        """Sets all of a team's limits, budget and tags at once (what is left out: none); with
        ``new``, makes a team no other has the name of, else raises :class:`NameTaken`."""
        name = check_name(name, "team")
        now = self.clock()
        values = {
            "rpm": rpm,
            "tpm": tpm,
            "budget_usd": budget[0] if budget else None,
            "budget_period": budget[1] if budget else None,
            "tags": check_tags(tags),
        }

        def write(conn: Connection) -> None:
            if new:
                conn.execute(insert(teams).values(name=name, created=now, **values))
                return
            ensure_team(conn, name, now)
            conn.execute(update(teams).where(teams.c.name == name).values(**values))

        try:
            await self.store.write(write)
        except IntegrityError:
            if not new:
                raise
            raise NameTaken("team", name) from None
        team = await self.team(name)
        assert team is not None
        return team

    async def delete_team(self, name: str) -> bool:
        def write(conn: Connection) -> int:
            return conn.execute(delete(teams).where(teams.c.name == name)).rowcount

        return bool(await self.store.write(write))

    async def _update(self, key_id: str, only_live: bool = False, **values: Any) -> bool:
        def write(conn: Connection) -> int:
            query = update(virtual_keys).where(virtual_keys.c.id == key_id)
            if only_live:
                query = query.where(virtual_keys.c.revoked.is_(None))
            return conn.execute(query.values(**values)).rowcount

        return bool(await self.store.write(write))

    # -- reading ------------------------------------------------------------------------------

    async def get(self, key_id: str) -> KeyRecord:
        query = select(virtual_keys).where(virtual_keys.c.id == key_id)
        row = await self.store.read(lambda c: c.execute(query).first())
        if row is None:
            raise KeyError_(key_id)
        return _key(row)

    async def find(self, ref: str) -> KeyRecord:
        """The key ``ref`` names, the one way the CLI and the admin API resolve a person's words:
        its full id; else the live key of that name and the keys whose id starts with ``ref``
        (six or more hex digits, ``key_`` optional), which must be one key;
        else the revoked key of that name, if only one has it. :class:`KeyError_` when none
        fits, :class:`KeyAmbiguous` (listing them) when several do."""
        ref = ref.strip()
        rows = await self.store.read(lambda c: matching_rows(c, ref)) if ref else []
        if not rows:
            raise KeyError_(ref)
        if len(rows) > 1:
            raise KeyAmbiguous(ref, [_key(row) for row in rows])
        return _key(rows[0])

    async def _live_named(self, name: str) -> KeyRecord | None:
        query = select(virtual_keys).where(virtual_keys.c.name == name, virtual_keys.c.revoked.is_(None))
        row = await self.store.read(lambda c: c.execute(query).first())
        return _key(row) if row is not None else None

    async def all(self, include_revoked: bool = True) -> list[KeyRecord]:
        def read(c: Connection) -> list[Any]:
            query = select(virtual_keys).order_by(virtual_keys.c.created)
            if not include_revoked:
                query = query.where(virtual_keys.c.revoked.is_(None))
            return list(c.execute(query).all())

        return [_key(row) for row in await self.store.read(read)]

    async def team(self, name: str) -> TeamRecord | None:
        row = await self.store.read(lambda c: c.execute(select(teams).where(teams.c.name == name)).first())
        return _team(row) if row is not None else None

    async def teams(self) -> list[TeamRecord]:
        rows = await self.store.read(lambda c: list(c.execute(select(teams).order_by(teams.c.name)).all()))
        return [_team(row) for row in rows]

    async def authenticate(self, secret: str) -> tuple[KeyRecord, TeamRecord | None] | None:
        """The key whose hash matches (compared in constant time) and its team, or None."""
        presented = digest(secret)

        def read(c: Connection) -> tuple[Any, Any] | None:
            row = c.execute(select(virtual_keys).where(virtual_keys.c.hash == presented)).first()
            if row is None:
                return None
            team = None
            if row._mapping["team"] is not None:
                team = c.execute(select(teams).where(teams.c.name == row._mapping["team"])).first()
            return row, team

        found = await self.store.read(read)
        if found is None:
            hmac.compare_digest(presented, "0" * 64)  # the same work whether or not a key matched
            return None
        row, team = found
        if not hmac.compare_digest(presented, row._mapping["hash"]):
            return None
        return _key(row), (_team(team) if team is not None else None)

    async def usage(self, since: float | None = None) -> dict[str, dict[str, Any]]:
        """Calls, tokens and spend per key id (from the audit records)."""

        def read(c: Connection) -> list[Any]:
            query = select(
                audit.c.principal,
                func.count().label("calls"),
                func.coalesce(func.sum(audit.c.input_tokens), 0).label("input_tokens"),
                func.coalesce(func.sum(audit.c.output_tokens), 0).label("output_tokens"),
                func.coalesce(func.sum(audit.c.cost_usd), 0).label("cost_usd"),
                func.max(audit.c.ts).label("last_used"),
            ).group_by(audit.c.principal)
            if since is not None:
                query = query.where(audit.c.ts >= since)
            return list(c.execute(query).all())

        out: dict[str, dict[str, Any]] = {}
        for row in await self.store.read(read):
            m = row._mapping
            out[m["principal"]] = {
                "calls": int(m["calls"]),
                "input_tokens": int(m["input_tokens"]),
                "output_tokens": int(m["output_tokens"]),
                "cost_usd": str(Decimal(m["cost_usd"]).quantize(Decimal("1e-6"))),
                "last_used": m["last_used"],
            }
        return out


@dataclass
class _Cached:
    value: tuple[KeyRecord, TeamRecord | None] | None
    until: float


class KeyCache:
    """Recent lookups by hash, for ``ttl_s``: the database sees one lookup per key per window."""

    def __init__(self, keys: KeyStore, ttl_s: float = 0.5, max_entries: int = 10_000) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, _Cached] = {}
        self._inflight: dict[str, asyncio.Future[tuple[KeyRecord, TeamRecord | None] | None]] = {}

    async def lookup(self, secret: str) -> tuple[KeyRecord, TeamRecord | None] | None:
        presented = digest(secret)
        now = time.monotonic()
        cached = self._entries.get(presented)
        if cached is not None and cached.until > now:
            return cached.value
        waiting = self._inflight.get(presented)
        if waiting is not None:  # one database read per key, however many calls arrive at once
            return await asyncio.shield(waiting)
        future: asyncio.Future[tuple[KeyRecord, TeamRecord | None] | None] = asyncio.get_running_loop().create_future()
        self._inflight[presented] = future
        try:
            value = await self.keys.authenticate(secret)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._inflight.pop(presented, None)
        future.set_result(value)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[presented] = _Cached(value, now + self.ttl_s)
        return value

    def forget(self) -> None:
        """Drop every cached lookup (after a local revoke or rotate)."""
        self._entries.clear()
