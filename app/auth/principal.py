"""Who is calling: the principal a request runs as, and the two that have no stored key."""

from __future__ import annotations

from dataclasses import dataclass

# Reasoning efforts from least to most; a key's `max_effort` caps a request's at its position.
EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
# The ids of keys stored in `api_keys` start with this; the admin secret and --no-auth have no row.
KEY_ID_PREFIX = "key_"


def has_key_row(key_id: str) -> bool:
    """Whether `key_id` names a stored key, whose row holds a budget to reserve from and spend."""
    return key_id.startswith(KEY_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may do."""

    key_id: str
    name: str
    is_admin: bool = False
    budget_micros: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    allowed_modes: frozenset[str] | None = None
    max_effort: str | None = None


ANONYMOUS = Principal(key_id="anonymous", name="anonymous (--no-auth)")
ADMIN = Principal(key_id="admin", name="admin (THINKGATE_ADMIN_KEY)", is_admin=True)
