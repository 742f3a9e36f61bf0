"""The bundled model's own rules (models/profiles/thinkgate-arith.toml): its image geometry and the
glyph-grid image layout, a line of text redrawn one glyph per image token, in reading order.

A model whose vision tower sees a 256-pixel square as an 8×8 grid of tokens (the bundled
thinkgate-arith) cannot reliably read a problem drawn at any size and place: a character can fall
anywhere in the grid, several to a token. This step removes that variation before the engine sees
the image. It crops to the ink, splits the line into glyphs at blank columns (a glyph over 1.6 times
the usual width, two that touch, is cut at its thinnest column), and draws the k-th glyph, scaled to
one line height, centred in the k-th 32×32 cell in reading order. Token k then holds character k.

The profile asks for it with ``image_layout = "glyph-grid"``, the name it is registered under
(app/profiles/steps.py); the gateway applies it to every image after the usual checks
(app/pipeline/media.py). Training takes the geometry from here and draws its images through the same
function (training/modelcfg.py, training/render.py), so the model sees exactly what the gateway sends.

Light text on a dark background is inverted first, and transparency is flattened onto white.
"""

from __future__ import annotations

from PIL import Image, ImageOps

from app.profiles.steps import register_image_layout

IMAGE_SIDE = 256  # every image is squared to this (no splitting): few image tokens, one fixed shape
PATCH = 16  # the vision tower's patch side, in pixels
SCALE = 2  # pixel shuffle: (256/16)^2 / 2^2 = 64 image tokens
CELL = PATCH * SCALE  # pixels per image token side
GRID = IMAGE_SIDE // CELL  # image tokens per side
LINE_HEIGHT = 24  # a glyph's line height inside its cell
INK = 90  # grey levels below this are ink (the training backgrounds are 200 or lighter)
_PAPER = [0] * INK + [255] * (256 - INK)  # grey level -> 0 for ink, 255 for everything else


@register_image_layout("glyph-grid")
def glyph_grid_layout(image: Image.Image) -> Image.Image:
    return glyph_grid(image)[0]


def glyph_grid(image: Image.Image) -> tuple[Image.Image, int]:
    """The image redrawn with its glyphs one per cell (RGB, IMAGE_SIDE × IMAGE_SIDE), and how many
    glyphs it found (only the first GRID × GRID are drawn)."""
    paper = _grey(image).point(_PAPER)
    out = Image.new("L", (IMAGE_SIDE, IMAGE_SIDE), 255)
    inked = ImageOps.invert(paper).getbbox()
    if inked is None:
        return out.convert("RGB"), 0
    top, bottom = inked[1], inked[3]
    height = bottom - top
    # The line's columns as rows of bytes: counting a column's ink is one bytes.count in C.
    columns = paper.crop((0, top, paper.width, bottom)).transpose(Image.Transpose.TRANSPOSE).tobytes()
    counts = [columns[x * height : (x + 1) * height].count(0) for x in range(paper.width)]
    glyphs = _split_wide(_runs(counts), counts)
    scale = LINE_HEIGHT / height
    glyph_height = max(1, round(height * scale))
    for k, (left, right) in enumerate(glyphs[: GRID * GRID]):
        width = max(1, min(CELL - 2, round((right - left) * scale)))
        glyph = paper.crop((left, top, right, bottom)).resize(
            (width, glyph_height), Image.Resampling.BILINEAR
        )
        x, y = (k % GRID) * CELL, (k // GRID) * CELL
        out.paste(glyph, (x + (CELL - width) // 2, y + (CELL - glyph_height) // 2))
    return out.convert("RGB"), len(glyphs)


def glyphs_of(text: str) -> list[str]:
    """The characters a glyph-grid image of `text` shows, cell by cell."""
    return [char for char in text if not char.isspace()]


def _grey(image: Image.Image) -> Image.Image:
    """Grey levels with dark ink on a light background, whatever the source's polarity and alpha."""
    if image.has_transparency_data:
        flat = Image.new("RGBA", image.size, (255, 255, 255, 255))
        flat.alpha_composite(image.convert("RGBA"))
        image = flat
    grey = image.convert("L")
    if _median(grey.histogram(), grey.width * grey.height) < 128:  # light text on a dark background
        grey = ImageOps.invert(grey)
    return grey


def _median(histogram: list[int], total: int) -> float:
    """The median grey level (the mean of the two middle ones when `total` is even)."""
    middle = ((total - 1) // 2, total // 2)
    found: list[int] = []
    seen = 0
    for level, count in enumerate(histogram):
        seen += count
        while len(found) < 2 and seen > middle[len(found)]:
            found.append(level)
        if len(found) == 2:
            break
    return sum(found) / 2


def _runs(counts: list[int]) -> list[tuple[int, int]]:
    """[start, end) of each run of columns with ink."""
    runs: list[tuple[int, int]] = []
    start = None
    for x, count in enumerate(counts):
        if count and start is None:
            start = x
        elif not count and start is not None:
            runs.append((start, x))
            start = None
    if start is not None:
        runs.append((start, len(counts)))
    return runs


def _split_wide(glyphs: list[tuple[int, int]], counts: list[int]) -> list[tuple[int, int]]:
    """Cut a glyph over 1.6 times the median width at its thinnest column (two glyphs touching)."""
    if len(glyphs) < 2:
        return glyphs
    typical = sorted(b - a for a, b in glyphs)[len(glyphs) // 2]
    out = []
    for a, b in glyphs:
        if b - a > 1.6 * typical and b - a > 4:
            lo, hi = a + (b - a) // 4, b - (b - a) // 4
            cut = min(range(lo, hi), key=counts.__getitem__)  # the first thinnest, as argmin
            out.extend([(a, cut), (cut, b)])
        else:
            out.append((a, b))
    return out
