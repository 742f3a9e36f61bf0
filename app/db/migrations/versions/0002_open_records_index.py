"""Index only the open usage records: the status index held every record and every settlement moved
an entry in it; the partial index holds the few open ones (what reconciliation looks for), gains an
entry at open and loses it at settle.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_OPEN = sa.text("status = 'open'")


def upgrade() -> None:
    op.drop_index("ix_usage_status", table_name="usage_records")
    op.create_index(
        "ix_usage_open",
        "usage_records",
        ["instance_id"],
        sqlite_where=_OPEN,
        postgresql_where=_OPEN,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_open", table_name="usage_records")
    op.create_index("ix_usage_status", "usage_records", ["status"])
