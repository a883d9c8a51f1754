"""Billing tags on keys and teams: what ``tag:`` budget rules count, set by the admin, never by
a caller's header.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("virtual_keys") as table:
        table.add_column(sa.Column("tags", sa.JSON))
    with op.batch_alter_table("teams") as table:
        table.add_column(sa.Column("tags", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("teams") as table:
        table.drop_column("tags")
    with op.batch_alter_table("virtual_keys") as table:
        table.drop_column("tags")
