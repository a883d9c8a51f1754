"""Removing secrets and personal data from text and JSON before anything is logged or stored.

Keys (``sk-…``, Ferryman's ``fm-…``) and bearer tokens are always removed, and so is every
secret Ferryman was configured with, by value, whatever its shape (an admin key, an Azure key,
the audit checkpoint key): :func:`ferryman.secrets.resolve` hands each value it resolves to
:func:`remember`, and it is then removed raw, percent-encoded and JSON-escaped. Personal data
(e-mail addresses, phone numbers, card numbers that pass the Luhn check, IBANs) is replaced by
typed placeholders when bodies are kept ``redacted``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import threading
from typing import Any
from urllib.parse import quote, quote_plus

import orjson

SECRET = "[REDACTED]"

# Keys: OpenAI's ``sk-…`` (``sk-proj-…``, ``sk-svcacct-…``) and Ferryman's virtual ``fm-…``; a letter right
# before the prefix (``task-…``) means a word, not a key; ``KEY_sk-…`` or ``%22sk-…`` are still keys.
_KEY = re.compile(r"(?<![A-Za-z])(?:sk|fm)-[A-Za-z0-9_\-]{8,}")
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{8,}")
# ``api-key: …``, ``api_key=…`` (Azure keys have no prefix to recognise them by).
_ASSIGNED = re.compile(r"""(?i)\b((?:x-|openai-)?api[-_]?key["']?\s*[:=]\s*["']?)(?!\[REDACTED\])[^\s"',;&]{8,}""")
_SECRET_FIELDS = re.compile(
    r"(?i)^(authorization|proxy-authorization|cookie|set-cookie|(?:x-|openai-)?api[-_]?key|password|passwd|secret"
    r"|client[-_]?secret|(?:access|refresh|auth|api|id|session)[-_]?token)$"
)
# Text holding none of these (in any case) holds no secret: one quick look before the regular
# expressions run (most text holds none). Substring tests on the lower-cased text, because a
# case-insensitive alternation makes ``re`` try every position (ten times slower).
_MARKERS = ("sk-", "fm-", "bearer", "api-key", "api_key", "apikey")
_MARKERS_BYTES = tuple(marker.encode() for marker in _MARKERS)


# Configured secrets, by value (see :func:`remember`): every form in which each can appear,
# longest first, as text and as UTF-8. Readers take the pair without a lock; a registration
# builds a new pair and swaps it in whole.
MIN_KNOWN_LENGTH = 8
_known: tuple[tuple[str, ...], tuple[bytes, ...]] = ((), ())
_known_lock = threading.Lock()
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _forms(value: str) -> set[str]:
    """``value`` raw, percent-encoded (as a path segment or a query/form value, either hex case)
    and JSON-escaped (as orjson writes it and with ``\\uXXXX`` for non-ASCII)."""
    forms = {value, quote(value, safe=""), quote_plus(value, safe=""), json.dumps(value)[1:-1]}
    forms |= {_HEX_ESCAPE.sub(lambda m: m.group(0).lower(), form) for form in forms}
    with contextlib.suppress(orjson.JSONEncodeError):  # a lone surrogate (an undecodable variable)
        forms.add(orjson.dumps(value).decode()[1:-1])
    return forms


def remember(value: str) -> None:
    """Remove ``value`` from everything redacted from now on (raw, percent-encoded, JSON-escaped).

    Values shorter than :data:`MIN_KNOWN_LENGTH` characters are not remembered: removing every
    occurrence of a short string would destroy the text around it. Safe from any thread."""
    global _known
    if not isinstance(value, str) or len(value) < MIN_KNOWN_LENGTH:
        return
    forms = _forms(value)
    with _known_lock:
        texts = _known[0]
        if forms.issubset(texts):
            return
        merged = tuple(sorted(forms.union(texts), key=lambda form: (-len(form), form)))
        _known = (merged, tuple(form.encode("utf-8", errors="surrogateescape") for form in merged))


# Plain loops, not any(...): without the generator a call costs a third less (on every body).
def _holds_known(text: str, known: tuple[str, ...]) -> bool:
    for form in known:  # noqa: SIM110
        if form in text:
            return True
    return False


def _holds_known_bytes(data: bytes, known: tuple[bytes, ...]) -> bool:
    for form in known:  # noqa: SIM110
        if form in data:
            return True
    return False


def _may_hold_secret(text: str) -> bool:
    lowered = text.lower()
    return any(marker in lowered for marker in _MARKERS)


def _may_hold_secret_bytes(data: bytes) -> bool:
    lowered = data.lower()
    return any(marker in lowered for marker in _MARKERS_BYTES)


# An address starts where a run of its characters starts: without the lookbehind every position
# of a long run (base64, an upload) would be tried, each scanning to the run's end (quadratic).
_EMAIL = re.compile(r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")
_CARD = re.compile(r"\b\d(?:[ \-]?\d){12,18}\b")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_PHONE = re.compile(r"(?<![\w+])\+?\d[\d ().\-]{7,}\d\b")
# Shapes that look like phone numbers but are not: dates (and date-times), IPv4 addresses, decimals.
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\b")
_NOT_PHONE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}|\d+\.\d+")


def secrets(text: str) -> str:
    """Remove configured secrets, API keys, bearer tokens and ``api-key: …`` values."""
    known = _known[0]
    if known and _holds_known(text, known):
        for form in known:  # longest first: a form inside a longer one goes with the longer
            text = text.replace(form, SECRET)
    if not _may_hold_secret(text):
        return text
    text = _BEARER.sub(lambda m: f"{m.group(1)} {SECRET}", text)
    text = _ASSIGNED.sub(lambda m: f"{m.group(1)}{SECRET}", text)
    return _KEY.sub(SECRET, text)


def secrets_bytes(data: bytes) -> bytes:
    """:func:`secrets` for a body: returned unchanged (the same object) when it holds no secret."""
    if not _may_hold_secret_bytes(data) and not _holds_known_bytes(data, _known[1]):
        return data
    text = data.decode("utf-8", errors="surrogateescape")
    cleaned = secrets(text)
    return data if cleaned == text else cleaned.encode("utf-8", errors="surrogateescape")


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[CARD]" if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def _iban(match: re.Match[str]) -> str:
    raw = match.group(0).replace(" ", "")
    moved = raw[4:] + raw[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return "[IBAN]" if 15 <= len(raw) <= 34 and int(number) % 97 == 1 else match.group(0)


_MAYBE_PERSONAL = re.compile(r"[0-9@]")  # every pattern below needs a digit or an @


@functools.lru_cache(maxsize=4096)
def _is_secret_field(name: str) -> bool:
    return _SECRET_FIELDS.match(name) is not None


_NO_DIGITS = str.maketrans("", "", "0123456789")
_IBAN_START = re.compile(r"[A-Z]{2}\d{2}")


def personal(text: str) -> str:
    """Replace e-mails, card numbers (Luhn), IBANs (mod 97) and phone numbers."""
    if not _MAYBE_PERSONAL.search(text):
        return text
    # Below 9 digits there is no phone or card number, without an @ no address, and an IBAN
    # starts with two capitals and two digits: most ids and model names stop here.
    if "@" not in text and len(text) - len(text.translate(_NO_DIGITS)) < 9 and not _IBAN_START.search(text):
        return text
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub(_iban, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def _phone(match: re.Match[str]) -> str:
    raw = match.group(0)
    digits = sum(ch.isdigit() for ch in raw)
    if not 9 <= digits <= 15 or _DATE.match(raw) or _NOT_PHONE.fullmatch(raw.strip()):
        return raw
    return "[PHONE]"


def text(value: str, pii: bool = True) -> str:
    value = secrets(value)
    return personal(value) if pii else value


def json_value(value: Any, pii: bool = True) -> Any:
    """Redact every string in a JSON value; fields named like secrets are blanked whole."""
    try:  # one search of the whole value says whether any string in it can hold a key
        dumped = orjson.dumps(value)
        keys = _may_hold_secret_bytes(dumped) or _holds_known_bytes(dumped, _known[1])
    except TypeError:  # not plain JSON data
        keys = True
    return _json_value(value, pii, keys)


_SCALARS = (int, float, bool)


def _json_value(value: Any, pii: bool, keys: bool) -> Any:
    kind = type(value)
    if kind is str or isinstance(value, str):
        if keys:
            value = secrets(value)
        return personal(value) if pii else value
    if kind is dict or isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if keys and isinstance(k, str):
                k = secrets(k)  # a key pasted where a name goes
            if isinstance(k, str) and _is_secret_field(k):
                out[k] = SECRET
            elif v is None or type(v) in _SCALARS:
                out[k] = v
            else:
                out[k] = _json_value(v, pii, keys)
        return out
    if kind is list or isinstance(value, list):
        return [_json_value(v, pii, keys) for v in value]
    return value


def headers(items: dict[str, str]) -> dict[str, str]:
    return {k: (SECRET if _SECRET_FIELDS.match(k) else secrets(v)) for k, v in items.items()}
