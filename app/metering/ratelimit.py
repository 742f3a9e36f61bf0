"""Requests- and tokens-per-minute limits per key, counted in the shared database.

Fixed one-minute windows in `rate_windows`, incremented with one atomic upsert, so every gateway
sharing the database sees the same counts. Tokens are admitted at the request's worst case and
corrected to the exact count when it settles.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.core.errors import RateLimited
from app.db.tables import rate_windows

if TYPE_CHECKING:
    from app.auth.keys import Principal

WINDOW_S = 60


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


class RateLimiter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def admit(
        self, principal: Principal, tokens: int, conn: AsyncConnection | None = None
    ) -> int | None:
        """Count this request; 429 if it would pass the key's rpm or tpm. Returns the window used.

        Given `conn`, it counts inside the caller's transaction (the ledger's reservation), and a
        refusal rolls that transaction back: refused requests do not count against the window.
        """
        if principal.rpm is None and principal.tpm is None:
            return None
        if conn is None:
            async with self.engine.begin() as own:
                return await self._admit(own, principal, tokens)
        return await self._admit(conn, principal, tokens)

    async def _admit(self, conn: AsyncConnection, principal: Principal, tokens: int) -> int:
        now = time.time()
        window = current_window(now)
        values = self._insert(rate_windows).values(
            key_id=principal.key_id, window=window, requests=1, tokens=tokens
        )
        statement = values.on_conflict_do_update(
            index_elements=["key_id", "window"],
            set_={"requests": rate_windows.c.requests + 1, "tokens": rate_windows.c.tokens + tokens},
        ).returning(rate_windows.c.requests, rate_windows.c.tokens)
        requests, used_tokens = (await conn.execute(statement)).one()
        refusal = refusal_for(principal, tokens, requests, used_tokens, window, now)
        if refusal is not None:
            raise refusal  # rolls the transaction back
        return window

    async def correct(
        self,
        principal: Principal,
        window: int | None,
        reserved_tokens: int,
        used_tokens: int,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Replace the worst-case token count admitted with what the request really used."""
        if window is None or principal.tpm is None or reserved_tokens == used_tokens:
            return
        statement = (
            update(rate_windows)
            .where(rate_windows.c.key_id == principal.key_id, rate_windows.c.window == window)
            .values(tokens=rate_windows.c.tokens - reserved_tokens + used_tokens)
        )
        if conn is not None:
            await conn.execute(statement)
            return
        async with self.engine.begin() as own:
            await own.execute(statement)

    async def usage(self, key_id: str) -> tuple[int, int]:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(rate_windows.c.requests, rate_windows.c.tokens).where(
                        rate_windows.c.key_id == key_id, rate_windows.c.window == current_window()
                    )
                )
            ).first()
        return (row.requests, row.tokens) if row else (0, 0)

    async def prune(self) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(rate_windows).where(rate_windows.c.window < current_window() - 1))
