"""Render problems as images, as a reader might photograph or screenshot them: real TrueType fonts
(the DejaVu and STIX families that ship inside matplotlib's wheel, regular and bold), sizes 12-48 px,
a random place on a canvas of up to 256 px a side, dark ink on white, a light tint or light noise,
sometimes a few pixels of dust, a slight rotation, and often JPEG re-encoding.

One family, ``HELD_OUT_FAMILY``, is never drawn in training: evaluation draws it
(``render_with_layout(..., families=(HELD_OUT_FAMILY,))``) to tell reading a new font from knowing the
trained ones. The operators come in the forms people write (``× x *``, ``÷ /``, ``− -``); ``canonical``
gives the ASCII form each stands for, which the reading labels (training/vision.py) and the model's
restatement use."""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_SIDE, MAX_SIDE = 64, 256
MIN_FONT, MAX_FONT = 12, 48
MARGIN = 3  # pixels between the (rotated) text and the canvas's edge, at least
MAX_ANGLE = 3.0  # degrees either way
PAPERS = ("white", "tint", "noise")
PAPER_WEIGHTS = (3, 3, 4)
JPEG_RATE, JPEG_QUALITY = 0.5, (40, 90)
DUST_RATE = 0.2  # images with a few dark pixels of dust anywhere, the text included
# Stages with normalised images (build.py: Stage.normalised) draw every problem through the gateway's
# glyph-grid layout (app/profiles/thinkgate_arith.py), as the thinkgate-arith profile serves images.
NORMALISED = False

# Font families and their weights, as files of matplotlib's mpl-data/fonts/ttf. Each has a glyph for
# every character problems are drawn with (tests/training/test_render.py); the Computer Modern fonts
# there lack − × ÷, and the italics would need glyphs cut on a slant, so neither is drawn.
FAMILIES: dict[str, tuple[str, ...]] = {
    "DejaVu Sans": ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
    "DejaVu Sans Mono": ("DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf"),
    "STIX General": ("STIXGeneral.ttf", "STIXGeneralBol.ttf"),
    "DejaVu Serif": ("DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf"),
}
# A serif held out: the trained ones cover its style (STIX General is a serif, DejaVu Sans its design).
HELD_OUT_FAMILY = "DejaVu Serif"
TRAIN_FAMILIES = tuple(family for family in FAMILIES if family != HELD_OUT_FAMILY)

# What each drawn operator stands for, in the ASCII form the model restates problems in.
CANONICAL = {"×": "*", "x": "*", "÷": "/", "−": "-"}
_CANONICAL = str.maketrans(CANONICAL)


def canonical(text: str) -> str:
    """`text` with each operator in its canonical form (``×`` and ``x`` are ``*``, ``÷`` is ``/``,
    ``−`` is ``-``), character for character."""
    return text.translate(_CANONICAL)


@dataclass(frozen=True, slots=True)
class Style:
    """How a problem is drawn; the place, the ink and the paper's noise are drawn at random with it."""

    font: str  # a file of FAMILIES
    size: int  # pixels per em, before shrinking to fit the canvas
    angle: float  # degrees, counter-clockwise
    paper: str  # one of PAPERS
    jpeg: int | None  # re-encoded at this JPEG quality, or not
    dust: bool


def random_style(rng: random.Random, families: tuple[str, ...] = TRAIN_FAMILIES) -> Style:
    """A style as training draws them: a font of `families` and any size, slant, paper and JPEG."""
    return Style(
        font=rng.choice(FAMILIES[rng.choice(families)]),
        size=rng.randint(MIN_FONT, MAX_FONT),
        angle=rng.uniform(-MAX_ANGLE, MAX_ANGLE),
        paper=rng.choices(PAPERS, PAPER_WEIGHTS)[0],
        jpeg=rng.randint(*JPEG_QUALITY) if rng.random() < JPEG_RATE else None,
        dust=rng.random() < DUST_RATE,
    )


@dataclass(frozen=True, slots=True)
class Layout:
    """What was drawn, and where: what the vision tower's reading supervision needs."""

    text: str
    style: Style
    font_size: int  # as drawn
    width: int  # the canvas
    height: int
    centres: tuple[tuple[str, float, float], ...]  # each visible character and where it is drawn


def render_problem(text: str, rng: random.Random) -> Image.Image:
    """Draw ``text`` in a random style at a random place on a random canvas; the text always fits."""
    return render_with_layout(text, rng)[0]


