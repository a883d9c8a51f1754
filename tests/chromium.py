"""Headless Chromium for the suite's page tests (the dashboard, the HTML report), and reading its
screenshots: a PNG decoded by hand (zlib + struct, no imaging library) so a test can count the
pixels of a colour and prove a chart is painted, not only present in the DOM.

Debian's ``chromium`` is driven by Playwright with ``executable_path``; without it the tests skip,
or fail under ``FERRYMAN_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def require_chromium(what: str) -> None:
    """Skip (or fail, under FERRYMAN_REQUIRE_SERVICES=1) when Debian's chromium is missing."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return
    reason = f"{CHROMIUM} is missing (apt-get install chromium)"
    if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}, and FERRYMAN_REQUIRE_SERVICES=1 makes the {what} tests mandatory")
    pytest.skip(reason)


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Width, height and the unfiltered rows (RGB or RGBA, 8-bit) of a non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    assert depth == 8 and color in (2, 6) and interlace == 0, (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    rows: list[bytes] = []
    prior = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prior, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prior[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prior[i], prior[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prior = line
    return width, height, [bytes(r[i : i + 3]) for r in rows for i in range(0, stride, bpp)]


def keep_screenshots(*shots: Path) -> None:
    """Copy the screenshots to $FERRYMAN_KEEP_SCREENSHOTS (a directory, made if missing), if set."""
    keep = os.environ.get("FERRYMAN_KEEP_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy(shot, keep)


def count_colour(pixels: list[bytes], rgb: tuple[int, int, int], tolerance: int = 6) -> int:
    return sum(1 for px in pixels if all(abs(px[i] - rgb[i]) <= tolerance for i in range(3)))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def palette_png(width: int, height: int, pixels: list[bytes], keep: tuple[tuple[int, int, int], ...] = ()) -> bytes:
    """``pixels`` (as :func:`png_pixels` gives them) as an 8-bit palette PNG: the 256 commonest
    colours (``keep`` always among them: the charts' colours), every other pixel mapped to the
    nearest. A page screenshot has a few hundred colours, mostly text anti-aliasing, so this keeps
    it readable at about a third of Chromium's size (for the picture in docs/)."""
    counts: dict[bytes, int] = {}
    for px in pixels:
        counts[px] = counts.get(px, 0) + 1
    wanted = [bytes(rgb) for rgb in keep]
    palette = wanted + [c for c, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if c not in wanted]
    palette = palette[:256]
    slot = {c: i for i, c in enumerate(palette)}

    def nearest(colour: bytes) -> int:
        def distance(i: int) -> int:
            return sum((a - b) ** 2 for a, b in zip(colour, palette[i], strict=True))

        return min(range(len(palette)), key=distance)

    for colour in counts:
        if colour not in slot:
            slot[colour] = nearest(colour)
    raw = b"".join(b"\x00" + bytes(slot[px] for px in pixels[y * width : (y + 1) * width]) for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _chunk(b"PLTE", b"".join(palette))
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )
