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

from app.core.config import Settings
from app.core.keyfile import stored_key
from app.db.engine import data_folder

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
    return ThinkingSigner([stored_key(data_folder(settings.database_url) / KEY_FILE, "thinking signing key")])
