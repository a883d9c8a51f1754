"""``ferryman run`` on a full disk: a named stop instead of a traceback, and no reply paid for and lost.

Everything the runner writes lives beside the results file: the journal (SQLite), and the results
and errors files, written whole at the end. When one of those writes fails because the disk (or
the user's quota) is full (``ENOSPC``, ``EDQUOT``, ``SQLITE_FULL``), the run stops with
:class:`DiskFull`, which names the file, and ``ferryman run`` exits with :data:`EXIT_DISK_FULL`
and a message. Neither kind of write can leave a torn record behind: a journal commit that does
not fit is rolled back whole by SQLite (WAL frames without their commit frame are ignored when the
journal is next opened), and a results file is a temporary file renamed into place, removed when
it does not fit, so the previous one stays as it was. So there is no torn last line for a reader
to skip: the next run opens the journal as the last successful commit left it.

What a full disk would still cost is the replies in flight when it filled: they were paid for, but
their results could not be committed, so the next run would send those lines again. A
:class:`Reserve` keeps room for them: a file allocated beside the journal before anything is sent,
deleted (giving its room back) on the first journal write that fails for lack of space. That write
is then tried once more, the live runner takes no new line, and the lines in flight are recorded
in the room the reserve gave back. It is best effort: if another process takes that room first, a
reply that cannot be recorded is sent again by the next run, as after a ``kill -9``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ferryman.files import open_private
from ferryman.store.faults import describe, disk_full, disk_full_path

# ``ferryman run``'s exit code when it stopped because a disk was full (0-3 and 130 are taken).
EXIT_DISK_FULL = 4

# The reserve: a base for the commits that end a run, and room per line in flight for its result
# (a commit of one small result appends two to seven 4 KiB pages to the WAL; large replies take more).
RESERVE_BASE = 128 * 1024
RESERVE_PER_LINE = 64 * 1024
RESERVE_MAX = 8 * 1024 * 1024
_CHUNK = 64 * 1024


class DiskFull(Exception):
    """A write of ``ferryman run`` did not fit on the disk: ``what`` (``the journal``, ...) at ``path``."""

    def __init__(self, path: Path | str | None, what: str, cause: BaseException) -> None:
        self.path = Path(path).absolute() if path is not None else None
        self.what = what
        self.reason = describe(cause)
        where = f"{what} {self.path}" if self.path is not None else what
        super().__init__(f"cannot write {where} ({self.reason})")
        self.__cause__ = cause

    @classmethod
    def of(cls, error: BaseException) -> DiskFull:
        """Any other error whose cause is a full disk: named by the file the OS error names, if any."""
        if isinstance(error, DiskFull):
            return error
        path = disk_full_path(error)
        return cls(path, "a file" if path is not None else "to the disk", error)


def reserve_size(concurrency: int) -> int:
    return min(RESERVE_MAX, RESERVE_BASE + RESERVE_PER_LINE * max(1, concurrency))


def room(path: Path) -> int:
    """Bytes free for this user on the disk holding ``path`` (a huge number where it cannot be told)."""
    try:
        found = os.statvfs(path)
    except (AttributeError, OSError):  # no statvfs (Windows), or the path is gone
        return RESERVE_MAX * 4
    return found.f_bavail * found.f_frsize


class Reserve:
    """Room kept on the journal's disk, given back by :meth:`release` when the disk is full."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.held = False

    def make(self) -> None:
        """Allocate the reserve (really allocated, not a sparse file); :class:`DiskFull` if it does
        not fit, which means the disk is full before anything was sent."""
        try:
            with open_private(self.path, "wb") as handle:
                _allocate(handle.fileno(), self.size)
        except OSError as error:
            with contextlib.suppress(OSError):
                self.path.unlink()
            if disk_full(error):
                raise DiskFull(self.path, f"the run's {self.size // 1024} KiB reserve", error) from error
            raise
        self.held = True

    def release(self) -> bool:
        """Delete the reserve; True if it was held (its room is free now)."""
        held, self.held = self.held, False
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        return held


def _allocate(fd: int, size: int) -> None:
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        try:
            allocate(fd, 0, size)
            return
        except OSError as error:
            if error.errno not in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
    zeros = bytes(_CHUNK)  # no fallocate here: written blocks are allocated blocks
    left = size
    while left > 0:
        left -= os.write(fd, zeros[: min(left, _CHUNK)])
    os.fsync(fd)
