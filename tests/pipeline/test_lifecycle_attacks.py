"""Attacks on the lifecycle stage through ``ferryman.OpenAI`` (and raw HTTP on its transport, where
the SDK would tidy the request) against the mock, and on the upstream listing it trusts.

Every spelling of a model is either the one the stage checked or one the upstream does not serve;
a body naming its model twice goes upstream as the stage read it; nothing the stage puts in a
header can break out of it; an upstream's own Deprecation/Sunset/Link headers are not doubled; an
alias named after a retired model is the operator's and is left alone; and a broken or hostile
``GET /v1/models`` listing stays bounded and cannot retire everything with a placeholder date.

Each test sets its dates: the pipeline's ``lifecycle.today`` and, where the mock must see a model
as retired, the mock's own ``today`` (reset after every test)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

import httpx2
import openai
import orjson
import pytest

from ferryman import catalogue, lifecycle_store
from ferryman.catalogue import Lifecycle
from ferryman.config import Settings
from ferryman.pipeline import build
from ferryman.store import open_store
from ferryman.transport import FerrymanTransport

MESSAGES = [{"role": "user", "content": "hi"}]
BEFORE, AFTER = "2026-12-01", "2027-02-01"  # gpt-4o-mini and gpt-4o shut down on 2027-01-14
MINI_SUNSET = "Thu, 14 Jan 2027 00:00:00 GMT"
REFUSE = {"today": AFTER, "on_retired": "refuse"}
SUCCESSOR = {"today": AFTER, "on_retired": "successor"}
BASE = "http://ferryman.test/v1"
CHAT_TAIL = b',"messages":[{"role":"user","content":"hi"}]}'
COMPLETION = {
    "id": "chatcmpl-lifecycle",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9},
}


def sent(mock: Any, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
    return [r["body"] for r in mock.requests() if r["path"] == path]


def dated(settings: Settings, dates: dict[str, str | None]) -> None:
    """The upstream ``mock`` reported these shutdown dates (as ``ferryman models --refresh`` keeps them)."""
    store = open_store(settings)
    try:
        with store.engine.begin() as conn:
            lifecycle_store.save(conn, lifecycle_store.Fetched("mock", dates))
    finally:
        store.close()


@pytest.fixture
def raw_http(ferryman_pipeline: Callable[..., Any]) -> Any:
    """``raw_http(**settings)`` → an httpx2 client on a pipeline's transport (bytes sent as given)."""
    made: list[httpx2.Client] = []

    def make(**overrides: Any) -> httpx2.Client:
        client = httpx2.Client(transport=FerrymanTransport(ferryman_pipeline(**overrides)), base_url=BASE)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


# -- 3. spellings -----------------------------------------------------------------------------------

# OpenAI's model ids are exact and case-sensitive ("The model `GPT-4o` does not exist"), and so are
# the mock's and the catalogue's: each of these is another model, which no upstream serves.
SPELLINGS = [
    "GPT-4O-MINI", "Gpt-4o-mini", " gpt-4o-mini", "gpt-4o-mini ", "gpt-4o-mini\n", "gpt-4o-mini\u200b",
    "gpt\u20114o-mini", "g\u0440t-4o-mini", "gpt-4o-mini-2024-07-19",
]  # fmt: skip


def test_other_spellings_of_a_retired_model_are_models_no_upstream_serves(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle=REFUSE)
    for spelling in SPELLINGS:
        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model=spelling, messages=MESSAGES)
        assert "does not exist" in missing.value.message, spelling  # the upstream's answer, not a retirement
        assert "sunset" not in missing.value.response.headers
    assert [body["model"] for body in sent(ferryman_mock)] == SPELLINGS


