"""Initial schema: audit chain, checkpoints, budget counters, cache.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

USD = sa.Numeric(20, 10)


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("request_id", sa.String(64)),
        sa.Column("principal", sa.String(128), nullable=False),
        sa.Column("upstream", sa.String(128)),
        sa.Column("model", sa.String(128)),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("input_tokens", sa.Integer, nullable=False),
        sa.Column("cached_tokens", sa.Integer, nullable=False),
        sa.Column("output_tokens", sa.Integer, nullable=False),
        sa.Column("reasoning_tokens", sa.Integer, nullable=False),
        sa.Column("cost_usd", USD, nullable=False),
        sa.Column("cache", sa.String(16), nullable=False),
        sa.Column("tags", sa.JSON, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("request_body", sa.Text),
        sa.Column("response_body", sa.Text),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("audit_ts", "audit", ["ts"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("count", sa.BigInteger, nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    op.create_table(
        "budget_counters",
        sa.Column("scope", sa.String(256), primary_key=True),
        sa.Column("window", sa.String(16), primary_key=True),
        sa.Column("spent_usd", USD, nullable=False),
        sa.Column("reserved_usd", USD, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
    )
    op.create_table(
        "cache_entries",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("headers", sa.JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("model", sa.String(128)),
    )
    op.create_index("cache_expires", "cache_entries", ["expires"])


def downgrade() -> None:
    op.drop_table("cache_entries")
    op.drop_table("budget_counters")
    op.drop_table("audit_checkpoints")
    op.drop_index("audit_ts", "audit")
    op.drop_table("audit")
