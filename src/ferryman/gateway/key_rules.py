"""What a virtual key's and a team's fields may hold: durations, budgets, names, limits and
billing tags, checked one way for the CLI, the admin API and :class:`~ferryman.gateway.keys.KeyStore`.
Each check raises ``ValueError`` with a message that names the field and quotes (a cut of) the
value; the admin API turns it into a 400 whose ``param`` is the field.
"""

from __future__ import annotations

import re
from decimal import ROUND_DOWN, Decimal

_DURATION = re.compile(r"([0-9]{1,12})\s*(s|m|h|d|w)")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# The bounds of what a key, a team and the admin API accept (the README lists them).
MAX_DURATION_S = 3650 * 86400  # an expiry at most ten years ahead
BUDGET_MIN_USD = Decimal("0.000001")  # a millionth of a dollar: well above the column's scale
BUDGET_MAX_USD = Decimal("1000000")  # per period (day or month)
BUDGET_STEP = Decimal("1E-10")  # the column's scale, Numeric(20, 10): amounts are cut to it
MAX_BUDGET_TEXT = 64
LIMIT_MAX = {"rpm": 1_000_000, "tpm": 1_000_000_000}  # both within a 32-bit INTEGER column
NAME_MAX = 128  # the name and team columns are String(128)
NAME_CHARS = "printable characters but '/' (no control characters or line breaks)"
# Any printable text: names are shown escaped wherever they appear (the dashboard's test names a
# key with HTML); control characters would forge lines in logs and terminals.
_NAME = re.compile(r"[^/\x00-\x1f\x7f-\x9f\u2028\u2029]+")
MAX_TAGS = 16
TAG_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")  # as a ferryman-tags header spells it, lower-case
TAG_VALUE = re.compile(r"[\x21-\x2b\x2d-\x3c\x3e-\x7e]{1,128}")  # printable ASCII but space , =
RESERVED_TAGS = frozenset({"team"})  # set by the key's team, nothing else


def _shown(text: str, limit: int = 40) -> str:
    """``text`` as quoted in an error message: never more than ``limit`` characters of it."""
    return repr(text if len(text) <= limit else text[:limit] + "…")


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s`` → seconds (from 1 s to 3650 days)."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match:
        raise ValueError(f"unreadable duration {_shown(text)}: use a whole number and one of s, m, h, d, w (e.g. 30d)")
    seconds = int(match.group(1)) * _UNIT_S[match.group(2)]
    if not 1 <= seconds <= MAX_DURATION_S:
        raise ValueError(f"duration {_shown(text)} is out of range: from 1s to 3650d (ten years)")
    return float(seconds)


def parse_budget(text: str) -> tuple[Decimal, str]:
    """``50/month``, ``5/day``, ``$50/month`` → (USD, period); the amount from $0.000001 to
    $1,000,000 per period, cut to the store's ten decimal places."""
    if len(text) > MAX_BUDGET_TEXT:
        raise ValueError(f"unreadable budget {_shown(text)}: longer than {MAX_BUDGET_TEXT} characters")
    amount, _, period = text.strip().removeprefix("$").partition("/")
    period = (period or "month").strip().lower()
    if period not in ("day", "month"):
        raise ValueError(f"budget period must be day or month, got {_shown(period)} (e.g. 50/month)")
    amount = amount.strip()
    try:
        usd = Decimal(amount) if amount and "_" not in amount else None
    except ArithmeticError:
        usd = None
    if usd is None:
        raise ValueError(f"unreadable budget {_shown(text)}: use USD/period, e.g. 50/month")
    if not usd.is_finite() or not BUDGET_MIN_USD <= usd <= BUDGET_MAX_USD:
        raise ValueError(
            f"a budget must be from $0.000001 to $1,000,000 per {period}, got {_shown(text)} (e.g. 50/month)"
        )
    return usd.quantize(BUDGET_STEP, rounding=ROUND_DOWN), period


def check_name(value: str, what: str = "name") -> str:
    """A key's or team's name, stripped: 1 to 128 of :data:`NAME_CHARS`. Raises ValueError
    naming ``what``."""
    name = value.strip()
    if not name:
        raise ValueError(f"{what} must not be empty" if what != "name" else "a key needs a name")
    if len(name) > NAME_MAX:
        raise ValueError(f"{what} must be at most {NAME_MAX} characters, got {len(name)}")
    if not _NAME.fullmatch(name):
        raise ValueError(f"{what} may hold only {NAME_CHARS}; got {_shown(name)}")
    return name


def check_tags(value: dict[str, str] | str | None, what: str = "tags") -> dict[str, str]:
    """A key's or team's billing tags: a mapping, or ``name=value,name=value`` text, of at most
    :data:`MAX_TAGS` tags; names lower-cased (letters, digits, ``_ . -``; at most 64), values 1 to
    128 printable ASCII characters but space, ``,`` and ``=``; ``team`` is reserved (it is the
    key's team). Raises ValueError naming the tag."""
    if value is None:
        return {}
    if isinstance(value, str):
        pairs: list[tuple[str, str]] = []
        for part in value.split(","):
            if not part.strip():
                continue
            name, sep, text = part.partition("=")
            if not sep:
                raise ValueError(f"{what}: {_shown(part.strip())} is not name=value")
            pairs.append((name, text))
    else:
        pairs = list(value.items())
    if len(pairs) > MAX_TAGS:
        raise ValueError(f"{what}: at most {MAX_TAGS} tags, got {len(pairs)}")
    tags: dict[str, str] = {}
    for raw_name, raw_value in pairs:
        if not isinstance(raw_name, str) or not isinstance(raw_value, str):
            raise ValueError(f"{what}: tag names and values must be strings")
        name, text = raw_name.strip().lower(), raw_value.strip()
        if not TAG_NAME.fullmatch(name):
            raise ValueError(f"{what}: tag name {_shown(raw_name)} must be 1 to 64 letters, digits, '_', '.' or '-'")
        if name in RESERVED_TAGS:
            raise ValueError(f"{what}: the tag {name!r} is the key's team; set the team instead")
        if name in tags:
            raise ValueError(f"{what}: the tag {name!r} is given twice")
        if not TAG_VALUE.fullmatch(text):
            raise ValueError(
                f"{what}: the value of {name!r} must be 1 to 128 printable ASCII characters "
                f"without spaces, ',' or '=', got {_shown(text)}"
            )
        tags[name] = text
    return tags


def check_limit(label: str, value: int | None) -> None:
    """rpm or tpm: None (no limit) or a whole number from 1 to :data:`LIMIT_MAX`."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMIT_MAX[label]:
        raise ValueError(f"{label} must be a whole number from 1 to {LIMIT_MAX[label]:,}, got {value!r}")
