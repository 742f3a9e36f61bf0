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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.core.config import Settings
from app.core.errors import InvalidRequest
from app.core.keyfile import stored_key
from app.db.engine import data_folder

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
    key = stored_key(data_folder(settings.database_url) / KEY_FILE, "responses encryption key")
    return ReasoningSealer([key])
