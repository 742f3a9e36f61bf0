"""Requests- and tokens-per-minute limits per key, counted in the shared database.

Fixed one-minute windows in `rate_windows`, incremented with one atomic upsert, so every gateway
sharing the database sees the same counts. Tokens are admitted at the request's worst case and
corrected to the exact count when it settles. The statements here are run by the ledger's ops
(`app/metering/ops.py`: counted with the reservation, corrected with the settlement) and by
`RateLimiter.admit` for requests that reserve nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import Principal
from app.core.errors import RateLimited
from app.db.ops import Connection, Op, run_one
from app.db.tables import rate_windows

WINDOW_S = 60

_COUNT = """
INSERT INTO rate_windows (key_id, "window", requests, tokens) VALUES (:key_id, :window, 1, :tokens)
ON CONFLICT (key_id, "window") DO UPDATE
SET requests = rate_windows.requests + 1, tokens = rate_windows.tokens + excluded.tokens
RETURNING requests, tokens"""
_UNCOUNT = """
UPDATE rate_windows SET requests = requests - 1, tokens = tokens - :tokens
WHERE key_id = :key_id AND "window" = :window"""
_CORRECT = """
UPDATE rate_windows SET tokens = tokens - :excess WHERE key_id = :key_id AND "window" = :window"""


def current_window(now: float | None = None) -> int:
    return int((time.time() if now is None else now) // WINDOW_S)


def refusal_for(
    principal: Principal, tokens: int, requests: int, used_tokens: int, window: int, now: float
) -> RateLimited | None:
    """The 429 for a window that this request took past the key's rpm or tpm, else None."""
    over_requests = principal.rpm is not None and requests > principal.rpm
    over_tokens = principal.tpm is not None and used_tokens > principal.tpm
    if not (over_requests or over_tokens):
        return None
    retry_after = int((window + 1) * WINDOW_S - now) + 1
    if over_requests:
        message = f"Rate limit reached: {principal.rpm} requests per minute for this key."
    else:
        message = (
            f"Rate limit reached: {principal.tpm} tokens per minute for this key (this request "
            f"counts up to {tokens} tokens: prompt plus max_completion_tokens)."
        )
    return RateLimited(message, retry_after_s=retry_after)


def is_limited(principal: Principal) -> bool:
    return principal.rpm is not None or principal.tpm is not None


def count(con: Connection, principal: Principal, tokens: int, now: float) -> tuple[int, RateLimited | None]:
    """Count a request of `tokens` in the key's current window: the window, and the 429 if this
    request took it past the key's rpm or tpm (then counted still: `uncount` takes it back)."""
    window = current_window(now)
    parameters = {"key_id": principal.key_id, "window": window, "tokens": tokens}
    requests, used = con.execute(_COUNT, parameters).fetchone()
    return window, refusal_for(principal, tokens, requests, used, window, now)


def uncount(con: Connection, key_id: str, window: int, tokens: int) -> None:
    """Take back a request counted by `count`: neither it nor its tokens count against the key."""
    con.execute(_UNCOUNT, {"key_id": key_id, "window": window, "tokens": tokens})


def correct(con: Connection, key_id: str, window: int, excess: int) -> None:
    """Take back `excess` tokens admitted in a window beyond what its requests used."""
    con.execute(_CORRECT, {"key_id": key_id, "window": window, "excess": excess})


@dataclass(slots=True)
class AdmitOp(Op):
    """Count a request that reserves nothing; its window, or the 429 after taking the count back."""

    principal: Principal
    tokens: int
    now: float

    def apply(self, con: Connection) -> int | RateLimited:
        window, refusal = count(con, self.principal, self.tokens, self.now)
        if refusal is not None:
            uncount(con, self.principal.key_id, window, self.tokens)
            return refusal
        return window


class RateLimiter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def admit(self, principal: Principal, tokens: int) -> int | None:
        """Count this request; 429 if it would pass the key's rpm or tpm (then it is not counted).
        Returns the window used. Requests that reserve budget are counted by the ledger's open."""
        if not is_limited(principal):
            return None
        window: int = await run_one(self.engine, AdmitOp(principal, tokens, time.time()))
        return window

    async def prune(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(rate_windows).where(rate_windows.c.window < current_window() - 1))