def render_with_layout(
    text: str, rng: random.Random, *, families: tuple[str, ...] = TRAIN_FAMILIES, style: Style | None = None
) -> tuple[Image.Image, Layout]:
    """`render_problem` in one of `families` (or in `style`), and what went where (the same random
    draws: the same image)."""
    style = random_style(rng, families) if style is None else style
    size = style.size
    while (
        size > MIN_FONT
        and _turned_size(_font(style.font, size), text, style.angle)[0] + 2 * MARGIN > MAX_SIDE
    ):
        size -= 1
    font = _font(style.font, size)
    span_x, span_y = _turned_size(font, text, style.angle)
    need_x, need_y = math.ceil(span_x) + 2 * MARGIN, math.ceil(span_y) + 2 * MARGIN
    width = rng.randint(max(MIN_SIDE, need_x), max(MAX_SIDE, need_x))
    height = rng.randint(max(MIN_SIDE, need_y), max(MAX_SIDE, need_y))
    centre = (rng.uniform(MARGIN + span_x / 2, width - MARGIN - span_x / 2),
              rng.uniform(MARGIN + span_y / 2, height - MARGIN - span_y / 2))  # fmt: skip
    left, top, right, bottom = font.getbbox(text)
    origin = (centre[0] - (left + right) / 2, centre[1] - (top + bottom) / 2)
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).text(origin, text, fill=255, font=font)
    # The text turns about its centre, and then goes onto the paper: no corner of the canvas is bare.
    mask = mask.rotate(style.angle, Image.Resampling.BICUBIC, center=centre)
    image = _paper(style.paper, rng, width, height)
    image.paste(_ink(rng), mask=mask)
    if style.dust:
        _dust(image, rng)
    if style.jpeg is not None:
        image = _jpeg(image, style.jpeg)
    centres = tuple(_turned(char, origin, centre, style.angle) for char in _char_centres(font, text))
    if NORMALISED:
        from app.profiles.thinkgate_arith import glyph_grid

        image = glyph_grid(image)[0]
    return image, Layout(text, style, size, width, height, centres)


@cache
def font_dir() -> Path:
    """matplotlib's bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=1024)
def _font(file: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / file), size)


def _turned_size(font: ImageFont.FreeTypeFont, text: str, angle: float) -> tuple[float, float]:
    """The width and height the text's ink box spans once turned by `angle` degrees."""
    left, top, right, bottom = font.getbbox(text)
    cos, sin = math.cos(math.radians(angle)), abs(math.sin(math.radians(angle)))
    return (right - left) * cos + (bottom - top) * sin, (right - left) * sin + (bottom - top) * cos


def _char_centres(font: ImageFont.FreeTypeFont, text: str) -> list[tuple[str, float, float]]:
    """Each visible character, its ink's centre across and the line's centre down (one row of cells
    for a level line, in reading order), from the text's origin before it turns."""
    _, top, _, bottom = font.getbbox(text)
    out = []
    for i, char in enumerate(text):
        if not char.isspace():
            left, _, right, _ = font.getbbox(char)
            out.append((char, font.getlength(text[:i]) + (left + right) / 2, (top + bottom) / 2))
    return out


def _turned(
    char: tuple[str, float, float], origin: tuple[float, float], centre: tuple[float, float], angle: float
) -> tuple[str, float, float]:
    """A character's centre on the canvas once the text drawn at `origin` is turned about `centre`."""
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    dx, dy = origin[0] + char[1] - centre[0], origin[1] + char[2] - centre[1]
    return char[0], centre[0] + dx * cos + dy * sin, centre[1] - dx * sin + dy * cos


def _paper(kind: str, rng: random.Random, width: int, height: int) -> Image.Image:
    """White, a light tint, or light noise (grey levels from 180-220 up to 255, maybe tinted)."""
    tint = (rng.randint(215, 255), rng.randint(215, 255), rng.randint(215, 255))
    if kind == "white":
        return Image.new("RGB", (width, height), "white")
    if kind == "tint":
        return Image.new("RGB", (width, height), tint)
    noise = np.random.default_rng(rng.getrandbits(32)).integers(
        rng.randint(180, 220), 256, (height, width, 1), dtype=np.uint16
    )
    return Image.fromarray((noise * np.array(tint, dtype=np.uint16) // 255).astype(np.uint8))


def _ink(rng: random.Random) -> tuple[int, int, int]:
    """Black half the time, else a dark grey or colour (every channel 90 or less)."""
    if rng.random() < 0.5:
        return 0, 0, 0
    if rng.random() < 0.5:
        level = rng.randint(0, 80)
        return level, level, level
    return rng.randint(0, 90), rng.randint(0, 90), rng.randint(0, 90)


def _dust(image: Image.Image, rng: random.Random) -> None:
    """A few dark pixels, anywhere."""
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 6)):
        level = rng.randint(0, 90)
        draw.point((rng.randrange(image.width), rng.randrange(image.height)), fill=(level, level, level))


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(buffer).convert("RGB")
