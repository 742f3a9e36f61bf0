"""Responses API state: `stored_responses` keeps a response (`store`, the default) per key until it
expires, with the conversation through it, for `previous_response_id` and GET/DELETE
/v1/responses/{id}.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("response_json", sa.Text, nullable=False),
        sa.Column("history_json", sa.Text, nullable=False),
    )
    op.create_index("ix_stored_responses_expires", "stored_responses", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_stored_responses_expires", table_name="stored_responses")
    op.drop_table("stored_responses")
