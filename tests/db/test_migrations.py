"""The Alembic migrations build exactly the schema that `app/db/tables.py` declares, on SQLite and on
PostgreSQL, and the ledger's partial index holds only open records."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from app.db.engine import migrate
from app.db.tables import metadata


def _differences(sync_url: str) -> list[Any]:
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False})
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def test_sqlite_migrations_match_the_declared_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    asyncio.run(migrate(url))
    assert _differences(url) == []


def test_the_open_records_index_is_partial(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    asyncio.run(migrate(f"sqlite:///{path}"))
    con = sqlite3.connect(path)
    (sql,) = con.execute("SELECT sql FROM sqlite_master WHERE name = 'ix_usage_open'").fetchone()
    assert "WHERE status = 'open'" in sql
    names = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "ix_usage_status" not in names
    # The query reconciliation runs uses it.
    plan = " ".join(
        str(row[-1])
        for row in con.execute(
            "EXPLAIN QUERY PLAN SELECT id FROM usage_records WHERE status = 'open' AND instance_id = 'x'"
        )
    )
    assert "ix_usage_open" in plan


@pytest.mark.postgres
def test_postgres_migrations_match_the_declared_schema(postgres_url: str) -> None:
    asyncio.run(migrate(postgres_url))
    assert _differences(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1)) == []
