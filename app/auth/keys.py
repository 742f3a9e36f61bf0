"""API keys: creation, lookup by hashed secret, revocation, limits. Secrets are never stored."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.tables import api_keys
from app.metering.sqlite_writer import KeyLookupOp

if TYPE_CHECKING:
    from app.metering.sqlite_writer import SqliteWriter

SECRET_PREFIX = "tg-"
EFFORT_ORDER = ("none", "minimal", "low", "medium", "high")
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


def _principal(row: Any) -> Principal:
    modes = frozenset(row.allowed_modes.split(",")) if row.allowed_modes else None
    return Principal(
        key_id=row.id,
        name=row.name,
        is_admin=bool(row.is_admin),
        budget_micros=row.budget_micros,
        rpm=row.rpm,
        tpm=row.tpm,
        allowed_modes=modes,
        max_effort=row.max_effort,
    )


class KeyStore:
    """`writer`: on SQLite, the per-request lookup runs in the hot-path batches (see sqlite_writer)."""

    def __init__(self, engine: AsyncEngine, writer: SqliteWriter | None = None) -> None:
        self.engine = engine
        self.writer = writer

    async def create(
        self, name: str, limits: KeyLimits = KeyLimits(), *, is_admin: bool = False
    ) -> tuple[str, str]:
        """Returns (key id, secret). The secret is shown once and only its hash is stored."""
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key_id = "key_" + secrets.token_hex(8)
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
        if self.writer is not None:
            found = await self.writer.submit(KeyLookupOp(hash_secret(secret)))
            return _principal(SimpleNamespace(**found)) if found else None
        try:
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(api_keys).where(
                            api_keys.c.secret_hash == hash_secret(secret), api_keys.c.revoked_at.is_(None)
                        )
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise _database_error("Looking up the key", exc) from None
        return _principal(row) if row else None
