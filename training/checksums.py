"""Write the checkpoint's SHA256SUMS (sha256sum format); ``app.engine.checkpoint`` verifies it."""

from __future__ import annotations

import hashlib
from pathlib import Path

SUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_sums(model_dir: Path) -> Path:
    """Checksum every file of the checkpoint except the sums file itself and the model card."""
    files = sorted(p for p in model_dir.iterdir() if p.is_file() and p.name not in (SUMS, "README.md"))
    out = model_dir / SUMS
    out.write_text("".join(f"{sha256(p)}  {p.name}\n" for p in files))
    return out
