"""The bundled model's own rules (models/profiles/thinkgate-arith.toml): its image geometry and the
glyph-grid image layout, a line of text redrawn one glyph per image token, in reading order.

A vision tower that sees a 256-pixel square as 8×8 tokens (the bundled thinkgate-arith) cannot reliably
read a problem drawn at any size, place, font and slant. This step removes that variation: it separates
ink from paper (a threshold that adapts to the image; light text on dark paper is inverted), finds the
ink's connected parts, levels a slanted line and keeps what sits on it: touching glyphs are cut apart,
parts one above the other are one glyph (``=``, ``÷``), a glyph broken by thresholding is joined again,
specks of dust, noise or JPEG ringing are dropped. Glyph k, scaled to one line height, is drawn centred
in the k-th 32×32 cell, so token k holds character k. About 1 ms for a 256-pixel image. Ink, paper
and the connected parts: app/profiles/ink.py; the line and its glyphs: here.

The profile asks for it with ``image_layout = "glyph-grid"`` (app/profiles/steps.py); the gateway
applies it to every image after the usual checks (app/pipeline/media.py). Training draws its images
through the same function (training/render.py), so the model sees exactly what the gateway sends.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

from PIL import Image

from app.profiles.ink import Blob, connected_parts, dark_on_light
from app.profiles.steps import register_image_layout

IMAGE_SIDE = 256  # every image is squared to this (no splitting): few image tokens, one fixed shape
PATCH = 16  # the vision tower's patch side, in pixels
SCALE = 2  # pixel shuffle: (256/16)^2 / 2^2 = 64 image tokens
CELL = PATCH * SCALE  # pixels per image token side
GRID = IMAGE_SIDE // CELL  # image tokens per side
LINE_HEIGHT = 24  # a glyph's line height inside its cell
MAX_SLANT = 8.0  # degrees: a steeper line is not a slanted line of text, and is left as it is
MIN_DRIFT = 1.5  # pixels: a line whose centre drifts less than this from end to end is left as it is
MAX_RUNS = 5_000  # runs of ink to find glyphs in (each costs microseconds): more, and it is read at half size


@register_image_layout("glyph-grid")
def glyph_grid_layout(image: Image.Image) -> Image.Image:
    return glyph_grid(image)[0]


def glyph_grid(image: Image.Image) -> tuple[Image.Image, int]:
    """The image redrawn with its glyphs one per cell (RGB, IMAGE_SIDE × IMAGE_SIDE), and how many
    glyphs it found (only the first GRID × GRID are drawn)."""
    blank = Image.new("RGB", (IMAGE_SIDE, IMAGE_SIDE), "white")
    found = dark_on_light(image)
    if found is None:
        return blank, 0
    grey, level = found
    ink = grey.point([255] * level + [0] * (256 - level))  # ink 255, paper 0
    ink = ink.crop(ink.getbbox())  # the rest is paper: work on the inked box alone (there is ink)
    if (
        ink.tobytes().count(b"\x00\xff") > MAX_RUNS
    ):  # dithering or a photo, or text big enough to read at half
        return glyph_grid(grey.reduce(2))
    blobs = connected_parts(ink)
    if slope := _slope(blobs):
        ink = _levelled(ink, slope)
        blobs = connected_parts(ink)
    glyphs, dropped = _line(blobs)
    if not glyphs:
        return blank, 0
    for blob in dropped:  # specks and ink off the line: gone before the glyphs are cut out
        for row, start, end in blob.runs:
            ink.paste(0, (start, row, end, row + 1))
    return _drawn(ink, glyphs).convert("RGB"), len(glyphs)


def glyphs_of(text: str) -> list[str]:
    """The characters a glyph-grid image of `text` shows, cell by cell."""
    return [char for char in text if not char.isspace()]


def _drawn(ink: Image.Image, glyphs: list[Blob]) -> Image.Image:
    """The glyph grid: glyph k in black on white, its part of the line's full height scaled to
    LINE_HEIGHT (so a dash stays at mid-height), centred in cell k."""
    out = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 255)
    top, bottom = min(glyph.top for glyph in glyphs), max(glyph.bottom for glyph in glyphs)
    scale = LINE_HEIGHT / (bottom - top)
    for k, glyph in enumerate(glyphs[: GRID * GRID]):
        crop = ink.crop((glyph.left, top, glyph.right, bottom))
        for other in glyphs[max(0, k - 2) : k + 3]:  # a neighbour reaching into these columns
            if other is not glyph and other.columns_shared(glyph) > 0:
                for row, start, end in other.runs:
                    crop.paste(0, (start - glyph.left, row - top, end - glyph.left, row - top + 1))
        width = max(1, min(CELL - 2, round(glyph.width * scale)))
        shape = crop.resize((width, LINE_HEIGHT), Image.Resampling.BILINEAR)
        x, y = (k % GRID) * CELL + (CELL - width) // 2, (k // GRID) * CELL + (CELL - LINE_HEIGHT) // 2
        out.paste(0, (x, y, x + width, y + LINE_HEIGHT), shape)
    return out


def _tall(blobs: list[Blob]) -> list[Blob]:
    """The parts nearly as tall as the tallest: the digits (and ``/ ?``), not ``+ × ÷ = x *``."""
    tallest = max((blob.height for blob in blobs), default=0)
    return [blob for blob in blobs if blob.height >= 0.8 * tallest and blob.height > 2]


def _slope(blobs: list[Blob]) -> float:
    """The slope (rows per column) of the line through the tall parts' centres (least squares), or 0
    if it is level already, too short to tell, or too steep to be a slanted line of text."""
    tall = _tall(blobs)
    xs, ys = (
        [blob.left + blob.right for blob in tall],
        [blob.top + blob.bottom for blob in tall],
    )  # centres x2
    if len(set(xs)) < 2:
        return 0.0
    slope = statistics.linear_regression(xs, ys).slope
    if abs(slope) * (max(xs) - min(xs)) / 2 < MIN_DRIFT or abs(slope) > math.tan(math.radians(MAX_SLANT)):
        return 0.0
    return slope


def _levelled(ink: Image.Image, slope: float) -> Image.Image:
    """The binary image with each column moved up by `slope` rows per column (a shear, to the nearest
    pixel): the line is level, no stroke is blurred or broken, each column keeps its ink (the upright
    strokes keep their slant, a pixel or so at these angles)."""
    size = (ink.width, ink.height + math.ceil(abs(slope) * ink.width) + 1)
    data = (1.0, 0.0, 0.0, slope, 1.0, -max(0.0, slope * ink.width))  # (x, y) reads (x, y + slope x - lift)
    return ink.transform(size, Image.Transform.AFFINE, data, Image.Resampling.NEAREST, fillcolor=0)


@dataclass(frozen=True, slots=True)
class _Line:
    """The line of text: its digits' top row and height, and a digit's typical width."""

    top: int
    height: int
    typical: float

    def off_middle(self, top: int, bottom: int) -> float:  # rows [top, bottom): centre to middle, in heights
        return abs(top + bottom - 2 * self.top - self.height) / (2 * self.height)


def _line(blobs: list[Blob]) -> tuple[list[Blob], list[Blob]]:
    """The line's glyphs in reading order, and the ink dropped (off the line, or specks)."""
    tall = _tall(blobs)
    if not tall:
        return [], blobs
    tops, bottoms = sorted(blob.top for blob in tall), sorted(blob.bottom for blob in tall)
    top, height = tops[len(tops) // 2], max(1, bottoms[len(bottoms) // 2] - tops[len(tops) // 2])
    on_line: list[Blob] = []
    dropped: list[Blob] = []
    for blob in blobs:
        (on_line if blob.top < top + height and blob.bottom > top else dropped).append(blob)
    # A digit's width: the median of parts of one glyph, within what fonts draw (0.6-0.8 of its height)
    widths = sorted(blob.width for blob in on_line if 0.8 * height <= blob.height and blob.width <= height)
    line = _Line(top, height, min(max(widths[len(widths) // 2] if widths else 0, 0.6 * height), 0.8 * height))
    parts = sorted((part for blob in on_line for part in _cut(blob, line)), key=lambda part: part.left)
    return _rejoined(_without_specks(_stacked(parts), line, dropped), line), dropped


def _cut(blob: Blob, line: _Line) -> list[Blob]:
    """A part over 1.6 times the typical width is that many glyphs touching: cut it at the thinnest
    column near each expected boundary. A part over 1.15 times is cut at its seam, if it has one."""
    if blob.width > 1.6 * line.typical:
        counts = [len(rows) for rows in blob.columns()]
        step = blob.width / max(2, round(blob.width / line.typical))
        cuts = []
        for centre in (k * step for k in range(1, round(blob.width / step))):
            near = range(max(1, round(centre - step / 3)), min(blob.width - 1, round(centre + step / 3)) + 1)
            cuts.append(blob.left + min((counts[x], abs(x - centre), x) for x in near)[2])
    elif blob.width > 1.15 * line.typical and (seam := _seam(blob, line)) is not None:
        cuts = [seam]
    else:
        return [blob]
    bounds = itertools.pairwise([blob.left, *cuts, blob.right])
    pieces = [
        [(y, max(a, x0), min(b, x1)) for y, a, b in blob.runs if a < x1 and b > x0] for x0, x1 in bounds
    ]
    return [Blob.of(runs) for runs in pieces if runs]


def _seam(blob: Blob, line: _Line) -> int | None:
    """Where two glyphs touching at their top or bottom meet (``2/`` small and slanted): the thinnest
    column of the middle third holding one short run of ink off the line's middle, with ink over 0.6
    of the line's height on either side. ``+ × x`` are thin only across the middle, and digits have
    two runs or more in their middle columns."""
    third = blob.width // 3
    necks = sorted(
        (len(ink), abs(2 * x - blob.width), blob.left + x)
        for x, ink in enumerate(blob.columns())
        if third <= x < blob.width - third
        and ink
        and max(ink) - min(ink) + 1 == len(ink) <= line.height / 3
        and line.off_middle(min(ink), max(ink) + 1) > 0.25
    )
    for _, _, x in necks:
        left = [row for row, start, _ in blob.runs if start < x]
        right = [row for row, _, end in blob.runs if end > x]
        if min(max(left) - min(left), max(right) - min(right)) + 1 > 0.6 * line.height:
            return x
    return None


def _stacked(parts: list[Blob]) -> list[Blob]:
    """Parts one above the other in the same columns as one glyph (``=``, ``÷``, the dot of ``?``, a
    glyph broken across), and a part inside another's box (the dot in a monospaced ``0``); parts side
    by side stay apart, however their columns overlap (a slanted ``/`` by a digit, tight digits)."""
    glyphs: list[Blob] = []
    for part in parts:  # left to right
        for glyph in reversed(glyphs[-3:]):
            inside = (
                glyph.columns_shared(part) == part.width
                and glyph.top <= part.top <= part.bottom <= glyph.bottom
            )
            above = 2 * glyph.columns_shared(part) >= min(glyph.width, part.width)
            if inside or (above and 2 * glyph.rows_shared(part) <= max(2, min(glyph.height, part.height))):
                glyph.join(part)
                break
        else:
            glyphs.append(part)
    return glyphs


def _without_specks(glyphs: list[Blob], line: _Line, dropped: list[Blob]) -> list[Blob]:
    """The glyphs without specks, which go to `dropped`. A bit across the line's middle, as wide as tall
    and a fifth of its height wide or more, is a dash. Any other bit under 0.45 of that height is a
    piece of the glyph whose columns it (nearly) touches (the end of a serif ``?``'s hook), else a
    speck if under 0.3 of it or narrow, else a glyph drawn small and broken (a serif ``*``)."""
    reach, widest = max(1, line.height // 10), 1.25 * line.typical  # a piece's gap to its glyph; a glyph
    kept: list[Blob] = []
    for k, bit in enumerate(glyphs):
        size, pair = max(bit.width, bit.height), kept[-1:] + glyphs[k + 1 : k + 2]
        near = [glyph for glyph in pair if glyph.span(bit) <= min(widest, glyph.width + bit.width + reach)]
        middle = line.off_middle(bit.top, bit.bottom) <= 0.3
        dash = middle and bit.width >= max(2, line.height / 5, bit.height)
        small = size >= 0.3 * line.height and 5 * bit.width >= line.height and bit.width > 2  # not a speck
        if dash or size >= 0.45 * line.height or (small and not near):
            kept.append(bit)
        elif near:
            near[0].join(bit)
        else:
            dropped.append(bit)
    return kept


def _rejoined(glyphs: list[Blob], line: _Line) -> list[Blob]:
    """Neighbours no wider together than one glyph, side by side and alike in height, as one: a glyph
    that lost its thin strokes (a serif ``0`` broken into ``( )``, a ``*`` into its petals). Two real
    glyphs are wider (even ``-1``), lower (``--``) or unlike (``/-``)."""
    out: list[Blob] = []
    for glyph in glyphs:
        last = out[-1] if out else None
        if (
            last is not None
            and 10 * min(last.height, glyph.height) >= 3 * line.height
            and 2 * last.rows_shared(glyph) >= max(last.height, glyph.height)
            and last.span(glyph) <= 1.25 * line.typical
        ):
            last.join(glyph)
        else:
            out.append(glyph)
    return out
