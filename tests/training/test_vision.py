"""The training stages after the text ones: reading images (training/vision.py, the `vision` and `joint`
stage kinds, the glyph-grid layout of app/profiles/thinkgate_arith.py) and the short-mode `drill`. The
reading labels follow the drawn text, each stage kind trains the parameters it should, and the drill's
data is what it claims."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]

from transformers import PreTrainedTokenizerFast  # noqa: E402

from tests.support import inked_cells  # noqa: E402
from training import examples as E  # noqa: E402
from training import modelcfg as mc  # noqa: E402
from training import problems as pb  # noqa: E402
from training import train as tr  # noqa: E402
from training import vision as V  # noqa: E402
from training.render import canonical, render_problem, render_with_layout  # noqa: E402


@pytest.mark.parametrize("seed", range(8))
def test_reading_labels_follow_the_drawn_text(seed: int) -> None:
    rng = random.Random(seed)
    text = pb.image_text(pb.sample_problem(rng, "hard" if seed % 2 else "easy"), rng)
    image, layout = render_with_layout(text, random.Random(seed))
    assert np.array_equal(np.asarray(image), np.asarray(render_problem(text, random.Random(seed))))
    labels = V.cell_labels(layout)
    # The text as written, without its spaces, each operator in its canonical form (× and x are *, ÷ is
    # /, − is -): row-major over the cells, slot by slot, when the line is level (a slanted line may
    # cross from one row of cells to the next).
    read = "".join(V.CHARS[c] for c in labels.reshape(-1) if c != V.BLANK)
    assert sorted(read) == sorted(canonical(text).replace(" ", ""))
    level = dataclasses.replace(layout.style, angle=0.0)
    labels = V.cell_labels(render_with_layout(text, random.Random(seed), style=level)[1])
    assert "".join(V.CHARS[c] for c in labels.reshape(-1) if c != V.BLANK) == canonical(text).replace(" ", "")
    # Every labelled cell holds ink in the image as the processor squares it.
    squared = np.asarray(image.convert("L").resize((mc.IMAGE_SIDE, mc.IMAGE_SIDE)))
    cell = mc.IMAGE_SIDE // V.GRID
    labels = V.cell_labels(layout)
    for row, col in zip(*np.nonzero((labels != V.BLANK).any(-1)), strict=True):
        assert squared[row * cell : (row + 1) * cell, col * cell : (col + 1) * cell].min() < 128


def _tiny_model() -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
    tok = PreTrainedTokenizerFast.from_pretrained(str(ROOT / "models" / "thinkgate-arith"))
    size = mc.Size(hidden=64, layers=1, heads=2, ffn=128, vision_hidden=32, vision_layers=1, vision_heads=2,
                   vision_ffn=64)  # fmt: skip
    return tr.new_model(mc.build_config(tok, size), seed=0), tok


def _changed(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> tuple[bool, bool]:
    """(did the language model change, did the vision side change)"""
    vision = {id(p) for p in V.vision_parameters(model)}
    text_changed = vision_changed = False
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if id(p) in vision:
            vision_changed |= moved
        else:
            text_changed |= moved
    return text_changed, vision_changed


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "expected"), [("vision", (False, True)), ("joint", (True, True))])
def test_stage_kinds_train_what_they_should(kind: str, expected: tuple[bool, bool]) -> None:
    torch.manual_seed(0)
    model, tok = _tiny_model()
    head = V.reading_head(model)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    head_before = head.weight.detach().clone()
    settings = tr.TrainSettings(minutes=0.02, batch=4, pool=1, warmup_s=0.0, kind=kind, seed=1)
    stats = tr.train(model, tok, settings, head=head)
    assert stats["steps"] >= 1 and "reading_accuracy" in stats
    assert _changed(model, before) == expected  # a vision stage leaves the language model alone
    assert not torch.equal(head.weight.detach(), head_before)
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the stage


@pytest.mark.slow
def test_glyph_grid_shows_one_glyph_per_cell_in_reading_order() -> None:
    """app/profiles/thinkgate_arith.py, on rendered problems of both splits, white and noisy backgrounds, all
    font sizes: nearly always as many glyphs as characters, and each cell's ink where it should be."""
    from app.profiles.thinkgate_arith import glyph_grid, glyphs_of

    rng = random.Random(11)
    right, total = 0, 600
    for _ in range(total):
        text = pb.image_text(pb.sample_problem(rng, rng.choice(["easy", "hard"])), rng)
        image, found = glyph_grid(render_problem(text, rng))
        chars = glyphs_of(text)
        right += found == len(chars)
        assert inked_cells(image) == list(range(found)), text  # cells 0..found-1, in order
    assert right / total >= 0.985, right / total


