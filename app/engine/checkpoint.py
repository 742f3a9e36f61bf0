"""Verify a bundled checkpoint against its SHA256SUMS before the engine is started on it.

A checkpoint folder carries ``SHA256SUMS`` in ``sha256sum`` format (``<hex>  <file name>`` per line).
Every listed file must exist and match; the weights and the tokenizer must be listed, so a sums file
that silently omits them does not pass.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SUMS_FILE = "SHA256SUMS"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")
_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


class CheckpointError(Exception):
    """The checkpoint is missing a file or a file does not match its checksum."""

    def __init__(self, message: str, file: str) -> None:
        super().__init__(message)
        self.file = file


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_sums(model_dir: Path) -> dict[str, str]:
    sums_path = model_dir / SUMS_FILE
    if not sums_path.is_file():
        raise CheckpointError(f"checksum file missing: {sums_path}", SUMS_FILE)
    sums: dict[str, str] = {}
    for number, line in enumerate(sums_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line)
        if not m:
            raise CheckpointError(f"{sums_path}:{number}: not a sha256sum line", SUMS_FILE)
        name = m.group(2)
        # Names are plain files of the checkpoint folder: no paths that could point elsewhere.
        if "/" in name or "\\" in name or name in (".", ".."):
            raise CheckpointError(f"{sums_path}:{number}: unexpected path {name!r}", name)
        sums[name] = m.group(1).lower()
    return sums


def verify_checkpoint(model_dir: Path) -> None:
    """Raise ``CheckpointError`` naming the first missing or mismatching file."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise CheckpointError(f"checkpoint folder missing: {model_dir}", str(model_dir))
    sums = read_sums(model_dir)
    for name in REQUIRED:
        if name not in sums:
            raise CheckpointError(f"{name} is not listed in {model_dir / SUMS_FILE}", name)
    for name, expected in sums.items():
        path = model_dir / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint file missing: {path}", name)
        actual = _sha256(path)
        if actual != expected:
            raise CheckpointError(f"checksum mismatch for {path}: expected {expected}, got {actual}", name)
