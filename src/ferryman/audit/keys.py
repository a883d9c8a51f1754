"""The checkpoint key: HMAC-SHA256 signatures over the audit chain's anchors.

The key comes from ``settings.audit.checkpoint_key`` (a secret reference: ``env:``, ``keyring:``,
``file:``) or else from ``audit.key`` in Ferryman's data directory, created on first use with
mode 0600. It is never stored in the database, so whoever can write the database cannot sign a
checkpoint. Messages and exceptions name where a key lives, never the key.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets as _random
from pathlib import Path

from ferryman.config import default_data_dir
from ferryman.files import create_private, private_dir
from ferryman.secrets import SecretError, resolve

KEY_FILE = "audit.key"


class AuditKeyError(ValueError):
    """No usable checkpoint key (the message never holds a key)."""


class CheckpointKey:
    """Signs and checks checkpoints; ``repr`` shows where the key came from, never the key."""

    __slots__ = ("_key", "source")

    def __init__(self, key: bytes, source: str) -> None:
        if len(key) < 16:
            raise AuditKeyError(f"the audit checkpoint key from {source} is too short (16 bytes at least)")
        self._key = key
        self.source = source

    def __repr__(self) -> str:
        return f"CheckpointKey(from {self.source})"

    __str__ = __repr__

    def sign(self, kind: str, seq: int, hash_: str, count: int) -> str:
        message = f"ferryman-audit-checkpoint\n{kind}\n{seq}\n{hash_}\n{count}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, kind: str, seq: int, hash_: str, count: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(kind, seq, hash_, count), signature or "")

    def derive(self, purpose: str) -> bytes:
        """A key for another use of this secret (the records' request fingerprints), derived so
        that nothing made with it is ever a valid checkpoint signature, nor reveals the key."""
        return hmac.new(self._key, f"ferryman-audit-derive\n{purpose}".encode(), hashlib.sha256).digest()


def key_file() -> Path:
    return default_data_dir() / KEY_FILE


def load_key(reference: str | None = None, *, create: bool = False) -> CheckpointKey:
    """The key from ``reference``, else the data directory's key file (made when ``create``)."""
    if reference:
        try:
            secret = resolve(reference)
        except SecretError as exc:
            raise AuditKeyError(f"audit checkpoint key: {exc}") from None
        return CheckpointKey(secret.reveal().encode(), reference)
    path = key_file()
    if not path.exists():
        if not create:
            raise AuditKeyError(
                f"no audit checkpoint key: {path} does not exist and audit.checkpoint_key is not set "
                "(pass --key env:NAME|file:/path|keyring:SERVICE/NAME)"
            )
        _create(path)
    try:
        secret = resolve(f"file:{path}")
    except SecretError as exc:
        raise AuditKeyError(f"audit checkpoint key: {exc}") from None
    return CheckpointKey(secret.reveal().encode(), f"file:{path}")


def _create(path: Path) -> None:
    """Write a fresh random key with mode 0600; if another process won the race, keep its key."""
    # The default data directory is Ferryman's own (tightened to 0700 if it exists); one named by
    # FERRYMAN_DATA_DIR is made 0700 when it is made here, and otherwise keeps its mode.
    private_dir(path.parent, tighten=not os.environ.get("FERRYMAN_DATA_DIR"))
    create_private(path, _random.token_hex(32) + "\n")  # another process made it first: keep that key