def test_a_snapshot_goes_to_the_successor_and_a_fine_tune_is_refused(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle=SUCCESSOR)
    reply = client.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=MESSAGES)
    assert reply.model.startswith("gpt-6-luna")
    with pytest.raises(openai.NotFoundError) as tuned:
        client.chat.completions.create(model="ft:gpt-4o-mini-2024-07-18:acme:support:abc123", messages=MESSAGES)
    assert tuned.value.code == "model_not_found" and "a fine-tuned model is not sent" in tuned.value.message
    assert [body["model"] for body in sent(ferryman_mock)] == ["gpt-6-luna"]


def test_the_responses_api_goes_to_the_successor_plain_and_streamed(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle=SUCCESSOR)
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="hi", temperature=0.4)
    assert raw.parse().model.startswith("gpt-6-luna") and raw.headers["sunset"] == MINI_SUNSET
    events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
    assert events and events[-1].type == "response.completed"
    bodies = sent(ferryman_mock, "/v1/responses")
    assert [body["model"] for body in bodies] == ["gpt-6-luna", "gpt-6-luna"]
    assert "temperature" not in bodies[0]  # gpt-6-luna reasons: only the default temperature


def test_embeddings_and_legacy_completions_are_refused_by_the_upstreams_date(
    ferryman_settings, ferryman_client, ferryman_mock
):
    dated(ferryman_settings(), {"text-embedding-3-small": "2027-01-20", "gpt-3.5-turbo-instruct": "2027-01-20"})
    client = ferryman_client(lifecycle=REFUSE)
    with pytest.raises(openai.NotFoundError) as embedding:
        client.embeddings.create(model="text-embedding-3-small", input="hi")
    with pytest.raises(openai.NotFoundError) as completion:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
    for refused in (embedding, completion):
        assert refused.value.code == "model_not_found" and "2027-01-20" in refused.value.message
        assert refused.value.response.headers["sunset"] == "Wed, 20 Jan 2027 00:00:00 GMT"
    assert ferryman_mock.requests() == []


@pytest.mark.parametrize("model", [123, None, ["gpt-4o-mini"], {"id": "gpt-4o-mini"}, True])
def test_a_model_that_is_not_a_string_goes_by_untouched(raw_http, ferryman_mock, model):
    """Not a model the stage knows: the upstream answers it (OpenAI's 400), with nothing added."""
    ferryman_mock.set_today(AFTER)
    http = raw_http(lifecycle={**SUCCESSOR, "translate_params": True})
    reply = http.post("/chat/completions", json={"model": model, "messages": MESSAGES, "max_tokens": 5})
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    assert "deprecation" not in reply.headers
    [body] = sent(ferryman_mock)
    assert body["model"] == model and body["max_tokens"] == 5


def test_an_enormous_fine_tune_name_is_refused_without_being_echoed_whole(ferryman_client, ferryman_mock):
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle=REFUSE)
    huge = "ft:gpt-4o-mini-2024-07-18:acme:" + "x" * 1_000_000 + ":id"
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model=huge, messages=MESSAGES)
    assert refused.value.code == "model_not_found" and "2027-01-14" in refused.value.message
    assert len(refused.value.response.content) < 2000
    assert ferryman_mock.requests() == []


