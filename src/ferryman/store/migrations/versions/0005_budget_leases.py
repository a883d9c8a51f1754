"""Budget reservations with leases: what ``reserved_usd`` holds, by whom and until when, so a
crashed instance's calls stop blocking a budget within the lease and Redis counters can be
rebuilt from the database.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

USD = sa.Numeric(20, 10)


def upgrade() -> None:
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("instance", sa.String(256), nullable=False),
        sa.Column("amount_usd", USD, nullable=False),
        sa.Column("lease_until", sa.Float, nullable=False),
        sa.Column("deadline", sa.Float, nullable=False),
        sa.Column("created", sa.Float, nullable=False),
    )
    op.create_index("budget_reservations_lease", "budget_reservations", ["lease_until"])
    op.create_table(
        "budget_holds",
        sa.Column("reservation_id", sa.String(32), primary_key=True),
        sa.Column("scope", sa.String(256), primary_key=True),
        sa.Column("window", sa.String(16), primary_key=True),
    )
    op.create_index("budget_holds_counter", "budget_holds", ["scope", "window"])
    # Reservations held before this revision have no rows to release them by: start from none.
    op.execute("UPDATE budget_counters SET reserved_usd = 0")


def downgrade() -> None:
    op.drop_index("budget_holds_counter", "budget_holds")
    op.drop_table("budget_holds")
    op.drop_index("budget_reservations_lease", "budget_reservations")
    op.drop_table("budget_reservations")
