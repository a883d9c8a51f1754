"""Write-ahead audit records for streams in flight: ``audit_open``, one row per stream being
delivered, so a stream cut by a crash of its gateway is still recorded (as ``interrupted``).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_open",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("instance", sa.String(256), nullable=False),
        sa.Column("process", sa.String(128)),
        sa.Column("started", sa.Float, nullable=False),
        sa.Column("updated", sa.Float, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("progress", sa.JSON),
    )
    op.create_index("audit_open_lease", "audit_open", ["lease_until"])


def downgrade() -> None:
    op.drop_index("audit_open_lease", "audit_open")
    op.drop_table("audit_open")
