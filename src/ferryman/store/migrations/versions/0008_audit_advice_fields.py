"""What the report's advice needs, on every audit record, without bodies: the requested output cap,
the service tier, whether the call was Batch API traffic, keyed fingerprints of the request and of
its prompt-cache prefix, the rate-limit levels the reply showed, and the front door it came by
(see ``pipeline/audit_advice.py``).

All nullable and added empty: records written before this revision keep NULL there, and the audit
chain hashes these fields only when they hold a value (``audit/chain.py`` ``ADDED``), so every old
record verifies exactly as before. Nothing is backfilled: the bodies the fingerprints would need
are not kept (or kept redacted), and a record's fields are never rewritten.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column[object]]:
    return [
        sa.Column("output_cap", sa.Integer),
        sa.Column("service_tier", sa.String(32)),
        sa.Column("via_batch", sa.Boolean),
        sa.Column("request_fp", sa.String(32)),
        sa.Column("deterministic", sa.Boolean),
        sa.Column("prefix_fp", sa.String(32)),
        sa.Column("prefix_tokens", sa.Integer),
        sa.Column("ratelimit", sa.JSON(none_as_null=True)),
        sa.Column("source", sa.String(16)),
    ]


def _present() -> set[str]:
    """The audit table's columns now: a schema stamped back to an older revision upgrades again cleanly."""
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("audit")}


def upgrade() -> None:
    present = _present()
    with op.batch_alter_table("audit") as table:
        for column in _columns():
            if column.name not in present:
                table.add_column(column)


def downgrade() -> None:
    present = _present()
    with op.batch_alter_table("audit") as table:
        for column in reversed(_columns()):
            if column.name in present:
                table.drop_column(column.name)
