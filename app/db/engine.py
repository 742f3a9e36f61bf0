"""Database engine: SQLite (WAL) by default, PostgreSQL for several gateways; migrations on start."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from app.core.config import REPO_ROOT

MIGRATIONS = Path(__file__).parent / "migrations"

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
}


def async_url(url: str) -> str:
    """Accept plain `sqlite:///` / `postgresql://` URLs and pick the async driver."""
    parsed = make_url(url)
    if "+" not in parsed.drivername and parsed.drivername in _DRIVERS:
        parsed = parsed.set(drivername=_DRIVERS[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str) -> str | None:
    """The database file of a file-backed SQLite URL; None for other databases and `:memory:`."""
    if not is_sqlite(url):
        return None
    database = make_url(url).database
    return database if database and database != ":memory:" else None


def data_folder(url: str) -> Path:
    """Where the gateway keeps its files: beside a SQLite database's file, else the repository's data/."""
    database_file = sqlite_file(url)
    return Path(database_file).parent if database_file else REPO_ROOT / "data"


def create_engine(url: str) -> AsyncEngine:
    url = async_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # One connection: SQLite has a single writer anyway, and one connection avoids lock
        # contention between this process's own transactions. Other processes wait on busy_timeout.
        engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=0)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        return engine
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", async_url(url).replace("%", "%%"))
    return config


def _upgrade(url: str) -> None:
    command.upgrade(alembic_config(url), "head")


async def migrate(url: str) -> None:
    """Bring the schema to the latest revision (alembic's env runs its own event loop in a thread)."""
    await asyncio.to_thread(_upgrade, url)
