"""Teaching the vision tower to see characters: a dense reading loss on the image tokens.

Trained only through the language model's loss (restate the problem read from the image), the vision
tower never started: after 7,000 steps of the text stages, and 265 more steps of reading-only
examples, the restated digits were at chance. The language model had learned to ignore the image
tokens, so the gradient reaching the tower carried no signal (measured: token accuracy 21 % before
and after). This loss gives the tower a signal of its own. Each of the 8×8 image tokens covers a
32×32-pixel cell of the squared image; a linear head (used in training only, never shipped) predicts,
from the token, the characters whose centres fall in that cell, left to right, in ``SLOTS`` slots.
Since the text is one line, those cells are in reading order in the token sequence, which is what the
language model then has to learn to read.

Status (an experiment, not in the shipped recipe; see the model card): a `vision` stage of 30 minutes
on the shipped weights took the head's accuracy on the visible characters from chance to 81 %
(5,073 steps), so the tower now sees. The `joint` stage that should teach the language model to read
those tokens had not started to after 9 minutes (teacher-forced reading tokens 21 → 29 %, images
still 0 %), while the text skills slipped (long/text/hard probe 83 → 75 %). Next: the language
model needs a signal as direct as the tower's (e.g. a per-character position in the labels, so
reading becomes a copy by position, as it is from text).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Idefics3ForConditionalGeneration

from app.profiles.thinkgate_arith import CELL, GRID, IMAGE_SIDE, glyphs_of
from training import render
from training.render import Layout, canonical

# The reading classes: a drawn operator's class is its canonical form (training/render.py: ``×`` and
# ``x`` read as ``*``, ``÷`` as ``/``, ``−`` as ``-``), the form the language model restates it in.
CHARS = "0123456789+-*/=?"
BLANK = len(CHARS)  # an empty slot
SLOTS = 5  # the most characters one cell can hold at the smallest font


def cell_labels(layout: Layout) -> np.ndarray:
    """(GRID, GRID, SLOTS) class ids: each cell's characters left to right, then blanks."""
    labels = np.full((GRID, GRID, SLOTS), BLANK, dtype=np.int64)
    if render.NORMALISED:  # one glyph per cell, in reading order (app/profiles/thinkgate_arith.py)
        for k, char in enumerate(glyphs_of(canonical(layout.text))[: GRID * GRID]):
            if char in CHARS:
                labels[k // GRID, k % GRID, 0] = CHARS.index(char)
        return labels
    filled = np.zeros((GRID, GRID), dtype=np.int64)
    sx, sy = IMAGE_SIDE / layout.width, IMAGE_SIDE / layout.height  # the processor squares the image
    for drawn, x, y in layout.centres:
        char = canonical(drawn)
        if char not in CHARS:
            continue
        row, col = min(int(y * sy // CELL), GRID - 1), min(int(x * sx // CELL), GRID - 1)
        if filled[row, col] < SLOTS:
            labels[row, col, filled[row, col]] = CHARS.index(char)
            filled[row, col] += 1
    return labels


def reading_head(model: Idefics3ForConditionalGeneration) -> torch.nn.Linear:
    """The training-only head: image token → SLOTS character classes."""
    hidden: int = model.config.get_text_config().hidden_size
    return torch.nn.Linear(hidden, SLOTS * (len(CHARS) + 1))


def vision_parameters(model: Idefics3ForConditionalGeneration) -> list[torch.nn.Parameter]:
    """The vision tower's and the connector's parameters (everything but the language model)."""
    return [p for n, p in model.named_parameters() if "text_model" not in n and "lm_head" not in n]


def encode_images(model: Idefics3ForConditionalGeneration, pixels: torch.Tensor) -> Any:
    """The vision tower and connector on `pixels`, in the form the model's forward takes back
    (``mm_encoder_outputs={"image": ...}``), so a `joint` step runs the tower once for both losses."""
    return model.model.get_image_features(pixels, return_dict=True)


def image_tokens(encoded: Any, n_images: int) -> torch.Tensor:
    """(images, GRID*GRID, hidden): the connector's output, i.e. what the language model reads."""
    features: torch.Tensor = encoded.pooler_output
    return features.reshape(n_images, GRID * GRID, -1)


def reading_loss(
    head: torch.nn.Linear, tokens: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, float]:
    """Cross-entropy over every slot of every cell, and the accuracy on the non-blank slots."""
    logits = head(tokens).view(*labels.shape, len(CHARS) + 1).float()
    loss = F.cross_entropy(logits.reshape(-1, len(CHARS) + 1), labels.reshape(-1))
    visible = labels != BLANK
    right = (logits.argmax(-1) == labels) & visible
    return loss, right.sum().item() / max(int(visible.sum().item()), 1)
