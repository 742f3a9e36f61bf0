"""`make model ARGS=--quick`: the whole build (data, tokenizer, training, checkpoint files, checksums)
runs end to end in minutes, writes a loadable checkpoint elsewhere and never touches the shipped one."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from training.build import (  # noqa: E402
    DEFAULT_RECIPE,
    QUICK_MINUTES,
    RECIPES,
    Stage,
    quick_stages,
    stage_settings,
)
from training.train import TrainSettings  # noqa: E402

SHIPPED = ROOT / "models" / "thinkgate-arith"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_quick_build_runs_end_to_end(tmp_path: Path) -> None:
    from app.engine.checkpoint import verify_checkpoint

    before = _digest(SHIPPED)
    out = tmp_path / "quick-model"
    result = subprocess.run(
        [sys.executable, "-m", "training.build", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip  # the issue's "under 5 minutes" with room for a loaded CI machine
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[build] done" in result.stdout
    assert "| long | text | hard |" in result.stdout  # the in-process evaluation table was printed

    verify_checkpoint(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"]
    report = json.loads((out / "build_report.json").read_text())
    assert report["train"]["steps"] >= 1
    # Every stage of the recipe ran, in order: the quick build is the recipe's shape, scaled down.
    assert [stage["kind"] for stage in report["stages"]] == [stage.kind for stage in RECIPES[DEFAULT_RECIPE]]
    assert not out.with_name(out.name + ".partial").exists()
    assert _digest(SHIPPED) == before


def test_quick_build_refuses_the_shipped_folder() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.build", "--quick", "--out", str(SHIPPED)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "never writes the shipped model" in result.stderr


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_quick_builds_run_each_recipes_stages_in_proportion(name: str) -> None:
    recipe = RECIPES[name]
    quick = quick_stages(recipe)
    assert [(s.kind, s.lr, s.seed, s.normalised) for s in quick] == [
        (s.kind, s.lr, s.seed, s.normalised) for s in recipe
    ]
    assert sum(s.minutes for s in quick) == pytest.approx(QUICK_MINUTES)
    first, last = recipe[0].minutes, recipe[-1].minutes
    assert quick[0].minutes / quick[-1].minutes == pytest.approx(first / last)


def test_a_stage_passes_its_own_settings_to_training() -> None:
    joint = Stage(10.0, 4e-4, "joint", normalised=True, train={"vision_lr_mult": 1.0})
    settings = stage_settings(joint, default_seed=77)
    assert (settings.kind, settings.lr, settings.minutes) == (joint.kind, joint.lr, joint.minutes)
    assert settings.vision_lr_mult == 1.0
    assert settings.seed == 77  # no seed of its own: the build's
    assert stage_settings(Stage(10.0, 1e-3, seed=5), default_seed=77).seed == 5
    assert settings.eval_every_s == joint.minutes * 60 / 4
    assert stage_settings(joint, 77, quick=True).eval_every_s == joint.minutes * 30
    assert (settings.batch, settings.image_rate) == (24, TrainSettings.image_rate)


def test_a_text_only_stage_draws_no_images_and_its_own_batch_size() -> None:
    from training import train as tr
    from training.build import resumed_tokenizer

    text_only = next(s for s in RECIPES[DEFAULT_RECIPE] if not s.images)
    settings = stage_settings(text_only, default_seed=3)
    batch = text_only.train["batch"]
    assert (settings.image_rate, settings.short_image_rate, settings.batch) == (0.0, 0.0, batch)
    stream = tr.batches(resumed_tokenizer(SHIPPED), settings, random.Random(3))
    first = [next(stream) for _ in range(8)]  # one pool: 8 batches
    assert [ids.shape[0] for ids, *_ in first] == [batch] * 8
    assert all(images == [] for _, _, _, images, _ in first)
    # The same stage with images draws some (the default rates): the switch is what removed them.
    with_images = stage_settings(replace(text_only, images=True), default_seed=3)
    stream = tr.batches(resumed_tokenizer(SHIPPED), with_images, random.Random(3))
    assert any(images for _, _, _, images, _ in (next(stream) for _ in range(8)))
