"""What an infrastructure failure is called when a caller or an operator sees it.

A stage or an admin route that fails because the database, Redis or the disk failed would
otherwise surface as a bare 500 ``server_error``, and nobody could tell why. :func:`infrastructure_failure`
recognises those causes anywhere in an exception's chain and names them in OpenAI's error
shape, with ``retry-after`` (the request failed closed: nothing was sent that could not be
accounted), so a client retries and an operator knows where to look:

- 503 ``disk_full``: the disk (or the SQLite database) is full (``ENOSPC``, ``EDQUOT``, ``SQLITE_FULL``,
  or a WAL ``-shm`` file SQLite could not make or grow);
- 503 ``store_unavailable``: the database or Redis cannot be reached or used.
"""

from __future__ import annotations

import errno

from ferryman.errors import OpenAIError
from ferryman.redact import secrets

RETRY_AFTER_S = "1"


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and len(seen) < 8 and current not in seen:
        seen.append(current)
        orig = getattr(current, "orig", None)  # SQLAlchemy's wrapper of the driver's error
        if isinstance(orig, BaseException) and orig not in seen:
            seen.append(orig)
        current = current.__cause__ or current.__context__
    return seen


# SQLite's names for "no room": a full database or disk, and a WAL ``-shm`` file that could not be
# made or grown (SQLite reports that as an I/O error; on a local disk it means there is no room).
SQLITE_NO_ROOM = frozenset({"SQLITE_FULL", "SQLITE_IOERR_SHMSIZE"})


def disk_full(error: BaseException) -> bool:
    for seen in _chain(error):
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(seen) or getattr(seen, "sqlite_errorname", "") in SQLITE_NO_ROOM:
            return True
    return False


def disk_full_path(error: BaseException) -> str | None:
    """The file a disk-full ``OSError`` in ``error``'s chain names (None when none does), so that
    a message can say where the room ran out."""
    for seen in _chain(error):
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT) and seen.filename:
            return str(seen.filename)
    return None


def store_down(error: BaseException) -> bool:
    """The database (or Redis) could not be reached or used, here or in what caused this."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        redis_down: tuple[type[BaseException], ...] = (RedisConnectionError, RedisTimeoutError)
    except ImportError:  # pragma: no cover - redis is a dependency
        redis_down = ()
    for seen in _chain(error):
        if isinstance(seen, OperationalError) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
            return True
        if redis_down and isinstance(seen, redis_down):
            return True
    return False


def infrastructure_failure(error: BaseException) -> OpenAIError | None:
    """The 503 that names what failed under ``error``, or None when it was something else."""
    headers = {"retry-after": RETRY_AFTER_S}
    if disk_full(error):
        message = "The gateway's disk is full, so it cannot record this call; please try again later."
        return OpenAIError(503, message, "server_error", None, "disk_full", headers)
    if store_down(error):
        message = "The gateway's database is unavailable; please try again."
        return OpenAIError(503, message, "server_error", None, "store_unavailable", headers)
    return None


def describe(error: BaseException) -> str:
    """One line about ``error`` for the log: the driver's message, never the SQL or its parameters."""
    from sqlalchemy.exc import DBAPIError

    cause: BaseException = error.orig if isinstance(error, DBAPIError) and error.orig is not None else error
    text = (str(cause).strip().splitlines() or [""])[0][:300]
    name = type(error).__name__
    if type(cause).__name__ != name:
        name = f"{name} ({type(cause).__name__})"
    return secrets(f"{name}: {text}" if text else name)
