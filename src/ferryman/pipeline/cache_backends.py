"""Where the cache stage keeps replies: the ``cache_entries`` table, or Redis.

Both backends hold the same :class:`Entry` and apply the same rules: an entry is served only
while ``expires`` is after ``now`` (the stage's clock, so tests can move time), and a write
that leaves more than ``max_entries`` entries first drops the expired ones, then the oldest.

- :class:`SQLBackend`: the ``cache_entries`` table through ``store.run`` (SQLite or
  PostgreSQL). The usage of the cached call rides in the ``headers`` JSON under the
  pseudo-header ``:usage`` (a name no HTTP header can have), so the table needs no column.
- :class:`RedisBackend`: one string per entry under ``ferryman:cache:<key>`` with a native TTL,
  plus a sorted set ``ferryman:cache:index`` (score: expiry) for ``max_entries``; one Lua
  script writes and evicts atomically, so several processes share one cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from sqlalchemy import Engine, delete, func, select

from ferryman.store import Store
from ferryman.store.tables import cache_entries

USAGE_HEADER = ":usage"  # where SQLBackend keeps an entry's usage inside the headers JSON
REDIS_PREFIX = "ferryman:cache:"


@dataclass
class Entry:
    status: int
    headers: dict[str, str]  # lower-case, what the caller gets back (content-type kept)
    body: bytes  # the whole body, or for a stream every event's bytes as forwarded
    stream: bool
    model: str | None
    created: float
    expires: float
    usage: dict[str, Any] | None = None  # the cached call's usage (hits report it, at no cost)


class Backend(Protocol):
    async def get(self, key: str, now: float) -> Entry | None: ...

    async def put(self, key: str, entry: Entry, max_entries: int, now: float) -> None: ...

    async def delete(self, key: str) -> None: ...


class SQLBackend:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.engine: Engine = store.engine

    async def get(self, key: str, now: float) -> Entry | None:
        return await self.store.run(self._get, key, now)

    async def put(self, key: str, entry: Entry, max_entries: int, now: float) -> None:
        await self.store.run(self._put, key, entry, max_entries, now)

    async def delete(self, key: str) -> None:
        await self.store.run(self._delete, key)

    def _get(self, key: str, now: float) -> Entry | None:
        t = cache_entries
        with self.engine.connect() as connection:
            row = connection.execute(select(t).where(t.c.key == key, t.c.expires > now)).first()
        if row is None:
            return None
        headers = dict(row.headers)
        usage = headers.pop(USAGE_HEADER, None)
        return Entry(
            status=row.status,
            headers={str(k): str(v) for k, v in headers.items()},
            body=bytes(row.body),
            stream=bool(row.stream),
            model=row.model,
            created=row.created,
            expires=row.expires,
            usage=usage if isinstance(usage, dict) else None,
        )

    def _put(self, key: str, entry: Entry, max_entries: int, now: float) -> None:
        t = cache_entries
        headers: dict[str, Any] = dict(entry.headers)
        if entry.usage is not None:
            headers[USAGE_HEADER] = entry.usage
        values = {
            "key": key,
            "created": entry.created,
            "expires": entry.expires,
            "status": entry.status,
            "headers": headers,
            "body": entry.body,
            "stream": entry.stream,
            "model": (entry.model or "")[:128] or None,
        }
        with self.engine.begin() as connection:
            dialect = connection.dialect.name
            if dialect in ("sqlite", "postgresql"):
                # The dialect's own insert, imported here: the PostgreSQL dialect's import alone
                # costs an SQLite user 35 ms at every start.
                from sqlalchemy.dialects import postgresql, sqlite

                insert = sqlite.insert(t) if dialect == "sqlite" else postgresql.insert(t)
                update = {name: value for name, value in values.items() if name != "key"}
                connection.execute(insert.values(**values).on_conflict_do_update(index_elements=[t.c.key], set_=update))
            else:  # pragma: no cover - other databases are not supported stores
                connection.execute(delete(t).where(t.c.key == key))
                connection.execute(t.insert().values(**values))
            connection.execute(delete(t).where(t.c.expires <= now))
            count = connection.execute(select(func.count()).select_from(t)).scalar_one()
            if count > max_entries:
                oldest = select(t.c.key).order_by(t.c.created, t.c.key).limit(count - max_entries)
                connection.execute(delete(t).where(t.c.key.in_(oldest.scalar_subquery())))

    def _delete(self, key: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(delete(cache_entries).where(cache_entries.c.key == key))


# KEYS: entry, index. ARGV: value, ttl_ms, expires, now, max_entries.
_PUT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
for _, name in ipairs(expired) do redis.call('DEL', name) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[2], extra)
  for i = 1, #oldest, 2 do redis.call('DEL', oldest[i]) end
end
if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return 1
"""


class RedisBackend:
    """Entries as ``<meta JSON>\\n<body>`` strings with a native TTL (orjson never writes a newline)."""

    def __init__(self, redis: Any, prefix: str = REDIS_PREFIX) -> None:
        self.redis = redis
        self.prefix = prefix
        self.index = prefix + "index"
        self._put_script = redis.register_script(_PUT)

    def name(self, key: str) -> str:
        return self.prefix + key

    async def get(self, key: str, now: float) -> Entry | None:
        value = await self.redis.get(self.name(key))
        if not value:
            return None
        meta_raw, _, body = bytes(value).partition(b"\n")
        meta = orjson.loads(meta_raw)
        if meta["expires"] <= now:
            return None
        return Entry(
            status=meta["status"],
            headers=meta["headers"],
            body=body,
            stream=meta["stream"],
            model=meta.get("model"),
            created=meta["created"],
            expires=meta["expires"],
            usage=meta.get("usage"),
        )

    async def put(self, key: str, entry: Entry, max_entries: int, now: float) -> None:
        meta = {
            "status": entry.status,
            "headers": entry.headers,
            "stream": entry.stream,
            "model": entry.model,
            "created": entry.created,
            "expires": entry.expires,
            "usage": entry.usage,
        }
        ttl_ms = max(1, math.ceil((entry.expires - now) * 1000))
        value = orjson.dumps(meta) + b"\n" + entry.body
        await self._put_script(keys=[self.name(key), self.index], args=[value, ttl_ms, entry.expires, now, max_entries])

    async def delete(self, key: str) -> None:
        await self.redis.delete(self.name(key))
        await self.redis.zrem(self.index, self.name(key))


__all__ = ["REDIS_PREFIX", "Backend", "Entry", "RedisBackend", "SQLBackend"]
