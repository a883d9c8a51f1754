"""Closing the write-ahead rows of streams whose gateway died, into ``interrupted`` records.

A stream's write-ahead row (``audit_open``, see :mod:`ferryman.audit.inflight`) outlives its
gateway when that gateway is killed mid-stream. :func:`recover` closes such rows into chain
records marked ``interrupted`` (:data:`INTERRUPTED`), each in one transaction with the deletion
of its row as it was read (:meth:`~ferryman.audit.chain.Chain.append_claimed`), so instances
recovering at once make one record per row, and a row its owner renewed meanwhile stays. Every
pipeline runs it when it is built (a gateway starting, an SDK client), and an instance with
streams of its own once a lease period. A row's owner is gone when

- its lease ran out (``lease_until``, renewed by a live owner at least every third of the lease):
  it stopped, or lost its database, for that long. This is the rule that holds across hosts
  sharing one PostgreSQL;
- it ran on this host, in this PID namespace, and its process no longer runs (pid and start
  time, read from ``/proc``): known at once, so a gateway restarted after a crash closes its
  predecessor's rows as it starts, with no wait for the lease. Where that cannot be checked (no
  ``/proc``, another host or container) only the lease counts; a process that cannot be told
  dead is taken as alive;
- it carried this instance's name, given to it because it is stable across restarts (not made
  up from the host and pid), and this instance is starting.

The interrupted record has what the stream delivered: the upstream's usage when it had come,
else an estimate (the prompt's tokens as counted while the stream ran, or for a stream cut in
its first second from the recorded request body; output tokens the larger of the content events
and content characters / 4, plus other events' data / 4), priced with the price table like the
account stage does. ``error`` says ``interrupted: …``, why, and whether the usage is an estimate,
as does the response body's ``stream`` note (``usage_estimated``); the delivered text itself is
not there, since only counts are written while a stream runs. Output delivered after the last
progress update (at most about a second of it) is not counted. A record of its own, rather than
a column, says so: the chain's hashed fields, and so every verifier, stay as they were.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select

from ferryman import redact
from ferryman.audit.chain import Chain
from ferryman.audit.record import error_text, render_json
from ferryman.pricing import PriceTable, TokenCounts
from ferryman.store.tables import audit_open
from ferryman.tokens import count_request_prompt_tokens

INTERRUPTED = "interrupted: the gateway stopped while the stream was being delivered"


# -- who owns a row, and whether it still lives ------------------------------------------------


@dataclass(frozen=True)
class Owner:
    instance: str  # hostname:pid, or the name the instance was given
    process: str | None  # host key:pid:start time, when this host's /proc tells
    named: bool = False  # the name was given (stable across restarts), not made up


@cache
def host_key() -> str | None:
    """This host, boot and PID namespace, hashed: rows whose ``process`` starts with it name a
    pid this process can check. None without ``/proc``."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return None
    return hashlib.sha256(f"{socket.gethostname()}\0{boot}\0{namespace}".encode()).hexdigest()[:16]


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) of a process, from ``/proc/PID/stat``."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name, in parentheses, may hold spaces
    return (fields[0], fields[19]) if len(fields) > 19 else None


def this_process(name: str | None = None) -> Owner:
    """The owner this process writes rows as: ``name`` when given, else ``hostname:pid``."""
    pid = os.getpid()
    host = host_key()
    stat = _stat(pid) if host is not None else None
    process = f"{host}:{pid}:{stat[1]}" if host is not None and stat is not None else None
    return Owner((name or f"{socket.gethostname()}:{pid}")[:256], process, named=bool(name))


def process_gone(process: str | None) -> bool:
    """True only when ``process`` ran here (this host, boot and PID namespace) and is known to
    run no more: no such pid, a zombie, or another process since (a different start time)."""
    host, _, rest = (process or "").partition(":")
    pid_text, _, started = rest.partition(":")
    if not host or host != host_key() or not pid_text.isdigit() or int(pid_text) <= 0:
        return False
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's), or the check is not allowed: alive, as far as known
        return False
    stat = _stat(pid)
    if stat is None:
        return False
    state, start = stat
    return state in ("Z", "X") or start != started


# -- closing the rows of owners that are gone ---------------------------------------------------


def _why_gone(row: Mapping[Any, Any], owner: Owner, now: float, startup: bool) -> str | None:
    if row["lease_until"] < now:
        return "its lease ran out"
    if row["process"] is not None and row["process"] == owner.process:
        return None  # this very process: alive
    if startup and owner.named and row["instance"] == owner.instance:
        return "its instance was started again"
    if process_gone(row["process"]):
        return "its process no longer runs"
    return None


