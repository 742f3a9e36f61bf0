"""`make model ARGS=--quick`: the whole build (data, tokenizer, training, checkpoint files, checksums)
runs end to end in minutes, writes a loadable checkpoint elsewhere and never touches the shipped one."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "thinkgate-arith"


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_quick_build_runs_end_to_end(tmp_path: Path) -> None:
    from app.checkpoint import verify_checkpoint

    before = _digest(SHIPPED)
    out = tmp_path / "quick-model"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "training.build", "--quick", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "[build] done" in result.stdout
    assert "| long | text | hard |" in result.stdout  # the in-process evaluation table was printed
    assert elapsed < 600

    verify_checkpoint(out)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Idefics3ForConditionalGeneration"]
    report = json.loads((out / "build_report.json").read_text())
    assert report["train"]["steps"] >= 1
    assert not out.with_name(out.name + ".partial").exists()
    assert _digest(SHIPPED) == before


def test_quick_build_refuses_the_shipped_folder() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.build", "--quick", "--out", str(SHIPPED)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "never writes the shipped model" in result.stderr
