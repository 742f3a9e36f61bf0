"""Responses API: a stored response keeps its request's input items too, for
GET /v1/responses/{id}/input_items. Responses stored before this migration list none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stored_responses") as batch:
        batch.add_column(sa.Column("input_json", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stored_responses") as batch:
        batch.drop_column("input_json")
