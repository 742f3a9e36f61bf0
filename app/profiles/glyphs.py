"""The glyph-grid image layout: a line of text redrawn one glyph per image token, in reading order.

A model whose vision tower sees a 256-pixel square as an 8×8 grid of tokens (the bundled
thinkgate-arith) cannot reliably read a problem drawn at any size and place: a character can fall
anywhere in the grid, several to a token. This step removes that variation before the engine sees
the image. It crops to the ink, splits the line into glyphs at blank columns (a glyph over 1.6 times
the usual width, two that touch, is cut at its thinnest column), and draws the k-th glyph, scaled to
one line height, centred in the k-th 32×32 cell in reading order. Token k then holds character k.

A model profile asks for it with ``image_layout = "glyph-grid"`` (app/profiles/profile.py); the gateway
applies it to every image after the usual checks (app/pipeline/media.py). Training draws its images through
the same function (training/render.py), so the model sees exactly what the gateway sends.

Light text on a dark background is inverted first, and transparency is flattened onto white.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

SIDE = 256  # the processor's square (training/modelcfg.py: IMAGE_SIDE)
CELL = 32  # pixels per image token side (patch 16 × pixel shuffle 2)
GRID = SIDE // CELL
LINE_HEIGHT = 24  # a glyph's line height inside its cell
INK = 90  # grey levels below this are ink (the training backgrounds are 200 or lighter)


def glyph_grid(image: Image.Image) -> tuple[Image.Image, int]:
    """The image redrawn with its glyphs one per cell (RGB, SIDE × SIDE), and how many glyphs it found
    (only the first GRID × GRID are drawn)."""
    grey = _grey(image)
    ink = grey < INK
    rows = np.flatnonzero(ink.any(axis=1))
    out = Image.new("L", (SIDE, SIDE), 255)
    if len(rows) == 0:
        return out.convert("RGB"), 0
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    line = ink[top:bottom]
    counts = line.sum(axis=0)
    glyphs = _split_wide(_runs(counts > 0), counts)
    scale = LINE_HEIGHT / (bottom - top)
    height = max(1, round((bottom - top) * scale))
    for k, (left, right) in enumerate(glyphs[: GRID * GRID]):
        crop = Image.fromarray(np.where(line[:, left:right], 0, 255).astype(np.uint8), "L")
        width = max(1, min(CELL - 2, round((right - left) * scale)))
        glyph = crop.resize((width, height), Image.Resampling.BILINEAR)
        x, y = (k % GRID) * CELL, (k // GRID) * CELL
        out.paste(glyph, (x + (CELL - width) // 2, y + (CELL - height) // 2))
    return out.convert("RGB"), len(glyphs)


def glyphs_of(text: str) -> list[str]:
    """The characters a glyph-grid image of `text` shows, cell by cell."""
    return [char for char in text if not char.isspace()]


def _grey(image: Image.Image) -> np.ndarray:
    """Grey levels with dark ink on a light background, whatever the source's polarity and alpha."""
    if image.has_transparency_data:
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat.alpha_composite(image.convert("RGBA"))
        image = flat
    grey = np.asarray(image.convert("L"))
    if np.median(grey) < 128:  # light text on a dark background
        grey = 255 - grey
    return grey


def _runs(columns: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of ink columns."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], columns.astype(np.int8), [0]))))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def _split_wide(glyphs: list[tuple[int, int]], counts: np.ndarray) -> list[tuple[int, int]]:
    """Cut a glyph over 1.6 times the median width at its thinnest column (two glyphs touching)."""
    if len(glyphs) < 2:
        return glyphs
    typical = sorted(b - a for a, b in glyphs)[len(glyphs) // 2]
    out = []
    for a, b in glyphs:
        if b - a > 1.6 * typical and b - a > 4:
            lo, hi = a + (b - a) // 4, b - (b - a) // 4
            cut = lo + int(np.argmin(counts[lo:hi]))
            out.extend([(a, cut), (cut, b)])
        else:
            out.append((a, b))
    return out
