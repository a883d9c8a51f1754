"""The transports: the official SDK through Ferryman's pipeline, sync and async."""

from __future__ import annotations

import os

import openai
import pytest

from ferryman.transport import api_path

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("https://api.openai.com/v1/chat/completions", "/chat/completions"),
        ("http://127.0.0.1:8000/v1/files/file-1/content", "/files/file-1/content"),
        ("https://x.example/openai/v1/responses", "/responses"),
        ("https://x.example/v1", ""),
    ],
)
def test_api_path(url, path):
    import httpx2

    assert api_path(httpx2.URL(url)) == path


def test_sync_plain_and_stream(ferryman_client, ferryman_mock, upstream_key):
    client = ferryman_client()
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-ferryman-attempts"] == "1"
    assert float(raw.headers["x-ferryman-overhead-ms"]) >= 0
    text = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        if c.choices
    )
    assert text
    # The upstream saw the deployment's key, not the caller's placeholder (the mock logs key ids).
    from ferryman.mock.app import key_id

    assert {e["key_id"] for e in ferryman_mock.requests()} == {key_id(upstream_key)}


def test_ferryman_headers_are_stripped_before_the_upstream(ferryman_client, ferryman_mock):
    client = ferryman_client()
    client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"ferryman-tags": "team=a", "ferryman-cache": "no-store"}
    )
    logged = ferryman_mock.requests()[-1]["headers"]
    assert not any(name.startswith("ferryman-") for name in logged)


def test_errors_pass_through_in_openai_shape(ferryman_client):
    client = ferryman_client(retry={"max_attempts": 1})
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_async_plain_and_stream(ferryman_async_client):
    client = ferryman_async_client()
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert reply.choices[0].message.content
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    await client.close()


def test_files_and_multipart_pass_through(ferryman_client):
    client = ferryman_client()
    uploaded = client.files.create(file=("data.jsonl", b'{"a": 1}\n'), purpose="batch")
    assert client.files.content(uploaded.id).read() == b'{"a": 1}\n'


def test_a_client_never_closed_leaves_no_open_session(tmp_path):
    """`ferryman.OpenAI()` in someone's pytest run, never closed: no "Unclosed client session"
    at exit, whether the client was dropped during the run or lived to the end."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            import ferryman

            KEPT = []

            def _call(ferryman_mock):
                client = ferryman.OpenAI(base_url=ferryman_mock.base_url, api_key="unused")
                reply = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
                )
                assert reply.choices
                return client

            def test_dropped(ferryman_mock):
                _call(ferryman_mock)

            def test_kept(ferryman_mock):
                KEPT.append(_call(ferryman_mock))
            """
        )
    )
    env = {**os.environ, "FERRYMAN_DATA_DIR": str(tmp_path / "data"), "PYTHONDEVMODE": "1"}
    env.pop("FERRYMAN_CONFIG", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "2 passed" in output
    assert "Unclosed" not in output, output


@pytest.mark.parametrize("collector_on", [True, False])
def test_building_a_client_leaves_the_garbage_collector_as_it_found_it(ferryman_client, collector_on):
    """The collector is paused while a client is built (the imports' full collections cost a cold
    start a tenth of a second), then left as the application had it."""
    import gc

    was = gc.isenabled()
    try:
        gc.enable() if collector_on else gc.disable()
        ferryman_client()
        assert gc.isenabled() is collector_on
    finally:
        gc.enable() if was else gc.disable()
