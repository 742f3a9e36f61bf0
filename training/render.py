"""Render problems as images: Pillow's default font, sizes 14-28, black on white or light noise,
random position, canvases 96-256 px a side."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE, MAX_SIDE = 96, 256
MIN_FONT, MAX_FONT = 14, 28
MARGIN = 4
# Stages with normalised images (build.py: Stage.normalised) draw every problem through the gateway's
# glyph-grid layout (app/profiles/thinkgate_arith.py), as the thinkgate-arith profile serves images.
NORMALISED = False


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _text_box(text: str, size: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = _font(size).getbbox(text)
    return int(left), int(top), int(right), int(bottom)


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the text was drawn: what the vision tower's reading supervision needs."""

    text: str
    font_size: int
    x: int
    y: int
    width: int
    height: int


def render_problem(text: str, rng: random.Random) -> Image.Image:
    """Draw ``text`` at a random size and position on a random canvas; the text always fits."""
    return render_with_layout(text, rng)[0]


def render_with_layout(text: str, rng: random.Random) -> tuple[Image.Image, Layout]:
    """`render_problem`, and where the text went (the same random draws: the same image)."""
    size = rng.randint(MIN_FONT, MAX_FONT)
    while size > MIN_FONT and _text_box(text, size)[2] + 2 * MARGIN > MAX_SIDE:
        size -= 1
    left, top, right, bottom = _text_box(text, size)
    need_w, need_h = right + 2 * MARGIN, bottom + 2 * MARGIN
    width = rng.randint(max(MIN_SIDE, need_w), max(MAX_SIDE, need_w))
    height = rng.randint(max(MIN_SIDE, need_h), MAX_SIDE)
    if rng.random() < 0.5:
        image = Image.new("RGB", (width, height), "white")
    else:
        # Light noise: grey levels 200-255, so black text stays clearly readable.
        noise = np.random.default_rng(rng.getrandbits(32)).integers(
            200, 256, (height, width, 1), dtype=np.uint8
        )
        image = Image.fromarray(np.repeat(noise, 3, axis=2), "RGB")
    x = rng.randint(MARGIN - left, max(MARGIN - left, width - right - MARGIN))
    y = rng.randint(MARGIN - top, max(MARGIN - top, height - bottom - MARGIN))
    ImageDraw.Draw(image).text((x, y), text, fill="black", font=_font(size))
    if NORMALISED:
        from app.profiles.thinkgate_arith import glyph_grid

        image = glyph_grid(image)[0]
    return image, Layout(text, size, x, y, width, height)


def char_centres(layout: Layout) -> list[tuple[str, float, float]]:
    """Each visible character and its centre, in the canvas's pixels."""
    font = _font(layout.font_size)
    _, top, _, bottom = _text_box(layout.text, layout.font_size)
    centre_y = layout.y + (top + bottom) / 2
    out, left = [], 0.0
    for i, char in enumerate(layout.text):
        right = float(font.getlength(layout.text[: i + 1]))
        if not char.isspace():
            out.append((char, layout.x + (left + right) / 2, centre_y))
        left = right
    return out
