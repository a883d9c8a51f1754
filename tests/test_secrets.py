"""Secret references (ferryman.secrets), redaction (ferryman.redact) and redacted JSON logs (ferryman.logs)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest

from ferryman import redact
from ferryman.logs import configure_json_logging, redact_record, remove_json_logging
from ferryman.secrets import Secret, SecretError, resolve, resolve_optional

KEY = "sk-proj-unit-test-0123456789abcdef"

# -- secret references --------------------------------------------------------------------------


def test_env_reference(monkeypatch):
    monkeypatch.setenv("FERRYMAN_UNIT_KEY", f"  {KEY}\n")
    secret = resolve("env:FERRYMAN_UNIT_KEY")
    assert secret.reveal() == KEY
    assert secret.reference == "env:FERRYMAN_UNIT_KEY"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_unset_or_blank_env_is_an_error_or_none(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("FERRYMAN_UNIT_KEY", raising=False)
    else:
        monkeypatch.setenv("FERRYMAN_UNIT_KEY", value)
    with pytest.raises(SecretError, match="FERRYMAN_UNIT_KEY is not set"):
        resolve("env:FERRYMAN_UNIT_KEY")
    assert resolve_optional("env:FERRYMAN_UNIT_KEY") is None


def test_a_secret_never_shows_itself(monkeypatch):
    monkeypatch.setenv("FERRYMAN_UNIT_KEY", KEY)
    secret = resolve("env:FERRYMAN_UNIT_KEY")
    shown = [repr(secret), str(secret), f"{secret}", f"{secret!r}", str([secret]), str({"k": secret})]
    assert all(KEY not in s for s in shown)
    assert "env:FERRYMAN_UNIT_KEY" in repr(secret)
    assert bool(secret) and not bool(Secret("", "env:X"))


@pytest.mark.parametrize("literal", [KEY, "sk-abc:def-0123456789", "Bearer:sk-0123456789abcdef"])
def test_a_literal_key_is_refused_without_echoing_it(literal):
    with pytest.raises(SecretError) as caught:
        resolve(literal)
    assert literal not in str(caught.value)
    assert literal.split(":")[0] not in str(caught.value) or len(literal.split(":")[0]) < 8


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_file_reference(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY + "\n")
    path.chmod(0o600)
    assert resolve(f"file:{path}").reveal() == KEY
    path.chmod(0o640)
    with pytest.raises(SecretError, match="chmod 600"):
        resolve(f"file:{path}")


def test_file_reference_errors_name_the_file_only(tmp_path):
    with pytest.raises(SecretError, match="cannot read secret file"):
        resolve(f"file:{tmp_path / 'missing'}")
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    with pytest.raises(SecretError, match="not a regular file"):
        resolve(f"file:{folder}")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(SecretError, match="is empty"):
        resolve(f"file:{empty}")


def test_keyring_reference(monkeypatch):
    import keyring

    store = {("ferryman", "openai"): KEY}
    monkeypatch.setattr(keyring, "get_password", lambda service, name: store.get((service, name)))
    assert resolve("keyring:ferryman/openai").reveal() == KEY
    with pytest.raises(SecretError, match="no keyring entry ferryman/other"):
        resolve("keyring:ferryman/other")
    with pytest.raises(SecretError, match="SERVICE/NAME"):
        resolve("keyring:ferryman")


def test_a_failing_keyring_backend_is_a_secret_error(monkeypatch):
    import keyring

    def broken(service: str, name: str) -> str:
        raise RuntimeError("No recommended backend was available")

    monkeypatch.setattr(keyring, "get_password", broken)
    with pytest.raises(SecretError, match="keyring lookup of ferryman/openai failed: RuntimeError"):
        resolve("keyring:ferryman/openai")


def test_unknown_kind():
    with pytest.raises(SecretError, match="unknown secret reference kind 'vault'"):
        resolve("vault:kv/openai")


# -- redaction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"key {KEY} here", "key [REDACTED] here"),
        ("virtual fm-team-a-0123456789 key", "virtual [REDACTED] key"),
        ("OPENAI_API_KEY=sk-svcacct-0123456789", "OPENAI_API_KEY=[REDACTED]"),
        ("quoted %22sk-0123456789abc%22", "quoted %22[REDACTED]%22"),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "Authorization: Bearer [REDACTED]"),
        ("authorization: bearer abcdefgh12345", "authorization: bearer [REDACTED]"),
        ("api-key: 0123456789abcdef0123456789abcdef", "api-key: [REDACTED]"),
        ('{"api_key": "0123456789abcdef"}', '{"api_key": "[REDACTED]"}'),
        ("?api-key=abcdef0123456789&x=1", "?api-key=[REDACTED]&x=1"),
        ("a task-force-0123456789 and risk-assessment-2026", "a task-force-0123456789 and risk-assessment-2026"),
        ("short sk-abc", "short sk-abc"),
        ("masked sk-************6789", "masked sk-************6789"),
        ("nothing to see", "nothing to see"),
    ],
)
def test_secrets(text, expected):
    assert redact.secrets(text) == expected


def test_secrets_is_idempotent():
    once = redact.secrets(f"Bearer {KEY} api-key: {KEY}")
    assert redact.secrets(once) == once
    assert KEY not in once


def test_secrets_bytes_keeps_clean_bodies_identical():
    clean = b'{"error": {"message": "nope"}}'
    assert redact.secrets_bytes(clean) is clean
    dirty = f'{{"error": {{"message": "bad key {KEY}"}}}}'.encode()
    assert redact.secrets_bytes(dirty) == b'{"error": {"message": "bad key [REDACTED]"}}'
    assert redact.secrets_bytes(b"\xff sk-0123456789abc") == b"\xff [REDACTED]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.doe@example.com now", "mail [EMAIL] now"),
        ("call +1 (555) 123-4567 today", "call [PHONE] today"),
        ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
        ("not a card 4111 1111 1111 1112", "not a card 4111 1111 1111 1112"),
        ("iban GB82 WEST 1234 5698 7654 32", "iban [IBAN]"),
        ("on 2026-11-25 10:00 at 127.0.0.1", "on 2026-11-25 10:00 at 127.0.0.1"),
        ("pi is 3.14159265358", "pi is 3.14159265358"),
    ],
)
def test_personal(text, expected):
    assert redact.personal(text) == expected


def test_json_value_blanks_secret_fields_and_keeps_data_fields():
    value = {
        "messages": [{"role": "user", "content": f"my key is {KEY}, mail a@b.co"}],
        "api_key": "anything",
        "client_secret": {"value": "ek_123"},
        "logprobs": {"content": [{"token": "Hello", "logprob": -0.1}]},
        "max_tokens": 5,
    }
    out = redact.json_value(value)
    assert out["messages"][0]["content"] == "my key is [REDACTED], mail [EMAIL]"
    assert out["api_key"] == out["client_secret"] == "[REDACTED]"
    assert out["logprobs"]["content"][0]["token"] == "Hello"
    assert out["max_tokens"] == 5
    assert redact.json_value(value, pii=False)["messages"][0]["content"] == "my key is [REDACTED], mail a@b.co"


def test_headers():
    out = redact.headers({"authorization": f"Bearer {KEY}", "api-key": "abc", "cookie": "s=1", "x-note": KEY})
    assert set(out.values()) == {"[REDACTED]"}
    assert list(out) == ["authorization", "api-key", "cookie", "x-note"]


# -- JSON logs ----------------------------------------------------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.text.append(logging.Formatter().format(record))


@pytest.fixture
def json_log() -> Iterator[tuple[io.StringIO, _Collect]]:
    stream = io.StringIO()
    configure_json_logging("DEBUG", stream=stream)
    root = _Collect()
    logging.getLogger().addHandler(root)
    yield stream, root
    logging.getLogger().removeHandler(root)
    remove_json_logging()


def test_json_lines_are_redacted_for_every_handler(json_log):
    stream, root = json_log
    log = logging.getLogger("ferryman.unit")
    try:
        raise ValueError(f"upstream said {KEY}")
    except ValueError:
        log.exception("call failed with %s", f"Bearer {KEY}", extra={"note": KEY, "n": 3})
    (line,) = [json.loads(x) for x in stream.getvalue().splitlines()]
    assert line["message"] == "call failed with Bearer [REDACTED]"
    assert line["logger"] == "ferryman.unit"
    assert line["level"] == "ERROR"
    assert line["note"] == "[REDACTED]"
    assert line["n"] == 3
    assert "ValueError: upstream said [REDACTED]" in line["exception"]
    # The root logger's handlers get the same, redacted record.
    assert root.text
    assert all(KEY not in text for text in [*root.text, stream.getvalue()])


def test_configure_replaces_its_own_handler(json_log):
    configure_json_logging("INFO", stream=io.StringIO())
    handlers = [h for h in logging.getLogger("ferryman").handlers if getattr(h, "ferryman_json", False)]
    assert len(handlers) == 1


def test_remove_restores_the_level_configure_changed():
    logger = logging.getLogger("ferryman")
    before = logger.level
    configure_json_logging("WARNING", stream=io.StringIO())
    configure_json_logging("ERROR", stream=io.StringIO())
    assert logger.level == logging.ERROR
    remove_json_logging()
    assert logger.level == before
    assert not [h for h in logger.handlers if getattr(h, "ferryman_json", False)]


def test_redact_record_copes_with_bad_format_args():
    record = logging.LogRecord("ferryman.x", logging.INFO, __file__, 1, "%d items %s", ("many",), None)
    redact_record(record)
    assert record.args is None
    assert "many" in record.getMessage()


def test_default_json_handler_writes_to_the_current_stderr(monkeypatch, capsys):
    try:
        configure_json_logging("INFO")
        logging.getLogger("ferryman.unit").info("hello %s", KEY)
        err = capsys.readouterr().err
        assert json.loads(err.splitlines()[-1])["message"] == "hello [REDACTED]"
    finally:
        remove_json_logging()
