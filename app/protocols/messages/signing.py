"""The `signature` of a thinking block: an HMAC-SHA256 over the thinking text under a server key.

A client sends its past thinking back as it received it; the signature shows the text is the
gateway's own reasoning, not words put in the model's mouth. The keys are a list
(`thinking_signing_keys`): the first signs, all verify, so a key can be rotated without refusing the
conversations under way. With none configured, one is generated and kept in the data folder (beside
the SQLite file, or `data/`); gateways that share a database need the same configured keys.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path

from app.core.config import REPO_ROOT, Settings
from app.db.engine import sqlite_file

KEY_FILE = "thinking-signing.key"
PREFIX = "tg1."


class ThinkingSigner:
    def __init__(self, keys: list[bytes]) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self.keys = keys

    def sign(self, thinking: str) -> str:
        return PREFIX + _mac(self.keys[0], thinking)

    def verify(self, thinking: str, signature: str) -> bool:
        if not signature.startswith(PREFIX):
            return False
        given = signature[len(PREFIX) :].encode()
        return any(hmac.compare_digest(_mac(key, thinking).encode(), given) for key in self.keys)


def _mac(key: bytes, thinking: str) -> str:
    digest = hmac.new(key, thinking.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def signer_for(settings: Settings) -> ThinkingSigner:
    """The configured keys, or the data folder's generated one (made on first use)."""
    if settings.thinking_signing_keys:
        return ThinkingSigner([key.encode() for key in settings.thinking_signing_keys])
    database_file = sqlite_file(settings.database_url)
    folder = Path(database_file).parent if database_file else REPO_ROOT / "data"
    return ThinkingSigner([_stored_key(folder / KEY_FILE)])


def _stored_key(path: Path) -> bytes:
    """The key kept in `path`, created (mode 0600, never overwritten) when there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key.encode()
        raise ValueError(f"the thinking signing key file {path} is empty") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key.encode()
