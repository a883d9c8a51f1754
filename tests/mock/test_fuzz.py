"""Fuzzing the mock against OpenAI's spec: no 5xx, no crash, errors always in OpenAI's shape.

Two complementary runs against one real mock over loopback HTTP:

- Schemathesis reads the spec subset the mock serves (``ferryman.mock.spec.document()``, with the
  repairs listed in :func:`tests.mock.fuzz_support.fuzz_document`) and sends every operation valid
  and invalid requests: its examples, coverage (boundary values, missing and wrong-typed fields,
  methods the spec does not declare) and fuzzing phases. Checked on every reply: status < 500 and
  no connection failure; every error is ``{"error": {"message", "type", "param", "code"}}``; every
  2xx body (and every event of a 2xx stream) matches the spec's response schema (``format``
  excepted for replies to invalid requests the mock accepted: see lenient_schema_conformance).
- Plain Hypothesis posts arbitrary JSON values (any top-level type; the request schema's own field
  names with values of any type) and arbitrary bytes under assorted content types to every POST.

Bounded for CI: derandomized (the same cases every run), no example database, ``MAX_EXAMPLES``
generated cases per operation and phase (fewer for operations that create objects).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import response_schema_conformance

from ferryman import catalogue
from ferryman.mock import MockApp, MockSettings
from ferryman.mock.server import BackgroundServer
from tests.mock.fuzz_support import (
    AUTH,
    BodyChecker,
    concrete,
    error_problems,
    fuzz_document,
    json_objects_with_known_keys,
    json_values,
    post_paths,
    request_properties,
)

MAX_EXAMPLES = 25
# Each case of these creates objects (and background lifecycles) or carries a file: fewer of them.
CREATING = ["POST /files", "POST /batches", "POST /fine_tuning/jobs"]
# The request schema is so large that the coverage phase runs to thousands of cases (about 6,000
# negative and 2,000 positive for /responses, 1,100 and 370 for /chat/completions). /chat/completions
# keeps the positive ones; /responses has more fuzzing cases instead.
COVERAGE_POSITIVE_ONLY = ["POST /chat/completions"]
NO_COVERAGE = ["POST /responses"]

DOCUMENT = fuzz_document()
CONFIG = schemathesis.Config.from_dict(
    {
        "headers": AUTH,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
        "phases": {"stateful": {"enabled": False}},
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large", "large_base_example"],
        # (`include-name` is "METHOD /path"; `include-method` and `include-path` together match either.)
        "operations": [
            {"include-name": CREATING, "generation": {"max-examples": 8}},
            {"include-name": COVERAGE_POSITIVE_ONLY, "phases": {"coverage": {"generation": {"mode": "positive"}}}},
            {
                "include-name": NO_COVERAGE,
                "phases": {"coverage": {"enabled": False}},
                "generation": {"max-examples": 50},
            },
        ],
    }
)
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT, config=CONFIG)

_MODES = {
    "POST /chat/completions": ("chat",),
    "POST /responses": ("chat", "responses"),
    "POST /completions": ("completion",),
    "POST /embeddings": ("embedding",),
    "POST /moderations": ("moderation",),
}
# Models the mock knows, per operation: generated model names are random strings, which only ever
# reach the 404 model_not_found, so most valid cases get one of these instead (see steer_model).
MODELS = {
    operation: sorted(m for m, info in catalogue.models().items() if info.mode in modes and not m.startswith("ft:"))
    for operation, modes in _MODES.items()
}
BODIES = BodyChecker(DOCUMENT)

HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def mock_server() -> Iterator[BackgroundServer]:
    app = MockApp(MockSettings(rpm=10**9, tpm=10**12, max_file_bytes=1024 * 1024))
    with BackgroundServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


@pytest.fixture(scope="module")
def client(mock_server: BackgroundServer) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=mock_server.base_url, headers=AUTH, timeout=30) as c:
        yield c


def _content_type(response: schemathesis.Response) -> str:
    for name, values in response.headers.items():
        if name.lower() == "content-type" and values:
            return values[0]
    return ""


def openai_error_shape(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A Schemathesis check: a reply with status >= 400 is an OpenAI error object."""
    if response.status_code >= 400:
        problems = error_problems(response.status_code, _content_type(response), response.content)
        assert not problems, "; ".join(problems)
    return None


