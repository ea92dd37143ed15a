#!/usr/bin/env python3
"""Generate placeholder images for the sample publications.

For every publication under content/publications/ whose front matter has an
[image] table, write a 640x360 PNG at content/<image.src>: a smooth two-colour
diagonal gradient whose colours are derived from a hash of the slug, so each
image differs but the output is byte-for-byte identical on every run.

Standard library only (zlib + struct); no Pillow needed.

Usage: python3 scripts/make_sample_images.py
"""

from __future__ import annotations

import colorsys
import hashlib
import struct
import sys
import tomllib
import zlib
from pathlib import Path

WIDTH = 640
HEIGHT = 360

ROOT = Path(__file__).resolve().parent.parent
CONTENT = ROOT / "content"
PUBLICATIONS = CONTENT / "publications"


def read_front_matter(path: Path) -> dict:
    """Return the TOML front matter (between the first two '+++' lines) as a dict."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "+++":
        raise ValueError(f"{path}: missing opening '+++'")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "+++")
    except StopIteration:
        raise ValueError(f"{path}: missing closing '+++'") from None
    return tomllib.loads("\n".join(lines[1:end]))


def colours_for(slug: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Two pleasant, related colours chosen deterministically from the slug."""
    digest = hashlib.sha256(slug.encode("utf-8")).digest()
    hue = digest[0] / 255.0
    shift = 0.08 + (digest[1] / 255.0) * 0.22  # neighbouring hue, 30-110 degrees away
    hue2 = (hue + shift) % 1.0
    light1 = 0.30 + (digest[2] / 255.0) * 0.12
    light2 = 0.58 + (digest[3] / 255.0) * 0.14
    sat1 = 0.45 + (digest[4] / 255.0) * 0.30
    sat2 = 0.40 + (digest[5] / 255.0) * 0.30

    def rgb(h: float, l: float, s: float) -> tuple[int, int, int]:
        r, g, b = colorsys.hls_to_rgb(h, l, s)
        return (round(r * 255), round(g * 255), round(b * 255))

    return rgb(hue, light1, sat1), rgb(hue2, light2, sat2)


def gradient_rows(c1, c2) -> bytes:
    """Raw scanlines (filter type 1, 'Sub') for a top-left to bottom-right gradient."""
    span = (WIDTH - 1) + (HEIGHT - 1)
    # Precompute the colour for every diagonal position x + y.
    ramp = []
    for d in range(span + 1):
        t = d / span
        ramp.append(tuple(round(a + (b - a) * t) for a, b in zip(c1, c2)))
    out = bytearray()
    for y in range(HEIGHT):
        out.append(1)  # filter type: Sub
        prev = (0, 0, 0)
        for x in range(WIDTH):
            px = ramp[x + y]
            out.append((px[0] - prev[0]) & 0xFF)
            out.append((px[1] - prev[1]) & 0xFF)
            out.append((px[2] - prev[2]) & 0xFF)
            prev = px
    return bytes(out)


def chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data))
        + kind
        + data
        + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def make_png(slug: str) -> bytes:
    c1, c2 = colours_for(slug)
    ihdr = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(gradient_rows(c1, c2), 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def main() -> int:
    written = 0
    for md in sorted(PUBLICATIONS.glob("*.md")):
        meta = read_front_matter(md)
        image = meta.get("image")
        if not image or not image.get("src"):
            continue
        src = Path(image["src"])
        if src.is_absolute() or ".." in src.parts:
            raise ValueError(f"{md}: unsafe image src {image['src']!r}")
        target = CONTENT / src
        target.parent.mkdir(parents=True, exist_ok=True)
        data = make_png(src.stem)
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
        written += 1
        print(f"{target.relative_to(ROOT)}  {len(data)} bytes")
    print(f"{written} image(s) in {CONTENT.relative_to(ROOT) / 'images'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
