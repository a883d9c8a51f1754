"""Finding the key a person means, and refusing a second key or team of one name.

People name keys by what they see in ``ferryman keys list``: the id, the first few characters of
it, or the name. :func:`matching_rows` is the query behind
:meth:`~ferryman.gateway.keys.KeyStore.find`, the one resolver the CLI and the admin API share, so
``keys show``, ``rotate``, ``revoke``, ``tags`` and ``/admin/keys/{ref}`` read a reference alike:

1. the full id (``key_`` and 20 hex digits) names that key;
2. otherwise the live key of that name and every key (live or revoked) whose id starts with it,
   given :data:`MIN_ID_PREFIX` or more hex digits with or without ``key_`` (``c3a9f1``,
   ``key_c3a9f1``), must be exactly one key;
3. otherwise a revoked key of that name, if only one has it.

More than one fit is :class:`KeyAmbiguous` (never a guess), listing up to
:data:`MAX_CANDIDATES` of them. Names of live keys are unique in the database (a partial unique
index, migration 0006), and team names are (the teams' primary key): :class:`NameTaken` is what
the :class:`~sqlalchemy.exc.IntegrityError` of a second create, even a concurrent one, becomes.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from ferryman.store.tables import teams, virtual_keys

if TYPE_CHECKING:
    from ferryman.gateway.keys import KeyRecord

MIN_ID_PREFIX = 6  # hex digits after key_: about one in 16 million ids share a given six
MAX_CANDIDATES = 10  # an ambiguous reference lists at most this many keys
_ID_PREFIX = re.compile(rf"(?:key_)?([0-9a-f]{{{MIN_ID_PREFIX},20}})")


class KeyAmbiguous(LookupError):
    """A reference that fits several keys (an id prefix, a name, or one of each): ``candidates``."""

    def __init__(self, ref: str, candidates: list[KeyRecord]) -> None:
        super().__init__(ref)
        self.ref = ref
        self.candidates = candidates


class NameTaken(Exception):
    """A live key (or a team) has this name already; ``holder`` is that key's id (None for a team)."""

    def __init__(self, kind: str, name: str, holder: str | None = None) -> None:
        self.kind, self.name, self.holder = kind, name, holder
        held = f" ({holder})" if holder else ""
        super().__init__(f"a {kind} named {name!r} already exists{held}")


def id_prefix(ref: str) -> str | None:
    """``key_…`` for a reference that can be an id prefix (six or more hex digits), else None."""
    match = _ID_PREFIX.fullmatch(ref.strip().lower())
    return "key_" + match.group(1) if match else None


def matching_rows(conn: Connection, ref: str) -> list[Any]:
    """The ``virtual_keys`` rows ``ref`` fits, by the rules above (oldest first; at most
    :data:`MAX_CANDIDATES`)."""
    c = virtual_keys.c
    exact = conn.execute(select(virtual_keys).where(c.id == ref)).first()
    if exact is not None:
        return [exact]
    fits: ColumnElement[bool] = (c.name == ref) & c.revoked.is_(None)
    prefix = id_prefix(ref)
    if prefix is not None:
        fits = or_(fits, c.id.startswith(prefix, autoescape=True))
    rows = conn.execute(select(virtual_keys).where(fits).order_by(c.created, c.id).limit(MAX_CANDIDATES)).all()
    if not rows:
        revoked = select(virtual_keys).where(c.name == ref).order_by(c.created, c.id)
        rows = conn.execute(revoked.limit(MAX_CANDIDATES)).all()
    return list(rows)


def ensure_team(conn: Connection, name: str, now: float) -> None:
    """The team, inserted unless it exists: two writers at once cannot both insert it (and fail)."""
    dialect = {"postgresql": postgresql, "sqlite": sqlite}.get(conn.dialect.name)
    if dialect is None:  # no upsert there: read, then insert
        if conn.execute(select(teams.c.name).where(teams.c.name == name)).first() is None:
            conn.execute(insert(teams).values(name=name, created=now))
        return
    query = dialect.insert(teams).values(name=name, created=now)
    conn.execute(query.on_conflict_do_nothing(index_elements=["name"]))