def test_a_duplicate_model_member_is_sent_as_the_stage_read_it(raw_http, ferryman_mock):
    """orjson keeps the last member; whatever the upstream's parser keeps, a rerouted body has one
    ``model``, the successor (the stage rewrites the whole body)."""
    ferryman_mock.set_today(AFTER)
    refusing = raw_http(lifecycle=REFUSE)
    body = b'{"model":"gpt-6-luna","model":"gpt-4o-mini"' + CHAT_TAIL
    reply = refusing.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 404 and reply.json()["error"]["code"] == "model_not_found"
    assert sent(ferryman_mock) == []
    routing = raw_http(lifecycle=SUCCESSOR)
    reply = routing.post("/chat/completions", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 200 and reply.json()["model"].startswith("gpt-6-luna")
    [forwarded] = [r for r in ferryman_mock.requests() if r["path"] == "/v1/chat/completions"]
    assert forwarded["body"]["model"] == "gpt-6-luna"


# -- 4. headers --------------------------------------------------------------------------------------


def test_nothing_in_a_successors_name_can_break_out_of_the_link_header(ferryman_client, monkeypatch):
    """Successors come from the shipped tables; were one to hold CR LF (or ``>``), it is still one
    URL inside one header."""
    real = catalogue.lifecycle
    evil = "luna>\r\nset-cookie: a=b"

    def lifecycle(model: str, upstream: Any = None) -> Lifecycle | None:
        life = real(model, upstream)
        return Lifecycle(life.model, life.shutdown_date, evil, life.source) if life and model == "gpt-4o" else life

    monkeypatch.setattr(catalogue, "lifecycle", lifecycle)
    client = ferryman_client(lifecycle={"today": BEFORE})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert "set-cookie" not in raw.headers
    assert all("\r" not in value and "\n" not in value for value in raw.headers.values())
    assert '/models/luna%3E%0D%0Aset-cookie%3A%20a%3Db>; rel="successor-version"' in raw.headers["link"]


def test_an_upstreams_own_deprecation_headers_are_not_doubled(ferryman_settings):
    """An upstream (another Ferryman, or OpenAI one day) sends its own Deprecation, Sunset and Link:
    the caller gets one Deprecation and one Sunset (the dates this stage acts on) and each link
    once, the upstream's first."""
    ours = '<https://developers.openai.com/api/docs/deprecations>; rel="deprecation"; type="text/html"'
    theirs = {
        "deprecation": "@1",
        "sunset": "Thu, 01 Jan 1970 00:00:00 GMT",
        "link": f'<https://x.test/p2>; rel="next", {ours}',
    }

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=COMPLETION, headers=theirs)

    settings = ferryman_settings(lifecycle={"today": BEFORE})
    store = open_store(settings)
    pipeline = build(settings, store=store, transport=httpx2.MockTransport(handler))
    http = httpx2.Client(transport=FerrymanTransport(pipeline), base_url=BASE)
    try:
        reply = http.post("/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    finally:
        http.close()
        store.close()
    assert reply.status_code == 200
    assert reply.headers.get_list("deprecation") == ["@1799884800"]
    assert reply.headers.get_list("sunset") == [MINI_SUNSET]
    [link] = reply.headers.get_list("link")
    assert link.startswith('<https://x.test/p2>; rel="next", ') and link.count('rel="deprecation"') == 1
    assert link.count('rel="successor-version"') == 1


# -- an alias named after a retired model -----------------------------------------------------------


def test_an_alias_named_after_a_retired_model_is_the_operators(ferryman_client, ferryman_mock):
    """``gpt-4o-mini = ["gpt-6-luna"]`` is how an operator moves callers off a retired model: the
    stage must not refuse the alias nor mark it deprecated; the route sends it to gpt-6-luna."""
    ferryman_mock.set_today(AFTER)
    client = ferryman_client(lifecycle=REFUSE, routing={"aliases": {"gpt-4o-mini": ["gpt-6-luna"]}})
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.parse().model.startswith("gpt-6-luna") and "sunset" not in raw.headers
    assert [body["model"] for body in sent(ferryman_mock)] == ["gpt-6-luna"]


# -- 6. the upstream's listing --------------------------------------------------------------------


def test_a_listing_keeps_plain_model_ids_and_plausible_dates_only():
    secret_shaped = "s" + "k-" + "proj" + "Z" * 30
    data: list[Any] = [
        {"id": "gpt-x", "shutdown_date": "2027-03-01"},
        {"id": "gpt-epoch", "shutdown_date": "1970-01-01"},
        {"id": "gpt-year-one", "shutdown_date": "0001-01-01"},
        {"id": 42, "shutdown_date": "2027-01-01"},
        {"id": ["gpt-x"], "shutdown_date": "2027-01-01"},
        {"id": "gpt-4o\r\nX-Injected: 1", "shutdown_date": "2027-01-01"},
        {"id": "gpt 4o", "shutdown_date": "2027-01-01"},
        {"id": "gpt-\u00e9", "shutdown_date": "2027-01-01"},
        {"id": "g" * 257, "shutdown_date": "2027-01-01"},
        {"id": secret_shaped, "shutdown_date": "2027-01-01"},
        {"id": "meta-llama/Llama-3-8B:instruct@v1", "shutdown_date": "2027-04-01"},
    ]
    assert lifecycle_store.from_listing({"data": data}) == {
        "gpt-x": "2027-03-01",
        "gpt-epoch": None,
        "gpt-year-one": None,
        "meta-llama/Llama-3-8B:instruct@v1": "2027-04-01",
    }
    many = {"data": [{"id": f"m-{n}", "shutdown_date": "2027-01-01"} for n in range(lifecycle_store.MAX_MODELS + 5)]}
    assert len(lifecycle_store.from_listing(many)) == lifecycle_store.MAX_MODELS


def _refresh_from(settings: Settings, handler: Callable[[httpx2.Request], httpx2.Response]) -> Any:
    store = open_store(settings)
    try:
        [fetched] = asyncio.run(lifecycle_store.refresh(settings, store, httpx2.MockTransport(handler)))
        return fetched, asyncio.run(lifecycle_store.load(store))
    finally:
        store.close()


def test_a_listing_too_large_or_broken_is_that_upstreams_error_and_keeps_what_was_known(ferryman_settings):
    settings = ferryman_settings()
    dated(settings, {"gpt-6-luna": "2027-06-30"})
    chunk = b" " * (1024 * 1024)

    async def endless() -> Any:  # 17 MiB of whitespace before any JSON: never read to its end
        for _ in range(17):
            yield chunk
        yield b'{"data": []}'

    fetched, known = _refresh_from(settings, lambda request: httpx2.Response(200, content=endless()))
    assert fetched.error and "larger than 16 MiB" in fetched.error
    assert known["gpt-6-luna"].shutdown_date == dt.date(2027, 6, 30)
    upstream_key = "s" + "k-" + "upstreamsecret" * 3
    broken = {"error": f"Incorrect API key provided: {upstream_key}"}  # a string, where OpenAI puts an object
    fetched, known = _refresh_from(settings, lambda request: httpx2.Response(401, json=broken))
    assert fetched.error == "HTTP 401: no message" and "gpt-6-luna" in known
    echoed = {"error": {"message": f"Incorrect API key provided: {upstream_key}"}}
    fetched, _ = _refresh_from(settings, lambda request: httpx2.Response(401, json=echoed))
    assert fetched.error.startswith("HTTP 401: Incorrect API key") and upstream_key not in fetched.error


def test_a_placeholder_date_for_every_model_retires_none_of_them(ferryman_settings, ferryman_client, ferryman_mock):
    """A compatible server that sends ``1970-01-01`` (epoch 0) for every model: with ``refuse``,
    calls still go on."""
    settings = ferryman_settings()
    models = [{"id": m, "object": "model", "shutdown_date": "1970-01-01"} for m in ("gpt-6-luna", "gpt-4o-mini")]
    listing = {"object": "list", "data": models}
    fetched, known = _refresh_from(settings, lambda request: httpx2.Response(200, content=orjson.dumps(listing)))
    assert fetched.error is None and fetched.dates == {"gpt-6-luna": None, "gpt-4o-mini": None} and known == {}
    client = ferryman_client(lifecycle={"today": BEFORE, "on_retired": "refuse"})
    assert client.chat.completions.create(model="gpt-6-luna", messages=MESSAGES).choices
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["sunset"] == MINI_SUNSET  # the shipped date still holds
    assert len(sent(ferryman_mock)) == 2
