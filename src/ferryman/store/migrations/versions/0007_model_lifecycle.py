"""The upstreams' own model shutdown dates (``GET /v1/models`` ``shutdown_date``), cached with the
time they were fetched: ``ferryman models --refresh`` writes them, the lifecycle stage, ``ferryman
models`` and ``ferryman doctor`` read them before the shipped table.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_lifecycle",
        sa.Column("upstream", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(256), primary_key=True),
        sa.Column("shutdown_date", sa.String(10)),
        sa.Column("fetched", sa.Float, nullable=False),
        if_not_exists=True,  # a schema stamped back to an older revision upgrades again cleanly
    )


def downgrade() -> None:
    op.drop_table("model_lifecycle", if_exists=True)
