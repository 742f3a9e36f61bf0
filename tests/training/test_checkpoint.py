"""The shipped checkpoint: its checksums verify (and tampering is caught), it fits the size limit, and it
loads and runs in transformers for text and image prompts."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from app.engine.checkpoint import CheckpointError, verify_checkpoint  # noqa: E402

MODEL = ROOT / "models" / "thinkgate-arith"
MAX_BYTES = 25 * 1000 * 1000


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    target = tmp_path / "thinkgate-arith"
    shutil.copytree(MODEL, target)
    return target


def test_shipped_checkpoint_verifies_and_fits_the_size_limit() -> None:
    verify_checkpoint(MODEL)
    assert sum(p.stat().st_size for p in MODEL.iterdir() if p.is_file()) <= MAX_BYTES
    listed = (MODEL / "SHA256SUMS").read_text()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json",
                 "processor_config.json", "generation_config.json"):  # fmt: skip
        assert f"  {name}\n" in listed, name


def test_a_changed_byte_is_caught_and_named(copy: Path) -> None:
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors") as info:
        verify_checkpoint(copy)
    assert info.value.file == "model.safetensors"


def test_a_missing_file_is_named(copy: Path) -> None:
    (copy / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        verify_checkpoint(copy)


def test_missing_or_incomplete_sums_fail(copy: Path) -> None:
    sums = copy / "SHA256SUMS"
    lines = sums.read_text().splitlines(keepends=True)
    sums.write_text("".join(line for line in lines if "model.safetensors" not in line))
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        verify_checkpoint(copy)
    sums.unlink()
    with pytest.raises(CheckpointError, match="SHA256SUMS"):
        verify_checkpoint(copy)


def test_a_sums_entry_may_not_point_outside_the_folder(copy: Path) -> None:
    sums = copy / "SHA256SUMS"
    sums.write_text(sums.read_text() + f"{'0' * 64}  ../outside.json\n")
    with pytest.raises(CheckpointError, match="outside"):
        verify_checkpoint(copy)


@pytest.mark.slow
def test_checkpoint_loads_and_runs_in_transformers() -> None:
    import torch
    from PIL import Image
    from transformers import AutoProcessor, Idefics3ForConditionalGeneration

    verify_checkpoint(MODEL)
    model = Idefics3ForConditionalGeneration.from_pretrained(str(MODEL), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(str(MODEL))
    vocab = model.config.text_config.vocab_size
    assert vocab == len(processor.tokenizer)

    text = processor.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}],
                                         add_generation_prompt=True, enable_thinking=False)  # fmt: skip
    image_messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Solve it."}]}]
    image_text = processor.apply_chat_template(image_messages, add_generation_prompt=True)
    with torch.no_grad():
        for inputs in (
            processor(text=text, return_tensors="pt"),
            processor(text=image_text, images=[[Image.new("RGB", (128, 96), "white")]], return_tensors="pt"),
        ):
            logits = model(**inputs).logits
            assert logits.shape[-1] == vocab
            assert torch.isfinite(logits).all()
