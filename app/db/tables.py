"""The SQL schema (SQLAlchemy Core). Alembic migrations in `migrations/` create exactly this."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData()

# The token counts of a usage record, in the order the API and the CSV export list them.
TOKEN_COLUMNS = (
    "prompt_tokens",
    "image_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "answer_tokens",
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float),
    Column("is_admin", Boolean, nullable=False, default=False),
    # Money in integer micro-USD. budget NULL = unlimited.
    Column("budget_micros", BigInteger),
    Column("spent_micros", BigInteger, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("allowed_modes", String(32)),  # "long,short"; NULL = all
    Column("max_effort", String(16)),
)

usage_records = Table(
    "usage_records",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("settled_at", Float),
    Column("instance_id", String(200), nullable=False),
    Column("model", String(200), nullable=False),
    # The door the request came through: "chat", "responses", "messages", ... (migration 0004).
    Column("api", String(16), nullable=False, default="chat", server_default="chat"),
    Column("mode", String(8), nullable=False),
    Column("mode_source", String(64), nullable=False),
    Column("effort", String(16)),
    Column(
        "status", String(16), nullable=False
    ),  # open, completed, length, aborted, engine_error, rejected, interrupted
    Column("finish_reason", String(32)),
    Column("error", Text),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("image_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("reasoning_tokens", Integer, nullable=False, default=0),
    Column("answer_tokens", Integer, nullable=False, default=0),
    Column("reserved_micros", BigInteger, nullable=False, default=0),
    Column("cost_micros", BigInteger, nullable=False, default=0),
    Column("ttft_ms", Float),
    Column("duration_ms", Float),
    Column("idempotency_key", String(200)),
    Column("request_hash", String(64)),  # SHA-256 of the request an Idempotency-Key was sent with
    Column("response_json", Text),  # the completed response, replayed for a retried Idempotency-Key
    UniqueConstraint("key_id", "idempotency_key", name="uq_usage_idempotency"),
    Index("ix_usage_key_created", "key_id", "created_at"),
    # Only the open records (what reconciliation looks for): see migration 0002.
    Index(
        "ix_usage_open",
        "instance_id",
        sqlite_where=text("status = 'open'"),
        postgresql_where=text("status = 'open'"),
    ),
)

rate_windows = Table(
    "rate_windows",
    metadata,
    Column("key_id", String(32), primary_key=True),
    Column("window", BigInteger, primary_key=True),  # unix minute
    Column("requests", Integer, nullable=False, default=0),
    Column("tokens", BigInteger, nullable=False, default=0),
)

instances = Table(
    "instances",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
)

# Responses API responses kept for `previous_response_id` and GET/DELETE /v1/responses/{id}
# (`store`, the default), per key, until `expires_at` (migrations 0005, 0006).
stored_responses = Table(
    "stored_responses",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key_id", String(32), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("response_json", Text, nullable=False),  # the `response` object as returned
    Column("history_json", Text, nullable=False),  # the conversation through this response, for the next turn
    Column("input_json", Text, nullable=True),  # its request's input items (migration 0006; NULL before)
    Index("ix_stored_responses_expires", "expires_at"),
)
