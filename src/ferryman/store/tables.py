"""The tables, in SQLAlchemy Core. Changed only together with a migration in ``migrations/``."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
)

metadata = MetaData()

USD = Numeric(20, 10)

# One append-only, hash-chained record per call (see pipeline/audit.py).
audit = Table(
    "audit",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),  # unix time, seconds
    Column("request_id", String(64)),
    Column("principal", String(128), nullable=False),
    Column("upstream", String(128)),
    Column("model", String(128)),
    Column("endpoint", String(128), nullable=False),
    Column("status", Integer, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("input_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("output_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("cost_usd", USD, nullable=False, default=0),
    Column("cache", String(16), nullable=False),
    Column("tags", JSON, nullable=False),
    Column("error", Text),
    Column("request_body", Text),  # none | redacted | full, per audit.bodies
    Column("response_body", Text),
    # What the report's advice needs (migration 0008, pipeline/audit_advice.py); NULL in older records,
    # and then not hashed (audit/chain.py ADDED). Before prev_hash and hash, which the writer puts last.
    Column("output_cap", Integer),
    Column("service_tier", String(32)),
    Column("via_batch", Boolean),
    Column("request_fp", String(32)),  # keyed fingerprints (HMAC), never the body
    Column("deterministic", Boolean),
    Column("prefix_fp", String(32)),
    Column("prefix_tokens", Integer),
    Column("ratelimit", JSON(none_as_null=True)),  # {limit,remaining}_{requests,tokens}: ints
    Column("source", String(16)),  # sdk | gateway | run | run-batch-api
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("audit_ts", audit.c.ts)

# The chain's anchors: a signed checkpoint of the head (and of the point prune cut at).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # head | prune
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("signature", String(128), nullable=False),
)

# The write-ahead records of streams being delivered now, one row each (see audit/inflight.py):
# written before a stream's first byte reaches its caller, its progress kept up to date, deleted
# in the transaction that appends the stream's chain record. Mutable and outside the chain: a
# row whose owner died is closed into an ``interrupted`` chain record by the next instance to
# find it (its lease ran out, or its process is known to be gone).
audit_open = Table(
    "audit_open",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("instance", String(256), nullable=False),  # the owner: hostname:pid, or the name it was given
    Column("process", String(128)),  # host key:pid:start time, where the owner's liveness can be checked
    Column("started", Float, nullable=False),  # unix seconds
    Column("updated", Float, nullable=False),  # the progress below was counted then
    Column("lease_until", Float, nullable=False),  # renewed by the owner while it lives
    Column("record", JSON, nullable=False),  # the chain record's fields known at the start, bodies rendered
    Column("bytes", BigInteger, nullable=False),  # forwarded to the caller so far
    Column("events", Integer, nullable=False),
    Column("progress", JSON),  # content counted, usage and model seen so far
)
Index("audit_open_lease", audit_open.c.lease_until)

# Spend per budget scope and period window; reserved is held by calls in flight.
budget_counters = Table(
    "budget_counters",
    metadata,
    Column("scope", String(256), primary_key=True),
    Column("window", String(16), primary_key=True),  # 2026-11-25 | 2026-11
    Column("spent_usd", USD, nullable=False, default=0),
    Column("reserved_usd", USD, nullable=False, default=0),
    Column("updated", Float, nullable=False),
)

# The reservations behind ``reserved_usd``: one per call in flight, with the instance holding it
# and a lease that instance renews while it lives (see pipeline/budget_stores.py). A lease that
# runs out (its instance crashed) is released by whichever instance finds it.
budget_reservations = Table(
    "budget_reservations",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("instance", String(256), nullable=False),
    Column("amount_usd", USD, nullable=False),
    Column("lease_until", Float, nullable=False),  # unix seconds; renewed up to the deadline
    Column("deadline", Float, nullable=False),  # the call cannot outlive this
    Column("created", Float, nullable=False),
)
Index("budget_reservations_lease", budget_reservations.c.lease_until)

# Which counters each reservation holds its amount on.
budget_holds = Table(
    "budget_holds",
    metadata,
    Column("reservation_id", String(32), primary_key=True),
    Column("scope", String(256), primary_key=True),
    Column("window", String(16), primary_key=True),
)
Index("budget_holds_counter", budget_holds.c.scope, budget_holds.c.window)

# Cached replies (exact match on the normalised request).
cache_entries = Table(
    "cache_entries",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("status", Integer, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("model", String(128)),
)
Index("cache_expires", cache_entries.c.expires)

# Virtual keys of the gateway: the secret itself is never stored, only its SHA-256.
virtual_keys = Table(
    "virtual_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # key_…: safe to log, the principal's id
    Column("name", String(128), nullable=False),
    Column("team", String(128)),
    Column("hash", String(64), nullable=False, unique=True),  # sha256 hex of the fm-… secret
    Column("hint", String(16), nullable=False),  # fm-…last four, to tell keys apart in lists
    Column("created", Float, nullable=False),
    Column("expires", Float),  # unix seconds; None: never
    Column("revoked", Float),  # unix seconds; None: live
    Column("rotated", Float),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_usd", USD),
    Column("budget_period", String(8)),  # day | month
    Column("models", JSON),  # allowed models (globs); None: all
    Column("tags", JSON),  # billing tags {name: value} that tag: budget rules count; None: none
    Column("metadata", JSON, nullable=False),
)
# A name names one live key (``keys show team-a``); a revoked key keeps its name, which is free again.
_LIVE = virtual_keys.c.revoked.is_(None)
# The index is partial on both dialects (migration 0006 says so); only SQLite's clause is named here, so
# building a client never imports the PostgreSQL dialect (30 ms of start-up) just to read this line.
Index("virtual_keys_live_name", virtual_keys.c.name, unique=True, sqlite_where=_LIVE)

# Teams: limits and budgets shared by every key of the team.
teams = Table(
    "teams",
    metadata,
    Column("name", String(128), primary_key=True),  # unique by being the key
    Column("created", Float, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_usd", USD),
    Column("budget_period", String(8)),
    Column("tags", JSON),  # billing tags every key of the team carries (they win over a key's own)
)

# Which key created which stored object (file, batch, fine-tuning job, response): a key sees its own.
owned_objects = Table(
    "owned_objects",
    metadata,
    Column("id", String(128), primary_key=True),  # file-…, batch_…, ftjob-…, resp_…
    Column("kind", String(16), nullable=False),
    Column("owner", String(32), nullable=False),  # virtual_keys.id
    Column("created", Float, nullable=False),
)
Index("owned_objects_owner", owned_objects.c.owner, owned_objects.c.kind)

# The shutdown dates each upstream reported on ``GET /v1/models`` (ferryman.lifecycle_store): they
# win over the shipped table, and ``fetched`` says how old they are.
model_lifecycle = Table(
    "model_lifecycle",
    metadata,
    Column("upstream", String(128), primary_key=True),  # the deployment's name
    Column("model", String(256), primary_key=True),
    Column("shutdown_date", String(10)),  # YYYY-MM-DD; None: the upstream names no date
    Column("fetched", Float, nullable=False),  # unix seconds
)
