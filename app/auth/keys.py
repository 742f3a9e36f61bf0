"""API keys: creation, lookup by hashed secret, revocation, limits. Secrets are never stored.

The lookup that authenticates every request is an op (`KeyLookupOp`): on SQLite it rides in the
hot-path batches (`app/db/batch.py`), elsewhere it runs through SQLAlchemy; the same statement.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth.principal import KEY_ID_PREFIX, Principal
from app.db.batch import SqliteWriter
from app.db.ops import Connection, Op, run_one
from app.db.tables import api_keys

SECRET_PREFIX = "tg-"
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


class KeyStoreError(RuntimeError):
    """The database refused a key operation. The message names the database's reason and never the
    statement's parameters: SQLAlchemy's own errors print them, and they hold the secret's hash."""


def _database_error(action: str, exc: SQLAlchemyError) -> KeyStoreError:
    reason = str(getattr(exc, "orig", None) or type(exc).__name__).strip().splitlines()
    # PostgreSQL's DETAIL line ("Key (secret_hash)=(...) already exists") is left out, and a
    # digest in the first line blanked.
    first = _HEX_DIGEST.sub("<redacted>", reason[0]) if reason else type(exc).__name__
    return KeyStoreError(f"{action} failed in the database: {first}")


def hash_secret(secret: str) -> str:
    # Secrets are 256-bit random tokens, so a fast hash is enough (no dictionary to defend against).
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """Optional limits of a key; `None` leaves a field as it is (on update) or unlimited (on create)."""

    budget_micros: int | None = None
    rpm: int | None = None
    tpm: int | None = None
    allowed_modes: tuple[str, ...] | None = None
    max_effort: str | None = None

    def columns(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "budget_micros": self.budget_micros,
            "rpm": self.rpm,
            "tpm": self.tpm,
            "allowed_modes": ",".join(self.allowed_modes) if self.allowed_modes is not None else None,
            "max_effort": self.max_effort,
        }
        return {name: value for name, value in values.items() if value is not None}


_LOOKUP_COLUMNS = ("id", "name", "is_admin", "budget_micros", "rpm", "tpm", "allowed_modes", "max_effort")
_LOOKUP_KEY = (
    f"SELECT {', '.join(_LOOKUP_COLUMNS)} FROM api_keys "
    "WHERE secret_hash = :secret_hash AND revoked_at IS NULL"
)


@dataclass(slots=True)
class KeyLookupOp(Op):
    """The principal of the active key with this secret hash (authentication), or None."""

    secret_hash: str

    def apply(self, con: Connection) -> Principal | None:
        row = con.execute(_LOOKUP_KEY, {"secret_hash": self.secret_hash}).fetchone()
        if row is None:
            return None
        key_id, name, is_admin, budget_micros, rpm, tpm, allowed_modes, max_effort = row
        return Principal(
            key_id=key_id,
            name=name,
            is_admin=bool(is_admin),
            budget_micros=budget_micros,
            rpm=rpm,
            tpm=tpm,
            allowed_modes=frozenset(allowed_modes.split(",")) if allowed_modes else None,
            max_effort=max_effort,
        )


class KeyStore:
    """`writer`: on SQLite, the per-request lookup runs in the hot-path batches (`app/db/batch.py`)."""

    def __init__(self, engine: AsyncEngine, writer: SqliteWriter | None = None) -> None:
        self.engine = engine
        self.writer = writer

    async def create(
        self, name: str, limits: KeyLimits = KeyLimits(), *, is_admin: bool = False
    ) -> tuple[str, str]:
        """Returns (key id, secret). The secret is shown once and only its hash is stored."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = KEY_ID_PREFIX + secrets.token_hex(8)
        try:
            async with self.engine.begin() as conn:
                await conn.execute(
                    insert(api_keys).values(
                        id=key_id,
                        name=name,
                        secret_hash=hash_secret(secret),
                        prefix=secret[:10],
                        created_at=time.time(),
                        is_admin=is_admin,
                        spent_micros=0,
                        reserved_micros=0,
                        **limits.columns(),
                    )
                )
        except SQLAlchemyError as exc:
            # `from None`: the chained original, with its parameters, must not reach a traceback.
            raise _database_error("Creating the key", exc) from None
        return key_id, secret

    async def update(self, key_id: str, limits: KeyLimits, *, clear: tuple[str, ...] = ()) -> bool:
        values: dict[str, Any] = {**limits.columns(), **dict.fromkeys(clear)}
        if not values:
            return await self.get(key_id) is not None
        async with self.engine.begin() as conn:
            result = await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(**values))
        return result.rowcount > 0

    async def revoke(self, key_id: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
        return result.rowcount > 0

    async def get(self, key_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
        return dict(row._mapping) if row else None

    async def list(self) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(api_keys).order_by(api_keys.c.created_at))).all()
        return [dict(row._mapping) for row in rows]

    async def authenticate(self, secret: str) -> Principal | None:
        """The active key with this secret, or None (unknown or revoked)."""
        lookup = KeyLookupOp(hash_secret(secret))
        if self.writer is not None:
            found: Principal | None = await self.writer.submit(lookup)
            return found
        try:
            principal: Principal | None = await run_one(self.engine, lookup)
        except SQLAlchemyError as exc:
            raise _database_error("Looking up the key", exc) from None
        return principal
