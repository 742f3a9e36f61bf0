"""Ink on paper: the grey image with dark ink on light paper, whatever the source's polarity, the level
below which a pixel is ink (Otsu's method, adapted to small text on large paper), and the ink's
connected parts. The first step of the bundled model's glyph grid (app/profiles/thinkgate_arith.py),
which finds a line of text among these parts.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

from PIL import Image, ImageOps

__all__ = ["Blob", "Run", "connected_parts", "dark_on_light", "median_level"]

MIN_CONTRAST = 48  # ink and paper whose mean grey levels are closer than this: nothing is written
_INK_RUN = re.compile(rb"[^\x00]+")  # a run of ink in a row of the binary image (ink 255, paper 0)


Run = tuple[int, int, int]  # row, first column, end column (exclusive)


@dataclass(slots=True)
class Blob:
    """Connected ink (8-neighbourhood), or several such parts taken as one glyph; bounds exclusive."""

    left: int
    top: int
    right: int
    bottom: int
    runs: list[Run]

    @classmethod
    def of(cls, runs: list[Run]) -> Blob:
        rows = [run[0] for run in runs]
        return cls(min(run[1] for run in runs), min(rows), max(run[2] for run in runs), max(rows) + 1, runs)

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def columns_shared(self, other: Blob) -> int:  # below 0: how many lie between them
        return min(self.right, other.right) - max(self.left, other.left)

    def rows_shared(self, other: Blob) -> int:
        return min(self.bottom, other.bottom) - max(self.top, other.top)

    def span(self, other: Blob) -> int:  # the width of the two together
        return max(self.right, other.right) - min(self.left, other.left)

    def columns(self) -> list[list[int]]:  # the rows holding ink, column by column
        out: list[list[int]] = [[] for _ in range(self.width)]
        for row, start, end in self.runs:
            for x in range(start - self.left, end - self.left):
                out[x].append(row)
        return out

    def join(self, other: Blob) -> None:
        self.left, self.top = min(self.left, other.left), min(self.top, other.top)
        self.right, self.bottom = max(self.right, other.right), max(self.bottom, other.bottom)
        self.runs.extend(other.runs)


def dark_on_light(image: Image.Image) -> tuple[Image.Image, int] | None:
    """Grey levels with dark ink on light paper, whatever the source's polarity and alpha, and the
    level below which a pixel is ink; None for an image with no ink on it (a single tone, or noise)."""
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    grey = image.convert("L")
    histogram = grey.histogram()
    total = grey.width * grey.height
    paper = median_level(histogram, total)
    # The ink is on the side whose extreme lies further from the paper (the median); a pixel in a
    # thousand is ignored as an outlier, and small text on a large image still counts.
    darkest, lightest = _nth_level(histogram, total // 1000), _nth_level(histogram, total - 1 - total // 1000)
    if lightest - paper > paper - darkest:  # light text on dark paper
        grey, histogram = ImageOps.invert(grey), histogram[::-1]
    level = ink_level(histogram)
    return None if level is None else (grey, level)


def ink_level(histogram: list[int]) -> int | None:
    """The grey level below which a pixel is ink: halfway between the mean levels of ink and paper,
    as Otsu's method splits them. When the ink is a small part of the image, that split may fall
    inside the paper's noise (classes closer than MIN_CONTRAST); the ink is then looked for below it."""
    top = len(histogram)
    while (split := _otsu(histogram[:top])) is not None:
        level, dark = split
        paper = histogram[level:]
        light = sum(i * count for i, count in enumerate(paper, start=level)) / sum(paper)
        if light - dark >= MIN_CONTRAST:
            return math.ceil((dark + light) / 2)
        top = level
    return None


def _otsu(histogram: list[int]) -> tuple[int, float] | None:
    """Otsu's threshold, the grey level that splits the pixels into the two classes furthest apart
    (dark: below it), and the dark class's mean level; None for pixels all of one level."""
    counts = list(itertools.accumulate(histogram))
    moments = list(itertools.accumulate(level * count for level, count in enumerate(histogram)))
    total, moment = counts[-1], moments[-1]
    splits = [
        (n * (total - n) * ((moment - m) / (total - n) - m / n) ** 2, -level, m / n)
        for level, (n, m) in enumerate(zip(counts, moments, strict=True), start=1)
        if 0 < n < total
    ]
    return (-max(splits)[1], max(splits)[2]) if splits else None


def _nth_level(histogram: list[int], n: int) -> int:
    """The grey level of the n-th darkest pixel (from 0)."""
    return next(level for level, seen in enumerate(itertools.accumulate(histogram)) if seen > n)


def median_level(histogram: list[int], total: int) -> float:
    """The median grey level (the mean of the two middle ones when `total` is even)."""
    return (_nth_level(histogram, (total - 1) // 2) + _nth_level(histogram, total // 2)) / 2


def connected_parts(ink: Image.Image) -> list[Blob]:
    """The ink's connected parts (8-neighbourhood): each row's runs of ink (found in C by a regular
    expression), joined to the runs they touch in the row above (union-find)."""
    width, data = ink.width, ink.tobytes()
    runs: list[Run] = []
    parent: list[int] = []
    above: list[int] = []
    for y in range(ink.height):
        row: list[int] = []
        first = 0  # runs above that end before this run starts cannot touch the next ones either
        for match in _INK_RUN.finditer(data, y * width, (y + 1) * width):
            start, end = match.start() - y * width, match.end() - y * width
            index = len(runs)
            runs.append((y, start, end))
            parent.append(index)
            while first < len(above) and runs[above[first]][2] < start:
                first += 1
            k = first
            while k < len(above) and runs[above[k]][1] <= end:
                parent[_root(parent, above[k])] = _root(parent, index)
                k += 1
            row.append(index)
        above = row
    parts: dict[int, list[Run]] = {}
    for index, run in enumerate(runs):
        parts.setdefault(_root(parent, index), []).append(run)
    return [Blob.of(part) for part in parts.values()]


def _root(parent: list[int], index: int) -> int:
    while parent[index] != index:
        parent[index] = parent[parent[index]]  # path halving
        index = parent[index]
    return index
