"""How ``ferryman keys …`` and ``ferryman teams …`` show keys, teams, dates and money.

People read the tables; programs read ``--json``. Both say the same thing, each in its own form:

- a time in a table is UTC to the minute, ``2026-12-04 01:20Z`` (:func:`when`); in JSON it is
  ISO 8601 to the second, ``2026-12-04T01:20:00Z``, or ``null`` (:func:`iso`)
- money in a table is dollars as people write them (:func:`money`): two decimals from $1 up
  (``$50.00``, ``$1,234.50``), four significant digits below (``$0.0123``, ``$0.50``,
  ``$0.000123``: a tiny spend never shows as ``$0.00``), and a budget with its period
  (``$50.00/month``); in JSON it is the exact amount as a decimal string in USD (``"50"``,
  ``"0.000123"``: no float rounding, no exponent; :func:`decimal_text`)
- a key is its id (whole, never cut), name, team and its hint (``fm-…`` and the last four
  characters): never its secret, which is stored only as a hash
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferryman.gateway.keys import KeyRecord, TeamRecord

CENT = Decimal("0.01")
SIGNIFICANT = 4  # digits shown of an amount under a dollar


def when(ts: float | None) -> str:
    """A table's time: ``2026-12-04 01:20Z`` (UTC), ``-`` for none."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%MZ")


def iso(ts: float | None) -> str | None:
    """JSON's time: ``2026-12-04T01:20:00Z`` (UTC, to the second), None for none."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def money(value: Decimal | str | int | None) -> str:
    """``$1,234.50`` from a dollar up, four significant digits below (``$0.0123``, ``$0.50``)."""
    if value is None:
        return "-"
    amount = Decimal(value)
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount == 0:
        return "$0.00"
    if amount >= 1:
        return f"{sign}${amount.quantize(CENT, ROUND_HALF_UP):,.2f}"
    places = max(2, SIGNIFICANT - 1 - amount.adjusted())  # adjusted(): the exponent of the first digit
    whole, _, cents = format(amount.quantize(Decimal(1).scaleb(-places), ROUND_HALF_UP), "f").partition(".")
    return f"{sign}${whole}.{cents.rstrip('0').ljust(2, '0')}"


def budget(usd: Decimal | None, period: str | None) -> str:
    """``$50.00/month``, ``-`` for no budget."""
    return f"{money(usd)}/{period or 'month'}" if usd is not None else "-"


def decimal_text(value: Decimal | str | int | None) -> str | None:
    """The exact amount for JSON: ``"50"``, ``"0.000123"`` (no exponent, no trailing zeros)."""
    if value is None:
        return None
    text = format(Decimal(value).normalize(), "f")
    return "0" if text in ("-0", "0") else text


def tags(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "-"


def limit(value: int | None) -> str:
    return str(value) if value else "-"


def _budget_json(usd: Decimal | None, period: str | None) -> dict[str, Any] | None:
    return {"usd": decimal_text(usd), "period": period or "month"} if usd is not None else None


def usage_json(usage: dict[str, Any] | None) -> dict[str, Any]:
    u = usage or {}
    return {
        "calls": int(u.get("calls", 0)),
        "input_tokens": int(u.get("input_tokens", 0)),
        "output_tokens": int(u.get("output_tokens", 0)),
        "cost_usd": decimal_text(u.get("cost_usd", 0)),
        "last_used": iso(u.get("last_used")),
    }


def key_json(record: KeyRecord, usage: dict[str, Any] | None, now: float) -> dict[str, Any]:
    """A key for ``--json``: what the table shows, times in ISO 8601, money as decimal strings."""
    return {
        "id": record.id,
        "name": record.name,
        "team": record.team,
        "hint": record.hint,
        "state": record.state(now),
        "created": iso(record.created),
        "expires": iso(record.expires),
        "rotated": iso(record.rotated),
        "revoked": iso(record.revoked),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget": _budget_json(record.budget_usd, record.budget_period),
        "models": list(record.models) if record.models is not None else None,
        "tags": dict(sorted(record.tags.items())),
        "usage": usage_json(usage),
    }


def team_json(team: TeamRecord) -> dict[str, Any]:
    return {
        "name": team.name,
        "created": iso(team.created),
        "rpm": team.rpm,
        "tpm": team.tpm,
        "budget": _budget_json(team.budget_usd, team.budget_period),
        "tags": dict(sorted(team.tags.items())),
    }


def key_lines(record: KeyRecord, usage: dict[str, Any] | None, now: float) -> list[tuple[str, str]]:
    """``keys show``: one (label, value) per line, in the table's forms."""
    u = usage_json(usage)
    return [
        ("id", record.id),
        ("name", record.name),
        ("team", record.team or "-"),
        ("key", record.hint),
        ("state", record.state(now)),
        ("created", when(record.created)),
        ("expires", when(record.expires)),
        ("rotated", when(record.rotated)),
        ("revoked", when(record.revoked)),
        ("budget", budget(record.budget_usd, record.budget_period)),
        ("rpm", limit(record.rpm)),
        ("tpm", limit(record.tpm)),
        ("models", ", ".join(record.models) if record.models else "all"),
        ("tags", tags(record.tags)),
        ("calls", str(u["calls"])),
        ("tokens", f"{u['input_tokens']:,} in, {u['output_tokens']:,} out"),
        ("spent", money(u["cost_usd"])),
        ("last used", when(usage.get("last_used") if usage else None)),
    ]