def test_normalised_stages_render_and_label_glyph_by_glyph(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a stage with normalised images, training renders glyph-grid images and labels cell k
    with character k (the usual labels follow the drawn text instead)."""
    from training import render

    monkeypatch.setattr(render, "NORMALISED", True)
    for text, labelled in [
        ("345 x 67 = ?", "345*67=?"),
        ("98765 ÷ 43", "98765/43"),
        ("-12 − 4 × 3", "-12-4*3"),
    ]:
        image, layout = render_with_layout(text, random.Random(3))
        labels = V.cell_labels(layout)
        shown = "".join(V.CHARS[c] for c in labels[..., 0].reshape(-1) if c != V.BLANK)
        assert shown == labelled and (labels[..., 1:] == V.BLANK).all()
        assert inked_cells(image) == list(range(len(shown)))


def test_every_drawn_character_has_a_reading_class() -> None:
    """The reading head's classes cover every glyph an image can show, each operator by the ASCII form
    it stands for (the form the language model restates it in)."""
    rng = random.Random(4)
    drawn = {char for _ in range(2000) for char in pb.image_text(pb.sample_problem(rng), rng)} - {" "}
    assert {"×", "x", "*", "÷", "/", "−", "-"} <= drawn
    assert {canonical(char) for char in drawn} <= set(V.CHARS) and len(set(V.CHARS)) == len(V.CHARS)
    assert len(V.CHARS) == V.BLANK


def test_drill_examples_are_short_solutions_to_easy_and_harder_problems() -> None:
    """The drill: short mode, text, half from the easy split, a third in conversations; the reply is
    the short solution (examples.target_segments), never a held-out problem."""
    rng = random.Random(5)
    easy = talks = 0
    for _ in range(3000):
        ex = E.drill_example(rng)
        assert ex.problem is not None and not ex.long and ex.image is None and ex.phase == ""
        easy += max(abs(ex.problem.a), abs(ex.problem.b)) < 100
        talks += bool(ex.history)
        reply = "".join(text for text, _ in E.target_segments(ex, rng))
        assert reply.startswith(ex.problem.compact) and "<think>" not in reply
    assert 0.5 < easy / 3000 < 0.75 and 0.25 < talks / 3000 < 0.35  # the easy split, and some train ones
    held = frozenset(pb.sample_problem(random.Random(0), "easy") for _ in range(200))
    assert all(E.drill_example(rng, held).problem not in held for _ in range(500))


def test_drill_batches_fit_the_token_budget() -> None:
    tok = PreTrainedTokenizerFast.from_pretrained(str(ROOT / "models" / "thinkgate-arith"))
    settings = tr.TrainSettings(kind="drill", pool=2, drill_tokens=2048)
    stream = tr.batches(tok, settings, random.Random(2))
    sizes = [next(stream)[0].shape for _ in range(12)]
    assert all(n * length <= 2048 or n == 1 for n, length in sizes), sizes
    assert max(n for n, _ in sizes) > settings.batch  # the short examples come many at a time


@pytest.mark.slow
def test_drill_stage_trains_the_language_model_without_the_reading_head() -> None:
    torch.manual_seed(0)
    model, tok = _tiny_model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    settings = tr.TrainSettings(minutes=0.02, pool=1, warmup_s=0.0, kind="drill", seed=1, drill_tokens=1024)
    stats = tr.train(model, tok, settings)
    assert stats["steps"] >= 1 and "reading_accuracy" not in stats
    assert _changed(model, before)[0]


@pytest.mark.parametrize("mult", [1.0, 5.0])
def test_joint_stages_train_the_vision_side_at_their_multiple(mult: float) -> None:
    model, _ = _tiny_model()
    head = V.reading_head(model)
    vision = {id(p) for p in V.vision_parameters(model)} | {id(p) for p in head.parameters()}
    groups = tr._param_groups(model, head, tr.TrainSettings(kind="joint", vision_lr_mult=mult))
    for group in groups:
        sides = {id(p) in vision for p in group["params"]}  # type: ignore[attr-defined]
        assert len(sides) == 1  # a group is all vision or all language model
        assert group["lr_mult"] == (mult if sides.pop() else 1.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 2  # type: ignore[arg-type,misc]