def lenient_schema_conformance(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A Schemathesis check for 2xx JSON replies to deliberately invalid requests the mock accepted.

    Such replies echo the request (a response's ``tools``, a file's ``purpose``), and the mock's
    request validation, like JSON Schema by default, does not assert ``format``: an accepted
    ``server_url: ""`` comes back and breaks ``format: uri``. So ``format`` is not asserted here;
    everything else in the response schema is.
    """
    if _content_type(response).startswith("application/json"):
        problems = BODIES.violations(case.method, case.path, response.status_code, response.content)
        assert not problems, "; ".join(problems)
    return None


def steer_model(case: schemathesis.Case) -> None:
    """In four of five valid cases of an inference operation, name a model the mock knows, chosen by a
    checksum of the body (so runs stay deterministic); the fifth keeps its generated model."""
    models = MODELS.get(f"{case.method} {case.path}")
    if not models or case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    body = case.body
    if not isinstance(body, dict) or not isinstance(body.get("model", ""), str):
        return
    pick = zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode())
    if pick % 5:
        body["model"] = models[pick % len(models)]


@SCHEMA.parametrize()
def test_spec_fuzz(case: schemathesis.Case, mock_server: BackgroundServer, session: requests.Session) -> None:
    steer_model(case)
    response = case.call(base_url=mock_server.base_url, session=session, headers=AUTH, timeout=30)
    checks: list[schemathesis.CheckFunction] = [not_a_server_error, openai_error_shape]
    if 200 <= response.status_code < 300:
        negative = case.meta is not None and case.meta.generation.mode is GenerationMode.NEGATIVE
        checks.append(lenient_schema_conformance if negative else response_schema_conformance)
    case.validate_response(response, checks=checks, headers=AUTH)


def check_reply(response: httpx2.Response, sent: object) -> None:
    where = f"{response.request.method} {response.request.url.path} with {sent!r:.300}"
    assert response.status_code < 500, f"{where} → {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        problems = error_problems(response.status_code, response.headers.get("content-type", ""), response.content)
        assert not problems, f"{where}: " + "; ".join(problems)


POSTS = post_paths()


@pytest.mark.parametrize("path", POSTS)
def test_post_any_json_value(path: str, client: httpx2.Client) -> None:
    @HYPOTHESIS
    @given(value=json_values() | json_objects_with_known_keys(request_properties(path)))
    def post(value: Any) -> None:
        body = json.dumps(value).encode()
        response = client.post(concrete(path), content=body, headers={"content-type": "application/json"})
        check_reply(response, value)

    post()


CONTENT_TYPES = [
    "application/json",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=fuzzboundary",
    "multipart/form-data",
    "application/octet-stream",
    None,
]


@pytest.mark.parametrize("path", POSTS)
def test_post_any_bytes(path: str, client: httpx2.Client) -> None:
    @HYPOTHESIS
    @given(
        raw=st.binary(max_size=300)
        | st.text(max_size=200).map(str.encode)
        | json_values().map(lambda v: json.dumps(v).encode()[:-1]),  # JSON cut short
        content_type=st.sampled_from(CONTENT_TYPES),
    )
    def post(raw: bytes, content_type: str | None) -> None:
        headers = {"content-type": content_type} if content_type else {}
        response = client.post(concrete(path), content=raw, headers=headers)
        check_reply(response, (content_type, raw))

    post()


# Requests the fuzzing above once answered with a 500 or a dropped connection, kept so that they are
# checked every run whatever the generators produce. JSON Schema counts 2.0 as an integer, and
# orjson reads integers past 64 bits as floats, so handlers meet floats where the spec says integer.
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
INSTRUCT = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
RESPONSE_LOGPROBS = {"model": "gpt-4o-mini", "input": "hi", "include": ["message.output_text.logprobs"]}
FOUND = [
    pytest.param("/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 2.0}, id="chat-top_logprobs-float"),
    pytest.param(
        "/chat/completions",
        {**CHAT, "logprobs": True, "top_logprobs": 2.0, "stream": True},
        id="chat-top_logprobs-float-stream",
    ),
    pytest.param("/chat/completions", {**CHAT, "n": 2.0}, id="chat-n-float"),
    pytest.param("/completions", {**INSTRUCT, "n": 2.0}, id="completions-n-float"),
    pytest.param("/completions", {**INSTRUCT, "best_of": 2.0}, id="completions-best_of-float"),
    pytest.param("/completions", {**INSTRUCT, "prompt": [2.0]}, id="completions-token-float"),
    pytest.param("/completions", {**INSTRUCT, "prompt": [[2.0]]}, id="completions-token-arrays-float"),
    pytest.param("/completions", {**INSTRUCT, "prompt": [1, 2**70]}, id="completions-token-past-64-bits"),
    pytest.param(
        "/responses",
        {**RESPONSE_LOGPROBS, "top_logprobs": 2.0},
        id="responses-top_logprobs-float",
    ),
]


@pytest.mark.parametrize(("path", "body"), FOUND)
def test_found_by_fuzzing(path: str, body: dict[str, Any], client: httpx2.Client) -> None:
    content = json.dumps(body).encode()
    with client.stream("POST", path, content=content, headers={"content-type": "application/json"}) as response:
        try:
            response.read()
        except httpx2.TransportError as error:
            broke = f"POST {path} with {body!r}: {response.status_code}, then the connection broke: {error!r}"
            pytest.fail(broke, pytrace=False)
    check_reply(response, body)
