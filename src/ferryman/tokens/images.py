"""Image input tokens: the 512px tile formula, plus stdlib PNG/JPEG/GIF/WebP size sniffing.

OpenAI's tile formula (gpt-4o / 4.1 / 4.5 / 5 family, ``detail`` "high" or "auto"): scale the
image to fit inside 2048x2048, then so its shortest side is at most 768px (images are never
scaled up), then cover it with 512px tiles; tokens = base + tile * tiles. ``detail: "low"``
costs ``base`` alone. Resized sides are rounded to whole pixels, which reproduces observed
edge cases (2049x513 -> 8 tiles, 2050x513 -> 4 tiles).

Estimates, not exact counts:

* Dimensions are known only for ``data:`` URLs. For a remote URL, a ``file_id`` or an
  undecodable image we assume the worst case of the formula: a 2048x768 image, 8 tiles
  (85 + 170*8 = 1445 tokens at the gpt-4o rates).
* ``detail: "auto"`` is treated as "high" (an upper bound).
* Per-model rates: gpt-4o-mini bills 2833 + 5667/tile and o1/o3 75 + 150/tile; every other
  model uses 85 + 170/tile. Models OpenAI bills by 32px patches (gpt-4.1-mini/-nano,
  gpt-5-mini/-nano, o4-mini) are approximated with the tile formula too.
"""

from __future__ import annotations

import binascii
import struct
import urllib.parse

from .encodings import normalize_model

__all__ = [
    "UNKNOWN_SIZE",
    "data_url_bytes",
    "image_dimensions",
    "image_tokens",
    "image_url_tokens",
]

TILE = 512
#: The size assumed when the real one is unknown: the formula's maximum of 2x4 tiles.
UNKNOWN_SIZE = (2048, 768)


def _rates(model: object) -> tuple[int, int]:
    """(base tokens, tokens per tile) for ``model``."""
    name = normalize_model(model)
    if name.startswith("gpt-4o-mini"):
        return 2833, 5667
    if name.startswith(("o1", "o3")):
        return 75, 150
    return 85, 170


def image_tokens(
    width: int | None, height: int | None, detail: object = "auto", model: object = "gpt-4o"
) -> int:
    """Prompt tokens of one image; ``None``/non-positive sizes mean "unknown" (worst case)."""
    base, per_tile = _rates(model)
    if isinstance(detail, str) and detail.lower() == "low":
        return base
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        width, height = UNKNOWN_SIZE
    w, h = width, height
    longest = max(w, h)
    if longest > 2048:
        w, h = max(1, round(w * 2048 / longest)), max(1, round(h * 2048 / longest))
    shortest = min(w, h)
    if shortest > 768:
        w, h = max(1, round(w * 768 / shortest)), max(1, round(h * 768 / shortest))
    tiles = -(-w // TILE) * -(-h // TILE)
    return base + per_tile * tiles


def image_url_tokens(url: object, detail: object = "auto", model: object = "gpt-4o") -> int:
    """Prompt tokens of an image given by URL; sizes are read from ``data:`` URLs only."""
    size = None
    if isinstance(url, str) and not (isinstance(detail, str) and detail.lower() == "low"):
        data = data_url_bytes(url)
        size = image_dimensions(data) if data is not None else None
    width, height = size if size is not None else (None, None)
    return image_tokens(width, height, detail, model)


def data_url_bytes(url: str) -> bytes | None:
    """The payload of a ``data:`` URL (base64 or percent-encoded), or None."""
    if url[:5].lower() != "data:":
        return None
    header, comma, payload = url[5:].partition(",")
    if not comma:
        return None
    try:
        if header.lower().endswith(";base64"):
            payload = "".join(payload.split())
            return binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
        return urllib.parse.unquote_to_bytes(payload)
    except (ValueError, binascii.Error):
        return None


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or WebP header; None if not recognised."""
    try:
        size = _sniff(data)
    except (struct.error, IndexError):
        return None
    if size is None or size[0] <= 0 or size[1] <= 0:
        return None
    return size


def _sniff(data: bytes) -> tuple[int, int] | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
        w, h = struct.unpack(">II", data[16:24])
        return int(w), int(h)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        w, h = struct.unpack("<HH", data[6:10])
        return int(w), int(h)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg(data)
    return None


def _webp(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # lossy: key-frame header
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless: 14-bit (size - 1) fields
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:  # extended: 24-bit canvas (size - 1)
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


# Start-of-frame markers carry the size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers with no length field.
_STANDALONE = frozenset(range(0xD0, 0xD9)) | {0x01}


def _jpeg(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i < n:
        if data[i] != 0xFF:
            return None  # lost sync: not a well-formed marker sequence
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame
            return None
        (length,) = struct.unpack(">H", data[i : i + 2])
        if marker in _SOF:
            h, w = struct.unpack(">HH", data[i + 3 : i + 7])
            return int(w), int(h)
        if length < 2:
            return None
        i += length
    return None
