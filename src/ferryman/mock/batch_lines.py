"""The lines of a batch input file: checking them, and running each through the mock's own handlers.

Checking happens while a batch is ``validating``; any problem fails the whole batch with
``errors.data`` entries ``{code, message, param, line}`` (lines are 1-based). The codes:

=================================  ================================================================
``invalid_json_line``              the line is not valid JSON (or not UTF-8), or not a JSON object
``missing_required_parameter``     ``custom_id``, ``method``, ``url`` or ``body`` is missing
``invalid_request``                one of them has the wrong type (``param`` names it)
``duplicate_custom_id``            the ``custom_id`` was already used on an earlier line
``invalid_method``                 ``method`` is not ``POST``
``invalid_url``                    ``url`` is not the batch's ``endpoint``
``batch_request_limit_exceeded``   more than :data:`MAX_REQUESTS` requests (``line`` is the first extra)
``embedding_input_limit_exceeded`` an ``/v1/embeddings`` batch with more than :data:`MAX_EMBEDDING_INPUTS`
                                   inputs in total (``line`` is where the total passed it)
``empty_file``                     the file holds no requests
``file_not_found``                 the input file was deleted before the batch started
=================================  ================================================================

Running a line calls the endpoint's handler in-process, after the same checks the front door
makes (route, request schema, model, quota), with no rate limits, faults or request log; a line
served is accounted (quota, usage ledger) at the batch price by ``MockApp.account``. A
line that fails there (unknown model, ``stream: true``, a bad body) is not a batch error: it
goes to the error file with its status code and OpenAI-format error body.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from ferryman import errors
from ferryman.errors import OpenAIError, invalid_request
from ferryman.mock import spec
from ferryman.mock.call import Call

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

log = logging.getLogger("ferryman.mock")

MAX_REQUESTS = 50_000  # requests per batch file
MAX_EMBEDDING_INPUTS = 50_000  # embedding inputs across a whole /v1/embeddings batch
MAX_REPORTED_ERRORS = 100  # a failed batch lists at most this many line errors


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line in the input file
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class LineResult:
    custom_id: str
    status_code: int
    request_id: str
    body: Any
    usage: dict[str, Any] | None = None
    model: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def output_line(self) -> bytes:
        """The line in the output or error file (OpenAI's ``BatchRequestOutput``)."""
        return orjson.dumps(
            {
                "id": "batch_req_" + secrets.token_hex(16),
                "custom_id": self.custom_id,
                "response": {"status_code": self.status_code, "request_id": self.request_id, "body": self.body},
                "error": None,
            }
        )


def line_error(code: str, message: str, line: int | None, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


# -- checking -------------------------------------------------------------------------------------------


def _check_line(number: int, raw: bytes, endpoint: str, seen: dict[str, int]) -> Line | dict[str, Any]:
    try:
        request = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return line_error("invalid_json_line", "This line is not parseable as valid JSON.", number)
    if not isinstance(request, dict):
        return line_error("invalid_json_line", "This line is not a JSON object.", number)
    for name, kind, label in (
        ("custom_id", str, "a string"),
        ("method", str, "a string"),
        ("url", str, "a string"),
        ("body", dict, "a JSON object"),
    ):
        if name not in request:
            return line_error("missing_required_parameter", f"Missing required parameter: '{name}'.", number, name)
        if not isinstance(request[name], kind):
            return line_error("invalid_request", f"Invalid '{name}': expected {label}.", number, name)
    custom_id: str = request["custom_id"]
    if custom_id in seen:
        return line_error(
            "duplicate_custom_id",
            f"The custom_id '{custom_id}' is already used on line {seen[custom_id]}; "
            "each request in a batch needs a unique custom_id.",
            number,
            "custom_id",
        )
    if request["method"] != "POST":
        return line_error(
            "invalid_method", f"Invalid method '{request['method']}': only POST is supported.", number, "method"
        )
    if request["url"] != endpoint:
        return line_error(
            "invalid_url",
            f"The URL provided for this request ('{request['url']}') does not match the batch endpoint ('{endpoint}').",
            number,
            "url",
        )
    seen[custom_id] = number
    return Line(number, custom_id, request["body"])


def embedding_inputs(body: dict[str, Any]) -> int:
    """How many embedding inputs a request holds (a token array counts as one)."""
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def check(data: bytes, endpoint: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The requests in a batch input file, or the errors that fail the batch."""
    numbered = [(n, raw.strip()) for n, raw in enumerate(data.split(b"\n"), start=1) if raw.strip()]
    if len(numbered) > MAX_REQUESTS:
        return [], [
            line_error(
                "batch_request_limit_exceeded",
                f"The batch input file has {len(numbered)} requests, more than the limit of {MAX_REQUESTS} per batch.",
                numbered[MAX_REQUESTS][0],
            )
        ]
    found: list[Line] = []
    problems: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    inputs = 0
    for number, raw in numbered:
        if len(problems) >= MAX_REPORTED_ERRORS:
            break
        result = _check_line(number, raw, endpoint, seen)
        if isinstance(result, dict):
            problems.append(result)
            continue
        found.append(result)
        if endpoint == "/v1/embeddings":
            inputs += embedding_inputs(result.body)
            if inputs > MAX_EMBEDDING_INPUTS:
                return [], [
                    line_error(
                        "embedding_input_limit_exceeded",
                        f"The batch has more than {MAX_EMBEDDING_INPUTS} embedding inputs in total, the limit for "
                        "/v1/embeddings batches.",
                        number,
                        "body.input",
                    )
                ]
    if not problems and not found:
        problems.append(line_error("empty_file", "The batch input file contains no requests.", None))
    return ([], problems) if problems else (found, [])


def first_model(data: bytes) -> str | None:
    """The model named by the first line that names one (for ``Batch.model``), cheaply."""
    for raw in data.split(b"\n", 20)[:20]:
        try:
            request = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        body = request.get("body") if isinstance(request, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            return model
    return None


# -- running --------------------------------------------------------------------------------------------


def _request(path: str, params: dict[str, str], raw: bytes) -> Request:
    """A minimal Starlette request for ``POST path``, as a handler would see it."""
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())],
        "path_params": params,
        "client": None,
        "server": None,
    }
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    return Request(scope, receive)


async def run(app: MockApp, key: str, url: str, line: Line) -> LineResult:
    """Run one request through the mock's own handler for ``url``."""
    request_id = "req_" + secrets.token_hex(16)
    body = line.body
    model = body.get("model") if isinstance(body.get("model"), str) else None
    call: Call | None = None
    try:
        if body.get("stream") is True:
            raise invalid_request("Streaming is not supported in the Batch API.", "stream", "unsupported_value")
        endpoint, params = app.match("POST", url)
        if endpoint.body != "json":
            raise invalid_request(f"{url} cannot be used in a batch.", None, "unsupported_endpoint")
        body = spec.normalise_numbers(body)
        endpoint.check_body(body)
        if endpoint.inference and model is not None:
            app.check_model(model)
        if endpoint.inference and key:
            app.quota.check(key)
        call = Call(
            request=_request(url, params, orjson.dumps(body)),
            app=app,
            request_id=request_id,
            key=key,
            body=body,
            model=model,
            internal=True,
        )
        response = await endpoint.handler(call)
    except OpenAIError as error:
        return LineResult(line.custom_id, error.status, request_id, error.body(), None, model)
    except Exception:  # a bug in a handler: the line fails like a 500 from OpenAI, the batch goes on
        log.exception("batch line %s failed in the mock", line.custom_id)
        failure = errors.server_error()
        return LineResult(line.custom_id, failure.status, request_id, failure.body(), None, model)
    if not isinstance(response, Response) or not isinstance(response.body, bytes):
        failure = errors.server_error("The handler returned a stream, which a batch cannot hold.")
        return LineResult(line.custom_id, failure.status, request_id, failure.body(), None, model)
    status = response.status_code
    usage = call.usage if call is not None and status < 400 else None
    if call is not None and status < 400:
        app.account(call, app.clock(), batch=True)
    return LineResult(line.custom_id, status, request_id, orjson.loads(response.body), usage, model)
