"""Configured secrets are redacted by value, whatever their shape (ferryman.redact.remember).

Every value :func:`ferryman.secrets.resolve` returns is remembered; an admin key such as
``ferryman-admin-test-secret`` has no ``sk-`` prefix to be recognised by, yet it must not reach a
log, an error, an audit record or a reply. Each test uses its own value: the registry lasts for
the process.
"""

from __future__ import annotations

import json
import os
import secrets as _random
import sys
import threading
from urllib.parse import quote, quote_plus

import orjson
import pytest

from ferryman import redact
from ferryman.secrets import resolve, resolve_optional

SECRET = redact.SECRET


@pytest.fixture
def value(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh secret with no key shape, resolved from the environment (so now remembered)."""
    made = f"ferryman-admin-{_random.token_hex(6)}"
    monkeypatch.setenv("FERRYMAN_UNIT_PLAIN_SECRET", made)
    assert resolve("env:FERRYMAN_UNIT_PLAIN_SECRET").reveal() == made
    return made


def test_an_unshaped_secret_is_not_redacted_until_resolved():
    unseen = f"plain-value-{_random.token_hex(6)}"
    assert redact.secrets(f"model {unseen}") == f"model {unseen}"


def test_text(value):
    assert redact.secrets(f"The model `{value}` does not exist") == f"The model `{SECRET}` does not exist"
    assert redact.secrets(value) == SECRET
    assert redact.secrets(f"{value}{value}") == SECRET + SECRET
    assert redact.text(f"mail a@b.co key {value}") == f"mail [EMAIL] key {SECRET}"
    assert redact.text(f"key {value}", pii=False) == f"key {SECRET}"


def test_bytes(value):
    body = orjson.dumps({"error": {"message": f"The model `{value}` does not exist"}})
    cleaned = redact.secrets_bytes(body)
    assert value.encode() not in cleaned
    assert orjson.loads(cleaned) == {"error": {"message": f"The model `{SECRET}` does not exist"}}
    assert redact.secrets_bytes(b"\xff " + value.encode()) == b"\xff " + SECRET.encode()


def test_json_values_nested_as_values_inside_strings_and_as_names(value):
    body = {
        "model": value,
        "messages": [{"role": "user", "content": f"my admin key is {value}, ok?"}],
        "metadata": {"deep": [{"x": value}], "n": 3, "none": None},
        value: "a name",
    }
    out = redact.json_value(body)
    assert value not in orjson.dumps(out).decode()
    assert out["model"] == SECRET
    assert out["messages"][0]["content"] == f"my admin key is {SECRET}, ok?"
    assert out["metadata"] == {"deep": [{"x": SECRET}], "n": 3, "none": None}
    assert out[SECRET] == "a name"
    assert redact.json_value(body, pii=False)["model"] == SECRET


def test_headers(value):
    out = redact.headers({"x-custom": f"token {value}", "authorization": "anything", "accept": "json"})
    assert out == {"x-custom": f"token {SECRET}", "authorization": SECRET, "accept": "json"}


def test_percent_encoded_and_json_escaped_forms(monkeypatch):
    made = f'p@ss/wörd {_random.token_hex(4)}"x'  # every character that gets escaped somewhere
    monkeypatch.setenv("FERRYMAN_UNIT_ODD_SECRET", made)
    resolve("env:FERRYMAN_UNIT_ODD_SECRET")
    for form in (
        made,
        quote(made, safe=""),
        quote_plus(made, safe=""),
        quote(made, safe="").lower(),  # lower-case hex is still the same URL
        orjson.dumps(made).decode()[1:-1],
        json.dumps(made)[1:-1],
    ):
        assert redact.secrets(f"/v1/models/{form}?q=1") == f"/v1/models/{SECRET}?q=1", form
    ascii_json = json.dumps({"model": made})  # \u00f6 and \": the standard library's escaping
    assert made not in redact.secrets_bytes(ascii_json.encode()).decode()
    assert redact.secrets_bytes(ascii_json.encode()) == b'{"model": "[REDACTED]"}'
    assert redact.secrets_bytes(orjson.dumps({"model": made})) == b'{"model":"[REDACTED]"}'


def test_a_short_value_is_not_remembered(monkeypatch):
    monkeypatch.setenv("FERRYMAN_UNIT_SHORT", "abc1234")  # 7 characters
    assert resolve("env:FERRYMAN_UNIT_SHORT").reveal() == "abc1234"
    assert redact.secrets("abc1234 in a sentence") == "abc1234 in a sentence"
    redact.remember("x")
    redact.remember("")
    assert redact.secrets("x marks the spot") == "x marks the spot"


def test_resolve_optional_and_file_references_are_remembered(monkeypatch, tmp_path):
    made = f"optional-{_random.token_hex(6)}"
    monkeypatch.setenv("FERRYMAN_UNIT_OPTIONAL", made)
    assert resolve_optional("env:FERRYMAN_UNIT_OPTIONAL") is not None
    assert redact.secrets(made) == SECRET
    if sys.platform != "win32":
        in_file = f"azure{_random.token_hex(12)}"
        path = tmp_path / "azure.key"
        path.write_text(in_file + "\n")
        os.chmod(path, 0o600)
        resolve(f"file:{path}")
        assert redact.secrets(f"api {in_file}") == f"api {SECRET}"


def test_the_audit_key_files_key_is_remembered(tmp_path, monkeypatch):
    from ferryman.audit import load_key
    from ferryman.audit.keys import key_file

    monkeypatch.setenv("FERRYMAN_DATA_DIR", str(tmp_path / "data"))
    load_key(create=True)
    generated = key_file().read_text().strip()
    assert redact.secrets(f"key={generated}") == f"key={SECRET}"


def test_clean_bodies_still_come_back_as_the_same_object(value):
    clean = orjson.dumps({"id": "chatcmpl-1", "choices": [{"message": {"content": "Hello there"}}]})
    assert redact.secrets_bytes(clean) is clean
    text = "nothing to see here"
    assert redact.secrets(text) is text


def test_remembering_from_many_threads_keeps_every_value():
    made = [f"threaded-{i}-{_random.token_hex(6)}" for i in range(32)]
    threads = [threading.Thread(target=redact.remember, args=(v,)) for v in made]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(redact.secrets(v) == SECRET for v in made)
    redact.remember(made[0])  # again: nothing changes
    assert redact.secrets(made[0]) == SECRET
