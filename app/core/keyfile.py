"""Server keys kept in a file: read, or made once (the gateway's own secrets when none is configured:
the Responses door's sealing key, the Messages door's thinking-signature key)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def stored_key(path: Path, what: str) -> bytes:
    """The key kept in `path`, created (mode 0600, never overwritten) when there is none yet;
    `what` names it in the error for an empty file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key.encode()
        raise ValueError(f"the {what} file {path} is empty") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key.encode()
