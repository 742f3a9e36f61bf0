"""The bundled model's glyph-grid layout (app/profiles/thinkgate_arith.py) on what is easy to get
wrong: polarity decided by the median grey level, blank images, glyphs that touch. Rendered problems
of every size are checked in tests/training/test_vision.py, through the gateway in test_media.py."""

from __future__ import annotations

from PIL import Image, ImageDraw, ImageFont

from app.profiles.thinkgate_arith import CELL, GRID, IMAGE_SIDE, PATCH, SCALE, _median, glyph_grid
from tests.support import inked_cells


def test_the_geometry_is_the_vision_towers() -> None:
    assert (IMAGE_SIDE, PATCH, SCALE, CELL, GRID) == (256, 16, 2, 32, 8)  # 64 image tokens


def test_the_median_is_the_mean_of_the_middle_two_for_an_even_count() -> None:
    histogram = [0] * 256
    histogram[127], histogram[128] = 2, 2
    assert _median(histogram, 4) == 127.5
    histogram[128] = 3
    assert _median(histogram, 5) == 128


def test_light_text_on_a_dark_half_is_inverted_only_below_the_middle_grey() -> None:
    dark = Image.new("L", (40, 10), 0)
    dark.paste(255, (0, 0, 20, 10))  # half black, half white: the median is 127.5, dark paper
    ImageDraw.Draw(dark).text((24, 0), "7", fill=255, font=ImageFont.load_default(size=9))
    assert glyph_grid(dark)[1] >= 1


def test_a_blank_image_has_no_glyph() -> None:
    image, found = glyph_grid(Image.new("RGB", (30, 30), "white"))
    assert found == 0 and image.size == (IMAGE_SIDE, IMAGE_SIDE) and inked_cells(image) == []


def test_two_touching_glyphs_are_cut_at_their_thinnest_column() -> None:
    image = Image.new("L", (60, 20), 255)
    draw = ImageDraw.Draw(image)
    for left in (2, 14, 26, 36):  # four glyphs of 8 columns, the last two joined by a thin bridge
        draw.rectangle((left, 4, left + 7, 15), fill=0)
    draw.line((33, 10, 36, 10), fill=0)
    redrawn, found = glyph_grid(image)
    assert found == 4 and inked_cells(redrawn) == [0, 1, 2, 3]
