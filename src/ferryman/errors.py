"""OpenAI-format errors: ``{"error": {"message", "type", "param", "code"}}``, and settings errors.

Every part of Ferryman that refuses a request raises :class:`OpenAIError`; the front door
that caught it turns it into the body, status and headers OpenAI itself would send.

Settings that do not load raise :class:`SettingsError` (a ``ValueError``) before any request:
one line naming the file or variable, the key, the problem and the nearest valid name, which
the ``ferryman`` command prints before exiting with code 2. It is built by
:mod:`ferryman.config_errors`.

    Exception
    ├── OpenAIError      a refused request (status, OpenAI-format body)
    └── ValueError
        └── SettingsError    ferryman.toml / FERRYMAN_* / keyword overrides do not load
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class OpenAIError(Exception):
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class SettingsError(ValueError):
    """The settings do not load. ``str()`` is one line; the parts are kept as attributes:
    ``source`` (a file path, a variable name or ``keyword overrides``), ``key`` (dotted, such as
    ``cache.mode``; ``""`` for none) and ``suggestion`` (the nearest valid name, ``""`` for none)."""

    def __init__(self, message: str, source: str = "", key: str = "", suggestion: str = "") -> None:
        self.message = " ".join(message.split())  # one line, whatever a validator wrote
        self.source, self.key, self.suggestion = source, key, suggestion
        super().__init__(self.message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.source, self.key, self.suggestion))


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def not_found(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(404, message, "invalid_request_error", param, code)


def invalid_url(method: str, path: str) -> OpenAIError:
    return OpenAIError(404, f"Invalid URL ({method} {path})", "invalid_request_error")


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


# Where OpenAI's own refusal of a retired model sends the caller (its wording, kept as it is).
OPENAI_DEPRECATIONS_URL = "https://platform.openai.com/docs/deprecations"


def model_retired(model: str, message: str | None = None) -> OpenAIError:
    """A model past its shutdown date, as OpenAI refuses it: 404 ``model_not_found`` on ``model``
    (``message``: other words in the same shape, such as Ferryman's own refusal)."""
    text = message or f"The model `{model}` has been deprecated, learn more here: {OPENAI_DEPRECATIONS_URL}"
    return OpenAIError(404, text, "invalid_request_error", "model", "model_not_found")


def unparsable_json() -> OpenAIError:
    return invalid_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)"
    )


def missing_key() -> OpenAIError:
    return OpenAIError(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
    )


def invalid_key(shown: str) -> OpenAIError:
    return OpenAIError(
        401,
        f"Incorrect API key provided: {shown}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        None,
        "invalid_api_key",
    )


def admin_key_required() -> OpenAIError:
    """A key that is not an admin key on an organisation endpoint (usage, costs), as OpenAI words it."""
    return OpenAIError(
        401,
        "You have insufficient permissions for this operation. Missing scopes: api.usage.read. Check that "
        "you have the correct role in your organization (Reader, Writer, Owner) and project (Member, Owner), "
        "and if you're using a restricted API key, that it has the necessary scopes. Organization usage and "
        "costs need an admin key (sk-admin-...).",
        "invalid_request_error",
    )


def server_error(
    message: str = "The server had an error while processing your request. Sorry about that!",
) -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, "server_error")


def mask_key(key: str) -> str:
    """OpenAI's way of echoing a key: the first and last few characters only."""
    if len(key) <= 8:
        return "*" * len(key)
    return f"{key[:3]}{'*' * 12}{key[-4:]}"
