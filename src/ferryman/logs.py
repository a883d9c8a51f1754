"""JSON log lines for Ferryman, with secrets removed from every record.

``configure_json_logging("INFO")`` puts one handler on the ``ferryman`` logger that writes one
JSON object per line (to ``sys.stderr`` as it is at the time of writing, or to ``stream``)::

    {"time": "2026-11-25T10:00:00.123Z", "level": "INFO", "logger": "ferryman.telemetry",
     "message": "POST /chat/completions 200", "request_id": "req_…", "model": "gpt-4o-mini", …}

Fields passed with ``extra=`` become top-level keys. The handler's :class:`RedactFilter` removes
API keys and bearer tokens (:func:`ferryman.redact.secrets`) from the message, its arguments, the
exception text and string extras *in the record itself*, so handlers further up (the root
logger's) receive the redacted record too.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

from ferryman.redact import secrets

LOGGER = "ferryman"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}
_REDACTED_MARK = "_ferryman_redacted"


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return secrets(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Remove secrets from ``record`` in place: message (with its args merged in), exception
    and stack text, and string-valued extras. Idempotent."""
    if getattr(record, _REDACTED_MARK, False):
        return record
    try:
        message = record.getMessage()
    except Exception:  # a bad format string: keep what can be shown
        message = f"{record.msg!s} {record.args!r}"
    record.msg, record.args = secrets(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = secrets(record.exc_text)
    # The traceback objects hold the unredacted message: handlers use ``exc_text`` instead.
    record.exc_info = None
    if record.stack_info:
        record.stack_info = secrets(record.stack_info)
    for name, value in list(record.__dict__.items()):
        if name not in _STANDARD:
            record.__dict__[name] = _clean(value)
    setattr(record, _REDACTED_MARK, True)
    return record


class RedactFilter(logging.Filter):
    """A handler filter that redacts every record passing through (and never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        seconds = record.created
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name != _REDACTED_MARK and name not in out:
                out[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass


def json_handler() -> logging.Handler | None:
    """The handler :func:`configure_json_logging` installed, if any."""
    return next((h for h in logging.getLogger(LOGGER).handlers if getattr(h, "ferryman_json", False)), None)


def configure_json_logging(level: int | str = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Log the ``ferryman`` logger's records as JSON lines, redacted, at ``level`` and above.

    Calling it again replaces the previous handler. Returns the handler (to remove it later:
    :func:`remove_json_logging`)."""
    remove_json_logging()
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    logger = logging.getLogger(LOGGER)
    handler.ferryman_json = True  # type: ignore[attr-defined]
    handler.ferryman_level_before = logger.level  # type: ignore[attr-defined]
    handler.setFormatter(JSONFormatter())
    handler.addFilter(RedactFilter())
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
    return handler


def ensure_json_logging(level: int | str = "INFO") -> logging.Handler:
    """The installed JSON handler, installing one (on stderr) if there is none."""
    return json_handler() or configure_json_logging(level)


def remove_json_logging() -> None:
    """Undo :func:`configure_json_logging`: its handler goes, the logger's level is as it was."""
    logger = logging.getLogger(LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "ferryman_json", False):
            logger.removeHandler(handler)
            logger.setLevel(getattr(handler, "ferryman_level_before", logger.level))
            handler.close()


__all__ = [
    "JSONFormatter",
    "RedactFilter",
    "configure_json_logging",
    "ensure_json_logging",
    "json_handler",
    "redact_record",
    "remove_json_logging",
]
