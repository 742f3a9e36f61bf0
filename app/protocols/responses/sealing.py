"""Reasoning sealed for stateless Responses API clients (`include: ["reasoning.encrypted_content"]`).

A `store: false` client (Codex) keeps no state on the gateway: it sends the reasoning items it got
back with the next request, and the model should see its own reasoning again. The gateway gives it
that reasoning sealed with AES-256-GCM under a server key (`responses_encryption_keys`; the first
seals, all open, so a key can be rotated without breaking conversations under way; with none
configured, one is generated and kept in the data folder), bound to the API key it was sealed for.
A blob that was changed, sealed by another gateway's key or for another API key is refused (400).

Blob: "tgr1." + base64url(key tag (4 bytes) | nonce (12 bytes) | ciphertext and tag).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.core.config import REPO_ROOT, Settings
from app.core.errors import InvalidRequest
from app.db.engine import sqlite_file

KEY_FILE = "responses-encryption.key"
PREFIX = "tgr1."
MAX_BLOB = 4 * 1024 * 1024


class ReasoningSealer:
    def __init__(self, secrets_: list[bytes]) -> None:
        if not secrets_:
            raise ValueError("at least one encryption key is needed")
        keys = [hashlib.sha256(b"thinkgate responses reasoning\0" + s).digest() for s in secrets_]
        self.keys = [(hashlib.sha256(key).digest()[:4], AESGCM(key)) for key in keys]

    def seal(self, text: str, owner: str) -> str:
        tag, aead = self.keys[0]
        nonce = os.urandom(12)
        sealed = aead.encrypt(nonce, text.encode(), owner.encode())
        return PREFIX + base64.urlsafe_b64encode(tag + nonce + sealed).decode().rstrip("=")

    def open(self, blob: str, owner: str, param: str) -> str:
        refused = InvalidRequest(
            "The encrypted reasoning was not sealed by this gateway for this API key, or was changed.",
            param=param,
            code="invalid_encrypted_content",
        )
        if not blob.startswith(PREFIX) or len(blob) > MAX_BLOB:
            raise refused
        try:
            payload = blob[len(PREFIX) :]
            raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        tag, nonce, sealed = raw[:4], raw[4:16], raw[16:]
        for key_tag, aead in self.keys:
            if key_tag == tag:
                try:
                    return aead.decrypt(nonce, sealed, owner.encode()).decode()
                except (InvalidTag, ValueError, UnicodeDecodeError):
                    raise refused from None
        raise refused


def sealer_for(settings: Settings) -> ReasoningSealer:
    """The configured keys, or the data folder's generated one (made on first use)."""
    if settings.responses_encryption_keys:
        return ReasoningSealer([key.encode() for key in settings.responses_encryption_keys])
    database_file = sqlite_file(settings.database_url)
    folder = Path(database_file).parent if database_file else REPO_ROOT / "data"
    return ReasoningSealer([_stored_key(folder / KEY_FILE)])


def _stored_key(path: Path) -> bytes:
    """The key kept in `path`, created (mode 0600, never overwritten) when there is none yet."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key.encode()
        raise ValueError(f"the responses encryption key file {path} is empty") from None
    key = secrets.token_hex(32)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(key + "\n")
    return key.encode()
