"""The bundled model's glyph-grid layout (app/profiles/thinkgate_arith.py) on what is easy to get
wrong: which side is ink (the paper is the median, the ink the far extreme), a threshold that adapts
to the paper, blank and noise-only images, a slanted line, parts that make one glyph (``÷ = ×``), glyphs
that touch, specks. Problems drawn in real fonts are checked in tests/training/test_render.py, through
the gateway in tests/pipeline/test_media.py."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from app.profiles import thinkgate_arith
from app.profiles.ink import median_level
from app.profiles.thinkgate_arith import CELL, GRID, IMAGE_SIDE, PATCH, SCALE, glyph_grid
from tests.support import inked_cells


def _drawn(text: str, ink: int, paper: int | Image.Image, size: int = 16) -> Image.Image:
    image = paper.copy() if isinstance(paper, Image.Image) else Image.new("L", (200, 60), paper)
    ImageDraw.Draw(image).text((12, 20), text, fill=ink, font=ImageFont.load_default(size=size))
    return image


def _noise(low: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    rng = random.Random(low)
    return Image.frombytes("L", size, bytes(rng.randint(low, 255) for _ in range(size[0] * size[1])))


def test_the_geometry_is_the_vision_towers() -> None:
    assert (IMAGE_SIDE, PATCH, SCALE, CELL, GRID) == (256, 16, 2, 32, 8)  # 64 image tokens


def test_the_median_is_the_mean_of_the_middle_two_for_an_even_count() -> None:
    histogram = [0] * 256
    histogram[127], histogram[128] = 2, 2
    assert median_level(histogram, 4) == 127.5
    histogram[128] = 3
    assert median_level(histogram, 5) == 128


def test_light_text_on_a_dark_half_is_still_read() -> None:
    dark = Image.new("L", (40, 10), 0)
    dark.paste(255, (0, 0, 20, 10))  # half black, half white: either could be the paper
    ImageDraw.Draw(dark).text((24, 0), "7", fill=255, font=ImageFont.load_default(size=9))
    assert glyph_grid(dark)[1] >= 1


@pytest.mark.parametrize(
    ("ink", "paper"),
    [
        (0, 255),
        (90, 235),
        (0, 110),
        (230, 30),
        (140, 0),
    ],  # dark on light (even dark grey paper), light on dark
)
def test_ink_is_told_from_paper_whatever_their_levels(ink: int, paper: int) -> None:
    image, found = glyph_grid(_drawn("345 x 67 = ?", ink, paper))
    assert found == 8 and inked_cells(image) == list(range(8))


@pytest.mark.parametrize(("ink", "low"), [(0, 190), (100, 170)])
def test_small_text_on_light_noise_is_found_and_noise_alone_is_blank(ink: int, low: int) -> None:
    """The ink is a small part of the image, so Otsu's split of the whole falls inside the noise: the
    ink is looked for below it, however grey. Noise alone has no ink far enough from the paper."""
    assert glyph_grid(_drawn("12 + 34 = ?", ink, _noise(low), size=12))[1] == 7
    assert glyph_grid(_noise(low))[1] == 0


def test_a_blank_image_has_no_glyph() -> None:
    image, found = glyph_grid(Image.new("RGB", (30, 30), "white"))
    assert found == 0 and image.size == (IMAGE_SIDE, IMAGE_SIDE) and inked_cells(image) == []


def test_a_slanted_line_is_levelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turned 5 degrees, every digit is still drawn at the same height in its cell and at full size;
    left slanted, the line's drift would shift them down cell by cell and shrink them all."""
    layer = Image.new("L", (200, 40), 0)
    ImageDraw.Draw(layer).text((5, 10), "1234567890", fill=255, font=ImageFont.load_default(size=16))
    layer = layer.rotate(5, Image.Resampling.BICUBIC, expand=True)
    slanted = Image.new("L", layer.size, 255)
    slanted.paste(0, mask=layer)

    def extents() -> list[tuple[int, int]]:
        image, found = glyph_grid(slanted)
        assert found == 10
        ink = np.asarray(image.convert("L")) < 128
        cells = [
            ink[(k // GRID) * CELL : (k // GRID + 1) * CELL, (k % GRID) * CELL :][:, :CELL] for k in range(10)
        ]
        return [(int(np.flatnonzero(c.any(1))[0]), int(np.flatnonzero(c.any(1))[-1])) for c in cells]

    tops, bottoms = zip(*extents(), strict=True)
    assert max(tops) - min(tops) <= 3 and min(b - t for t, b in zip(tops, bottoms, strict=True)) >= 18
    monkeypatch.setattr(thinkgate_arith, "_slope", lambda blobs: 0.0)
    tops, _ = zip(*extents(), strict=True)
    assert max(tops) - min(tops) > 3  # the check above can fail


def _shapes() -> Image.Image:
    """▮ ÷ ▮ = × ▮ + ▮/ ▮ (a digit and a slash touching at the foot), with specks on and off the line."""
    image = Image.new("L", (160, 40), 255)
    draw = ImageDraw.Draw(image)
    for left in (4, 32, 76, 104, 124):  # digits
        draw.rectangle((left, 10, left + 7 - (left == 104), 25), fill=0)
    draw.rectangle((16, 17, 27, 18), fill=0)  # ÷: a bar and two dots
    draw.rectangle((21, 12, 22, 13), fill=0)
    draw.rectangle((21, 22, 22, 23), fill=0)
    draw.rectangle((44, 15, 55, 16), fill=0)  # =
    draw.rectangle((44, 20, 55, 21), fill=0)
    draw.line((60, 12, 70, 23), fill=0, width=2)  # ×
    draw.line((60, 23, 70, 12), fill=0, width=2)
    draw.rectangle((88, 17, 99, 18), fill=0)  # +
    draw.rectangle((93, 12, 94, 23), fill=0)
    draw.line((111, 25, 118, 9), fill=0, width=2)  # /, its foot joined to the digit before it
    draw.rectangle((110, 24, 113, 25), fill=0)
    for x, y in ((14, 20), (42, 24), (101, 14), (140, 20), (80, 2), (150, 35)):
        draw.point((x, y), fill=0)
    return image


def test_parts_of_one_glyph_stay_together_and_touching_glyphs_come_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image, found = glyph_grid(_shapes())
    assert found == 10 and inked_cells(image) == list(range(10))
    monkeypatch.setattr(thinkgate_arith, "_seam", lambda blob, line: None)
    assert glyph_grid(_shapes())[1] == 9  # without the seam, ▮/ is one glyph


def test_specks_are_not_glyphs() -> None:
    clean = _drawn("345 x 67 = ?", 0, 255)
    specked = clean.copy()
    for x, y in ((5, 5), (6, 30), (150, 28), (190, 50), (100, 10)):  # in the line's gaps and off it
        specked.putpixel((x, y), 0)
    assert glyph_grid(specked)[1] == glyph_grid(clean)[1] == 8


def test_two_touching_glyphs_are_cut_at_their_thinnest_column() -> None:
    image = Image.new("L", (60, 20), 255)
    draw = ImageDraw.Draw(image)
    for left in (2, 14, 26, 36):  # four glyphs of 8 columns, the last two joined by a thin bridge
        draw.rectangle((left, 4, left + 7, 15), fill=0)
    draw.line((33, 10, 36, 10), fill=0)
    redrawn, found = glyph_grid(image)
    assert found == 4 and inked_cells(redrawn) == [0, 1, 2, 3]
