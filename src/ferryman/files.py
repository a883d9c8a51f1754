"""Private files: everything Ferryman writes is for its user's eyes only.

Ferryman's files hold what its callers sent and received (audit bodies, ``ferryman run`` journals
and results, exports), its virtual keys' hashes and usage, and the audit checkpoint key. The usual
umask (022) would leave all of them readable by every other account on the machine, so every file
Ferryman creates is mode 0600 and every folder it creates for them 0700, whatever the umask.

- A file Ferryman creates is 0600; an existing file it writes or appends to, or opens as a
  database, loses any group and other bits (0644 becomes 0600). Only regular files are touched:
  ``-o /dev/stdout`` or a named pipe is written as it is.
- A folder Ferryman creates (with its missing parents) is 0700. A folder that already exists,
  the working directory or ``/tmp`` say, is the user's and keeps its mode, unless the caller
  says it is Ferryman's own (``tighten=True``: the default data directory).
- SQLite gives a database's ``-wal``, ``-shm`` and ``-journal`` files the main file's mode, so a
  database file made 0600 before SQLite opens it (:func:`private_database`) keeps them private.

Standard library only: this module is imported by the lowest layers (settings, the store).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o600
DIR_MODE = 0o700
_OTHERS = stat.S_IRWXG | stat.S_IRWXO
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: str | os.PathLike[str], *, tighten: bool = False) -> Path:
    """Make the folder ``path`` (and its missing parents) with mode 0700; return it as a Path.

    Folders that already exist keep their mode; with ``tighten``, ``path`` itself (only) loses
    its group and other bits when it exists and belongs to this user (a folder that is
    Ferryman's own, made by an older version). Raises ``FileExistsError`` when ``path`` is a
    file, as ``Path.mkdir(exist_ok=True)`` does.
    """
    path = Path(path)
    missing: list[Path] = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue  # made meanwhile by another process: whoever made it set its mode
        os.chmod(made, DIR_MODE)  # mkdir's mode passes through the umask
    if not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if tighten and not missing:
        _tighten(path, DIR_MODE)
    return path


def tighten(path: str | os.PathLike[str]) -> None:
    """An existing regular file of this user's that group or others can use becomes 0600;
    a missing file, or someone else's, or anything but a regular file, is left alone."""
    _tighten(Path(path), FILE_MODE)


def _tighten(path: Path, mode: int) -> None:
    try:
        found = os.stat(path)
    except OSError:
        return
    kind = stat.S_ISDIR if mode == DIR_MODE else stat.S_ISREG
    if not kind(found.st_mode) or not found.st_mode & _OTHERS or not _mine(found):
        return
    with contextlib.suppress(OSError):
        os.chmod(path, mode)


def _mine(found: os.stat_result) -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or found.st_uid == geteuid()


def _flags(mode: str) -> int:
    if "+" in mode:
        flags = os.O_RDWR
    elif "r" in mode:
        raise ValueError(f"open_private writes files; mode {mode!r} only reads")
    else:
        flags = os.O_WRONLY
    if "w" in mode:
        flags |= os.O_TRUNC
    elif "a" in mode:
        flags |= os.O_APPEND
    elif "x" in mode:
        flags |= os.O_EXCL
    else:
        raise ValueError(f"unsupported mode {mode!r} (w, a or x, with b and +)")
    if "b" in mode:
        flags |= getattr(os, "O_BINARY", 0)
    return flags | getattr(os, "O_CLOEXEC", 0)


def _open_fd(path: Path, flags: int) -> int:
    """``os.open`` creating ``path`` with mode 0600, or tightening it when it was there already."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE)
        created = True
    except FileExistsError:
        if flags & os.O_EXCL:
            raise
        fd = os.open(path, flags | os.O_CREAT, FILE_MODE)  # O_CREAT: it may have gone meanwhile
        created = False
    try:
        found = os.fstat(fd)
        current = stat.S_IMODE(found.st_mode)
        wanted = current != FILE_MODE if created else bool(current & _OTHERS)
        if wanted and stat.S_ISREG(found.st_mode) and _mine(found):
            with contextlib.suppress(OSError):
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, FILE_MODE)
                else:  # pragma: no cover (Windows before 3.13: only the read-only bit exists)
                    os.chmod(path, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_private(
    path: str | os.PathLike[str], mode: str = "w", *, encoding: str | None = None, newline: str | None = None
) -> IO[Any]:
    """``open(path, mode)`` for writing (``w``, ``a``, ``x``, with ``b`` and ``+``) where the
    file is created 0600 and an existing one loses its group and other bits."""
    fd = _open_fd(Path(path), _flags(mode))
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        # The fd is open already: ``x`` has done its work, and ``fdopen`` knows only w and a.
        return os.fdopen(fd, mode.replace("x", "w"), encoding=encoding, newline=newline)
    except BaseException:
        os.close(fd)
        raise


def private_file(path: str | os.PathLike[str]) -> Path:
    """Make sure ``path`` exists as a 0600 file: created empty, or, when it exists, tightened
    (:func:`tighten`: never opened, so a read-only file stays usable for reading)."""
    path = Path(path)
    try:
        os.close(_open_fd(path, os.O_WRONLY | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)))
    except FileExistsError:
        tighten(path)
    return path


def private_database(path: str | os.PathLike[str]) -> Path:
    """A SQLite file made (or tightened to) 0600 before SQLite opens it, with any ``-wal``,
    ``-shm`` or ``-journal`` left from an earlier run tightened too (new ones take the main
    file's mode from SQLite itself)."""
    path = private_file(path)
    for suffix in _SQLITE_SIDE_FILES:
        tighten(path.with_name(path.name + suffix))
    return path


@contextlib.contextmanager
def atomic_private(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None, fsync: bool = True
) -> Iterator[IO[Any]]:
    """Write ``path`` whole or not at all: a 0600 temporary file beside it (``.NAME.PID.RANDOM.tmp``),
    flushed (and fsynced unless ``fsync=False``), then renamed over ``path``. On an exception the
    temporary file is removed and ``path`` is left as it was."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_private writes whole files: mode 'w' or 'wb', not {mode!r}")
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open_private(temporary, mode.replace("w", "x"), encoding=encoding) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def write_private(path: str | os.PathLike[str], data: bytes | str, *, fsync: bool = True) -> None:
    """Replace ``path`` atomically with ``data`` (text as UTF-8), mode 0600."""
    with atomic_private(path, "wb", fsync=fsync) as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def create_private(path: str | os.PathLike[str], data: str) -> bool:
    """Make ``path`` (mode 0600) holding ``data`` unless it exists; whole or not at all. Returns
    whether this call made it. Written to a temporary file first and linked into place (atomic,
    and refused if ``path`` appeared meanwhile), so a reader never sees a half-written file and of
    two processes making it at once, one wins and both then read the winner's."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open_private(temporary, "x") as handle:  # 0600, and the link keeps the mode
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
