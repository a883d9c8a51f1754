"""The mock's ASGI app: one front door that every ``/v1`` request passes through.

In order: request id, route, API key (an admin key for the organisation endpoints), body (size
cap, JSON), validation against OpenAI's spec, model check (unknown, or past its shutdown date on
the mock's ``today``), injected faults, quota, rate limits, the resource's handler; then the
headers OpenAI sends on every reply and an entry in the request log. Resource modules only
declare ``ENDPOINTS`` and write handlers. What a served call used is counted in one place,
:meth:`MockApp.account`: the key's quota and the usage ledger the organisation Usage and Costs
endpoints answer from.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import re
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import compile_path
from starlette.types import Receive, Scope, Send

from ferryman import errors, pricing
from ferryman.catalogue import UpstreamDate, lifecycle, lookup
from ferryman.errors import OpenAIError
from ferryman.mock import control, spec
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.conformance import ConformanceRecorder
from ferryman.mock.faults import Fault, parse_fault, parse_rule
from ferryman.mock.fixtures import Fixtures
from ferryman.mock.limits import QuotaLedger, RateLimiter
from ferryman.mock.prompt_cache import PromptCache
from ferryman.mock.resources import ALL_MODULES, fine_tuning
from ferryman.mock.settings import MockSettings
from ferryman.mock.sse import ConnectionCut, EventStream
from ferryman.mock.state import ObjectStore, RequestLog, Tasks
from ferryman.mock.usage import KIND_OF_PATH, UsageLedger, reported_tier, split_cost
from ferryman.pricing import TokenCounts
from ferryman.tokens import count_request_prompt_tokens, max_output_tokens

log = logging.getLogger("ferryman.mock")

FAULT_HEADER = "x-ferryman-fault"
NO_FAULT = Fault()
# OpenAI's admin keys start so; only they may read the organisation endpoints (Endpoint.admin).
ADMIN_KEY_PREFIX = "sk-admin-"
_LOGGED_HEADERS = ("content-type", "user-agent", "x-stainless-retry-count", FAULT_HEADER, "idempotency-key")


class MockApp:
    """An OpenAI API emulator as an ASGI application."""

    # Sees every JSON body and stream event sent (conformance.py). None in normal use; a test
    # suite may set it on the class to check every app it starts, or on one instance.
    observer: ConformanceRecorder | None = None

    def __init__(self, settings: MockSettings | None = None) -> None:
        self.settings = settings or MockSettings()
        self._initial = replace(self.settings, faults=list(self.settings.faults))
        self.store = ObjectStore(self.settings.state_dir)
        self.requests = RequestLog(self.settings.request_log_size)
        self.limiter = RateLimiter(self.settings.rpm, self.settings.tpm)
        self.quota = QuotaLedger(self.settings.quota_usd)
        self.usage = UsageLedger()
        # The wall clock of the request log and the usage ledger; a test may set its own.
        self.clock: Callable[[], float] = time.time
        self.fixtures = Fixtures.from_path(self.settings.fixtures_path)
        self.tasks = Tasks()
        self.prompt_cache = PromptCache()
        self.rng = random.Random()
        self._static: dict[tuple[str, str], Endpoint] = {}
        self._dynamic: list[tuple[str, re.Pattern[str], Endpoint]] = []
        self._started = False
        for module in ALL_MODULES:
            for endpoint in module.ENDPOINTS:
                self._register(endpoint)

    # -- routing ---------------------------------------------------------------------------

    def _register(self, endpoint: Endpoint) -> None:
        if "{" not in endpoint.path:
            self._static[(endpoint.method, endpoint.path)] = endpoint
            return
        regex, _, _ = compile_path(endpoint.path)
        self._dynamic.append((endpoint.method, regex, endpoint))

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        path = path.rstrip("/") or "/"
        found = self._static.get((method, path))
        if found is not None:
            return found, {}
        for m, regex, endpoint in self._dynamic:
            if m == method:
                hit = regex.match(path)
                if hit:
                    return endpoint, hit.groupdict()
        raise errors.invalid_url(method, path)

    def reset(self) -> None:
        """Back to the settings the app started with; forget all objects and requests."""
        self.settings = replace(self._initial, faults=[parse_rule(r.spec) for r in self._initial.faults])
        self.limiter.set_limits(self.settings.rpm, self.settings.tpm)
        self.quota = QuotaLedger(self.settings.quota_usd)
        self.usage.clear()
        self.fixtures = Fixtures.from_path(self.settings.fixtures_path)
        self.prompt_cache = PromptCache()
        self.tasks.cancel_nowait()
        self.store.clear()
        self.requests.clear()

    # -- lifecycle -------------------------------------------------------------------------

    async def startup(self) -> None:
        if self._started:
            return
        self._started = True
        for module in ALL_MODULES:
            hook = getattr(module, "on_startup", None)
            if hook is not None:
                await hook(self)

    async def shutdown(self) -> None:
        await self.tasks.cancel_all()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- the front door ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if not self._started:
            await self.startup()
        started = time.perf_counter()
        request = Request(scope, receive)
        path: str = scope["path"]
        if path.startswith("/_ferryman/"):
            await control.handle(self, request, scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(16)
        entry: dict[str, Any] = {
            "id": request_id,
            "time": self.clock(),
            "method": scope["method"],
            "path": path,
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": {h: request.headers[h] for h in _LOGGED_HEADERS if h in request.headers},
        }
        call: Call | None = None
        route = path
        limit_headers: dict[str, str] | None = None
        key = ""
        try:
            endpoint, params = self.match(scope["method"], path)
            scope["path_params"] = params
            route = endpoint.path
            # From here on a key is known only by its hash: nothing below can leak it.
            token = self.authenticate(request)
            admin = token.startswith(ADMIN_KEY_PREFIX)
            key = key_id(token)
            del token
            entry["key_id"] = key
            if endpoint.admin and not admin:
                raise errors.admin_key_required()
            fault = self.fault_for(request)
            body = await self.read_body(request, endpoint)
            model = body.get("model") if isinstance(body, dict) else None
            entry["body"] = body if endpoint.body == "json" else None
            entry["model"] = model if isinstance(model, str) else None
            endpoint.check_body(body)
            if endpoint.inference and isinstance(model, str):
                self.check_model(model)
            if self.settings.faults:
                fault = fault.merged(self.rule_fault(path, entry["model"]))
            if fault is not NO_FAULT and not fault.is_empty:
                entry["fault"] = fault.__dict__
                await self.apply_pre_faults(fault)
            elif self.settings.latency_ms:
                await asyncio.sleep(self.settings.latency_ms / 1000)
            call = Call(request, self, request_id, key, body, fault, entry["model"])
            if endpoint.inference:
                self.quota.check(key)
                call.prompt_tokens, output_cap = estimate_tokens(path, body)
                limit_headers = self.limiter.acquire(key, call.prompt_tokens + output_cap, call.model)
            response = await endpoint.handler(call)
        except OpenAIError as error:
            response = json_response(error.body(), error.status, error.headers)
            if "x-ratelimit-limit-requests" in error.headers:  # a 429 from the limiter carries its own
                limit_headers = {}
        except ConnectionCut:
            entry["status"] = "reset"
            self.requests.add(entry)
            await reset_connection(scope, send)
            return
        except Exception:  # a bug in the mock: answer like OpenAI does, keep serving
            log.exception("mock handler failed for %s %s", scope["method"], path)
            failure = errors.server_error()
            response = json_response(failure.body(), failure.status)
        if limit_headers is None and key:
            limit_headers = self.limiter.peek(key)
        extra = {
            "x-request-id": request_id,
            "openai-version": "2020-10-01",
            "openai-organization": "user-ferryman-mock",
            "openai-processing-ms": str(max(0, round((time.perf_counter() - started) * 1000))),
            **(limit_headers or {}),
        }
        if isinstance(response, EventStream):
            response.headers.update(extra)
        else:  # appending raw headers is several times cheaper than MutableHeaders.update
            response.raw_headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        entry["status"] = response.status_code
        entry["stream"] = isinstance(response, EventStream)
        if call is not None and not isinstance(response, EventStream):
            self.settle(call, entry)
        self.requests.add(entry)
        if self.observer is not None:
            self._observe(response, scope["method"], route)
        if isinstance(response, EventStream):
            await self._send_stream(response, call, entry, scope, receive, send)
        else:
            await response(scope, receive, send)

    def _observe(self, response: Response | EventStream, method: str, route: str) -> None:
        observer = self.observer
        if observer is None:
            return
        try:
            if isinstance(response, EventStream):
                response.observer = lambda event: observer.event(route, event)
            elif response.media_type == "application/json":
                observer.reply(method, route, response.status_code, bytes(response.body))
        except Exception:  # an observer's failure must never change what the client gets
            log.exception("conformance observer failed")

    async def _send_stream(
        self,
        response: EventStream,
        call: Call | None,
        entry: dict[str, Any],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        done = response.on_complete

        def complete() -> None:
            if done is not None:
                done()
            if call is not None:
                self.settle(call, entry)

        response.on_complete = complete
        try:
            await response(scope, receive, send)
        except ConnectionCut:
            entry["status"] = "cut"
            await reset_connection(scope, send)

    # -- the steps -------------------------------------------------------------------------

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise errors.missing_key()
        allowed = self.settings.keys
        if allowed is not None:
            given = token.encode()
            # Compare against every key, in constant time, so timing tells nothing.
            ok = False
            for candidate in allowed:
                ok |= hmac.compare_digest(given, candidate.encode())
            if not ok:
                raise errors.invalid_key(errors.mask_key(token))
        return token

    async def read_body(self, request: Request, endpoint: Endpoint) -> Any:
        if endpoint.body == "none":
            return None
        limit = self.settings.max_body_bytes
        if endpoint.body == "multipart":
            limit = self.settings.max_file_bytes + 1024 * 1024
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise body_too_large(int(declared), limit)
        if endpoint.body == "multipart":
            return None  # the handler parses the form (streamed to disk by Starlette)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(size, limit)
            chunks.append(chunk)
        try:
            return spec.normalise_numbers(orjson.loads(b"".join(chunks)))
        except orjson.JSONDecodeError:
            raise errors.unparsable_json() from None

    def check_model(self, model: str) -> None:
        """An unknown model is a 404, and so is one past its shutdown date on the mock's ``today``
        (a fine-tuned model retires with its base), in OpenAI's words for each."""
        known = lookup(model) is not None if not model.startswith("ft:") else fine_tuning.serves(self, model)
        if not known:
            raise errors.model_not_found(model)
        life = lifecycle(model, self.announced())
        if life is not None and life.retired(self.settings.current_date()):
            raise errors.model_retired(model)

    def announced(self) -> dict[str, UpstreamDate]:
        """The shutdown dates announced at run time, as the catalogue takes an upstream's."""
        today = self.settings.current_date()
        return {model: UpstreamDate(date, today) for model, date in self.settings.shutdown_dates.items()}

    def fault_for(self, request: Request) -> Fault:
        header = request.headers.get(FAULT_HEADER)
        return parse_fault(header) if header else NO_FAULT

    def rule_fault(self, path: str, model: str | None) -> Fault:
        fault = Fault()
        for rule in self.settings.faults:
            if rule.take(path, model, self.rng):
                fault = fault.merged(rule.fault)
        return fault

    async def apply_pre_faults(self, fault: Fault) -> None:
        delay = fault.delay_ms + self.settings.latency_ms
        if delay:
            await asyncio.sleep(delay / 1000)
        if fault.reset:
            raise ConnectionCut
        error = fault.error()
        if error is not None:
            raise error

    def settle(self, call: Call, entry: dict[str, Any]) -> None:
        """After a reply went out: log its usage, and account for it."""
        if call.usage is not None:
            entry["usage"] = call.usage
        if call.cost_usd is not None:
            entry["cost_usd"] = str(call.cost_usd)
        status = entry.get("status")
        self.account(call, entry["time"], served=isinstance(status, int) and status < 400)

    def account(self, call: Call, at: float, *, batch: bool = False, served: bool = True) -> None:
        """The one place a call's usage counts: its cost against the key's quota, and (when it was
        served) its tokens and cost in the usage ledger, at ``at``. A batch line costs the batch price."""
        model = call.model or ""
        counts = TokenCounts.from_usage(call.usage)
        tier = "batches" if batch else call.cost_tier
        if batch:
            cost = pricing.cost_usd(model, counts, tier=tier) if call.usage is not None else None
        else:
            cost = call.cost_usd
        if cost is not None and call.key:
            self.quota.charge(call.key, cost)
        kind = KIND_OF_PATH.get(str(call.request.scope.get("path", "")).rstrip("/"))
        if not served or kind is None or (call.usage is None and kind != "moderations"):
            return
        body = call.body if isinstance(call.body, dict) else {}
        if kind == "moderations":  # free, and its reply carries no usage: its input tokens as counted
            model = model or "omni-moderation-latest"
            prompt = call.prompt_tokens
            counts = TokenCounts(
                input=prompt if prompt is not None else count_request_prompt_tokens("/moderations", body)
            )
        self.usage.record(
            at=at,
            kind=kind,
            api_key_id=call.key,
            model=model,
            batch=batch,
            service_tier=reported_tier(body.get("service_tier")),
            counts=counts,
            cost=split_cost(model, counts, cost, tier),
        )


def estimate_tokens(path: str, body: Any) -> tuple[int, int]:
    """What a request counts against TPM: its prompt tokens and the output cap it asks for."""
    if not isinstance(body, dict):
        return 0, 0
    endpoint = path.removeprefix("/v1")
    return count_request_prompt_tokens(endpoint, body), max_output_tokens(endpoint, body) or 0


def key_id(key: str) -> str:
    """A stable, non-secret name for an API key (for logs and the request log)."""
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:12]


def body_too_large(size: int, limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"Request body too large: {size} bytes is more than the limit of {limit} bytes.",
        "invalid_request_error",
        None,
        "request_too_large",
    )


async def reset_connection(scope: Scope, send: Send) -> None:
    """Drop the client's TCP connection with a reset (RST), as a failing server would.

    uvicorn's ``send`` is a bound method of its per-request cycle, which holds the transport;
    where it is not reachable (another server, an in-process test transport) the exception
    propagates and the server closes the connection.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is None:
        raise ConnectionCut
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    await asyncio.sleep(0)


def create_app(settings: MockSettings | None = None) -> MockApp:
    return MockApp(settings)


__all__ = ["MockApp", "Response", "create_app"]
