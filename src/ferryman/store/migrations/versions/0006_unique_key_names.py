"""Key names unique among live keys: ``keys show team-a`` names one key, never two.

A partial unique index on ``virtual_keys.name`` where ``revoked IS NULL``: a revoked key keeps
its name (its history still reads), and the name is free again for a new key. Teams need no
index: their name is the primary key. Live keys sharing a name before this revision are renamed
first, so the upgrade never fails on a database that holds them: in creation order the first
keeps the name, the later ones get ``-2``, ``-3``, … (a name no other key, live or revoked, has; the name cut so
it stays within 128 characters).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

NAME_MAX = 128
LIVE = "revoked IS NULL"


def _renamed(name: str, taken: set[str]) -> str:
    """``name-N`` for the smallest N from 2 that no key uses yet."""
    n = 2
    while True:
        suffix = f"-{n}"
        candidate = name[: NAME_MAX - len(suffix)] + suffix
        if candidate not in taken:
            return candidate
        n += 1


def upgrade() -> None:
    bind = op.get_bind()
    keys = sa.table("virtual_keys", sa.column("id"), sa.column("name"), sa.column("created"), sa.column("revoked"))
    live = bind.execute(
        sa.select(keys.c.id, keys.c.name).where(keys.c.revoked.is_(None)).order_by(keys.c.created, keys.c.id)
    ).all()
    taken = set(bind.execute(sa.select(keys.c.name)).scalars())  # revoked keys' names too: no confusion
    seen: set[str] = set()
    for key_id, name in live:
        if name not in seen:
            seen.add(name)
            continue
        new_name = _renamed(name, taken)
        taken.add(new_name)
        seen.add(new_name)
        bind.execute(sa.update(keys).where(keys.c.id == key_id).values(name=new_name))
    op.create_index(
        "virtual_keys_live_name",
        "virtual_keys",
        ["name"],
        unique=True,
        if_not_exists=True,  # a schema stamped back to an older revision upgrades again cleanly
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index("virtual_keys_live_name", "virtual_keys", if_exists=True)  # the renamed keys keep their new names