def recover(
    chain: Chain,
    owner: Owner,
    prices: PriceTable,
    *,
    startup: bool = False,
    keep: frozenset[str] = frozenset(),
    now: float | None = None,
) -> int:
    """Close every write-ahead row whose owner is gone (but those in ``keep``: this process's
    streams) into an ``interrupted`` chain record; how many were closed. Blocking."""
    t = audit_open
    now = time.time() if now is None else now
    with chain.engine.connect() as conn:
        found = conn.execute(select(t.c.id, t.c.instance, t.c.process, t.c.lease_until)).mappings().all()
    closed = 0
    for seen in found:
        if seen["id"] in keep or _why_gone(seen, owner, now, startup) is None:
            continue
        with chain.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.id == seen["id"])).mappings().first()
        reason = _why_gone(row, owner, now, startup) if row is not None else None
        if row is None or reason is None:  # closed, or renewed, meanwhile
            continue
        if chain.append_claimed(interrupted_record(row, prices, reason), row["id"], row["lease_until"]) is not None:
            closed += 1
    return closed


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _prompt_tokens(saved: dict[str, Any], progress: dict[str, Any], fields: dict[str, Any]) -> int:
    """As counted while the stream ran, else from the request body as recorded (redacted: near
    enough for an estimate), else a quarter of its length."""
    for counted in (progress.get("prompt_tokens"), saved.get("prompt_tokens")):
        if isinstance(counted, int) and not isinstance(counted, bool) and counted >= 0:
            return counted
    body = fields.get("request_body")
    if not isinstance(body, str):
        return 0
    try:
        return count_request_prompt_tokens(str(fields.get("endpoint") or ""), orjson.loads(body))
    except Exception:  # cut short, or not a body the tokenizer knows
        return math.ceil(len(body) / 4)


def interrupted_record(row: Mapping[Any, Any], prices: PriceTable, reason: str) -> dict[str, Any]:
    """The chain record of a stream cut with its gateway, from its write-ahead row."""
    saved = row["record"] if isinstance(row["record"], dict) else {}
    fields: dict[str, Any] = dict(saved.get("fields") or {})
    progress = row["progress"] if isinstance(row["progress"], dict) else {}
    mode = str(saved.get("bodies")) if saved.get("bodies") in ("none", "redacted", "full") else "redacted"
    events, sent = _count(row["events"]), _count(row["bytes"])
    usage = progress.get("usage")
    if isinstance(usage, dict):
        estimated, how = False, "usage as the upstream reported it"
    else:
        prompt = _prompt_tokens(saved, progress, fields)
        content, chars = _count(progress.get("content_events")), _count(progress.get("content_chars"))
        output = max(content, math.ceil(chars / 4)) + math.ceil(_count(progress.get("other_chars")) / 4)
        usage = {"prompt_tokens": prompt, "completion_tokens": output}
        estimated = True
        how = (
            f"usage and cost are an estimate: {prompt} prompt tokens as counted, {output} output tokens "
            f"from {content} content events, {chars} characters"
        )
    counts = TokenCounts.from_usage(usage)
    cost = Decimal(0)
    if saved.get("priced"):
        tier = progress.get("service_tier") or saved.get("service_tier")
        for name in (progress.get("model"), fields.get("model")):
            if isinstance(name, str) and prices.prices(name) is not None:
                cost = prices.cost_usd(name, usage, tier=tier if isinstance(tier, str) else "") or Decimal(0)
                break
    note = {"events": events, "bytes": sent, "completed": False, "interrupted": True, "usage_estimated": estimated}
    owner = redact.secrets(str(row["instance"]))[:256]
    started, updated = row["started"], row["updated"]
    fields.update(
        latency_ms=max(0.0, (updated - started) * 1000) if isinstance(started, float | int) else 0.0,
        ttft_ms=progress.get("ttft_ms") if isinstance(progress.get("ttft_ms"), float | int) else None,
        input_tokens=counts.input,
        cached_tokens=counts.cached_input,
        output_tokens=counts.output,
        reasoning_tokens=counts.reasoning,
        cost_usd=cost,
        error=error_text(f"{INTERRUPTED} ({reason}; instance {owner}); {how}; {events} events, {sent} bytes", mode),
        response_body=render_json({"stream": note}, mode),
    )
    for name, default in (("ts", started), ("principal", "unknown"), ("endpoint", "/"), ("cache", "off")):
        fields.setdefault(name, default)
    for name in ("status", "attempts"):
        fields[name] = _count(fields.get(name))
    fields["tags"] = fields.get("tags") if isinstance(fields.get("tags"), dict) else {}
    return fields
