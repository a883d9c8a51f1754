"""Upstream secrets: from the environment, the system keyring, or a private file.

A setting holds a reference, never the secret: ``env:OPENAI_API_KEY``, ``keyring:SERVICE/NAME``
or ``file:/path/to/key``. A file that its group or others can read is refused. Resolved values
are kept in :class:`Secret`, whose ``repr`` and ``str`` never show them, and handed to
:func:`ferryman.redact.remember`, so that logs, errors, audit records and replies never show them
either, whatever their shape (an admin key or an Azure key has no ``sk-`` to recognise it by).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ferryman import redact


class SecretError(ValueError):
    """A reference that cannot be resolved (the message never holds the secret)."""


class Secret:
    __slots__ = ("_value", "reference")

    def __init__(self, value: str, reference: str) -> None:
        self._value = value
        self.reference = reference

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.reference!r})"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


def _known(value: str, reference: str) -> Secret:
    """The resolved value, remembered for redaction (values under 8 characters are not)."""
    redact.remember(value)
    return Secret(value, reference)


def resolve(reference: str) -> Secret:
    kind, sep, rest = reference.partition(":")
    if not sep:
        raise SecretError(
            "secret settings are references (env:NAME, keyring:SERVICE/NAME, file:/path); "
            "a literal key in settings is refused"
        )
    if kind == "env":
        value = os.environ.get(rest)
        if not value or not value.strip():
            raise SecretError(f"environment variable {rest} is not set")
        return _known(value.strip(), reference)
    if kind == "keyring":
        service, _, name = rest.partition("/")
        if not service or not name:
            raise SecretError(f"keyring references are keyring:SERVICE/NAME, got keyring:{rest}")
        try:
            import keyring
        except ImportError:
            raise SecretError("keyring references need the keyring package") from None
        try:
            found = keyring.get_password(service, name)
        except Exception as exc:  # no backend, locked store, ...: the message names the entry only
            raise SecretError(f"keyring lookup of {service}/{name} failed: {type(exc).__name__}") from None
        if not found:
            raise SecretError(f"no keyring entry {service}/{name}")
        return _known(found.strip(), reference)
    if kind == "file":
        path = Path(rest).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
        if not stat.S_ISREG(mode):
            raise SecretError(f"secret file {path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"secret file {path} is readable by group or others: chmod 600 {path}")
        try:
            value = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecretError(f"cannot read secret file {path}: {type(exc).__name__}") from None
        if not value.strip():
            raise SecretError(f"secret file {path} is empty")
        return _known(value.strip(), reference)
    # A literal key with a colon in it must not be echoed back as the "kind".
    shown = repr(kind) if kind.isalnum() and len(kind) <= 16 else "(not shown)"
    raise SecretError(f"unknown secret reference kind {shown} (use env:, keyring: or file:)")


def resolve_optional(reference: str) -> Secret | None:
    """Like :func:`resolve`, but an unset environment variable is ``None`` (no key)."""
    if reference.startswith("env:") and not os.environ.get(reference[4:], "").strip():
        return None
    return resolve(reference)
