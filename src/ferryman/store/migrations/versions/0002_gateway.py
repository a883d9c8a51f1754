"""The gateway: virtual keys, teams, and which key owns which stored object.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

USD = sa.Numeric(20, 10)


def upgrade() -> None:
    op.create_table(
        "virtual_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("team", sa.String(128)),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("hint", sa.String(16), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("expires", sa.Float),
        sa.Column("revoked", sa.Float),
        sa.Column("rotated", sa.Float),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_usd", USD),
        sa.Column("budget_period", sa.String(8)),
        sa.Column("models", sa.JSON),
        sa.Column("metadata", sa.JSON, nullable=False),
    )
    op.create_table(
        "teams",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_usd", USD),
        sa.Column("budget_period", sa.String(8)),
    )
    op.create_table(
        "owned_objects",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(32), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("owned_objects_owner", "owned_objects", ["owner", "kind"])


def downgrade() -> None:
    op.drop_index("owned_objects_owner", "owned_objects")
    op.drop_table("owned_objects")
    op.drop_table("teams")
    op.drop_table("virtual_keys")
