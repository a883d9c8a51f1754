"""The one canonical form of an API path, and the upstream URL built from it.

Every check Ferryman makes on a request (ownership, allowlists, budgets, routing) reads the
exchange's ``path``, and the upstream URL is built from that same path, so what is checked is
exactly what is sent. A path is made canonical once, at the front door:

- it is split on ``/`` as the caller sent it (still percent-encoded), and each segment is
  percent-decoded exactly once;
- a segment that is empty (``//``, a trailing ``/``), ``.`` or ``..``, or that decodes to
  anything outside printable ASCII or to one of ``/ \\ ? # %`` is refused: no id, resource or
  action of the OpenAI API is spelled that way, while an HTTP client, a proxy or the upstream
  would resolve, split or decode it differently from the check (``/files/x/../<other id>``,
  ``/files%3F/x``, ``/v1/%2e%2e/…``);
- :func:`encode` quotes each segment again for the upstream, so the URL cannot leave the
  deployment's base path, whatever the caller sent.

The query string is passed on as the caller spelled it, but only when it holds printable ASCII
without ``#`` (nothing a request line could be split by).
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote_to_bytes

from ferryman.errors import OpenAIError

# Characters a decoded segment may not hold (besides anything outside printable ASCII).
_FORBIDDEN = frozenset("/\\?#%")
# What ``encode`` leaves unquoted: RFC 3986's unreserved characters and the sub-delimiters that
# are plain data inside a segment.
_SAFE = "-._~!$&'()*+,;=:@"
# Paths that need no decoding and hold no dot segment (nearly all): returned as they are.
_PLAIN = re.compile(r"(?:/[A-Za-z0-9_\-~!$&'()*+,;=:@][A-Za-z0-9_.\-~!$&'()*+,;=:@]*)+")


class PathRefused(OpenAIError):
    """A request path or query that has no one canonical meaning (a 404 or 400 in OpenAI's shape)."""


def _refuse(method: str, shown: str, why: str) -> PathRefused:
    shown = shown if len(shown) <= 200 else shown[:200] + "…"
    return PathRefused(404, f"Invalid URL ({method} {shown}): {why}.", "invalid_request_error", None, "invalid_url")


def canonical(method: str, raw: str | bytes, shown_prefix: str = "/v1") -> str:
    """The canonical API path (``/files/file-1/content``) of ``raw``, the percent-encoded path
    below the API's base (``/files/file-1/content``), or :class:`PathRefused`."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if _PLAIN.fullmatch(text):  # no segment starts with '.', none needs decoding
        return text
    shown = shown_prefix + text.encode("unicode_escape").decode("ascii")
    if not text.startswith("/"):
        raise _refuse(method, shown, "the path must start with '/'")
    segments: list[str] = []
    for part in text[1:].split("/"):
        if not part:
            raise _refuse(method, shown, "empty path segments ('//' or a trailing '/') are not allowed")
        try:
            decoded = unquote_to_bytes(part).decode("ascii")
        except UnicodeDecodeError:
            raise _refuse(method, shown, "path segments must be printable ASCII") from None
        if decoded in (".", ".."):
            raise _refuse(method, shown, "'.' and '..' segments are not allowed")
        for ch in decoded:
            if ch in _FORBIDDEN or not (" " < ch < "\x7f"):
                raise _refuse(method, shown, f"a path segment may not contain {ch!r}")
        segments.append(decoded)
    return "/" + "/".join(segments)


def segment_ok(value: str) -> bool:
    """True when ``value`` is safe as one path segment (an Azure deployment named by a model)."""
    return (
        bool(value) and value not in (".", "..") and all(ch not in _FORBIDDEN and " " < ch < "\x7f" for ch in value)
    )


def canonical_query(method: str, path: str, raw: str | bytes) -> str:
    """The query string as sent, or :class:`PathRefused` when it holds a control character, a
    space, ``#`` or anything outside ASCII (which the upstream's request line would not carry)."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    for ch in text:
        if ch == "#" or not (" " < ch < "\x7f"):
            raise PathRefused(
                400,
                f"Invalid query string for {method} /v1{path}: it may not contain {ch!r} unencoded.",
                "invalid_request_error",
                None,
                "invalid_url",
            )
    return text


def encode(path: str) -> str:
    """``canonical``'s output, each segment quoted again for the upstream URL."""
    return "/".join(quote(segment, safe=_SAFE) for segment in path.split("/"))


__all__ = ["PathRefused", "canonical", "canonical_query", "encode", "segment_ok"]
