"""The intake stage: the gateway reads a request's body by what the endpoint expects, not by
what the caller claims, and refuses what it cannot check.

It runs inside audit and telemetry and after authentication, so a body is read only for a known
key, and every refusal is recorded. For each request:

- **Limits first**: a declared ``Content-Length`` over the cap is refused before a byte is read
  (413); a body is counted as it arrives (``gateway.max_body_mb`` for JSON,
  ``gateway.max_upload_mb`` for uploads).
- **JSON endpoints** (all but the multipart ones, unknown paths included) parse the body as JSON
  whatever its ``Content-Type`` says (``text/plain``, a form type, ``application/JSON``) or
  refuse it (400), and forward what was parsed, re-serialised, as ``application/json``: the
  upstream reads exactly what the checks read (no duplicate members, no second parser).
- **Multipart endpoints** (``/files``, ``/audio/transcriptions``, ``/uploads/{id}/parts``, …,
  from the spec: :mod:`ferryman.endpoints`) need ``multipart/form-data`` with a boundary
  (400). The body is spooled to a private temporary file (unlinked at once) as it arrives, so
  memory stays bounded however large the upload, and streamed from there to the upstream;
  at most ``gateway.max_concurrent_uploads`` are read at once (429 beyond). The form's text
  fields become ``exchange.json`` (``model`` on an audio upload is checked like a JSON one), and
  for a key with a model allowlist every JSON line of an uploaded file that names a model (a
  Batch API input) is checked against it.
- **Models**: a priced endpoint (chat, responses, completions, embeddings) without a model is
  refused, since nothing could price or allow it; a model outside the key's allowlist is a 403.
  A key with a budget may call only what the budget can price, or what costs nothing
  (:data:`FREE`): anything else would spend past the cap unseen.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import IO, Any

import orjson
from python_multipart.multipart import MultipartParser, parse_options_header

from ferryman import endpoints
from ferryman.errors import OpenAIError, invalid_request, unparsable_json
from ferryman.exchange import Exchange, Reply
from ferryman.gateway.auth import model_allowed, model_refused
from ferryman.gateway.objects import UPLOAD_MODELS
from ferryman.pipeline.chain import Handler
from ferryman.pipeline.guard import refusal_reply
from ferryman.pricing import BILLED_ENDPOINTS

# ``Exchange.notes`` key under which the proxy leaves the body it has not read yet.
BODY_NOTE = "gateway_body"
_SPOOL_CHUNK = 1024 * 1024  # what an upload holds in memory at a time (reading, writing, sending)
_MAX_FIELD = 64 * 1024  # a form's text field (purpose, model, prompt)
_MAX_FIELDS = 64
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# POST operations (the spec's templates) that cost nothing: a key with a budget may call them.
FREE = frozenset(
    {
        "/files",
        "/uploads",
        "/uploads/{upload_id}/parts",
        "/uploads/{upload_id}/complete",
        "/uploads/{upload_id}/cancel",
        "/batches/{batch_id}/cancel",
        "/fine_tuning/jobs/{fine_tuning_job_id}/cancel",
        "/fine_tuning/jobs/{fine_tuning_job_id}/pause",
        "/fine_tuning/jobs/{fine_tuning_job_id}/resume",
        "/responses/{response_id}/cancel",
        "/responses/input_tokens",
        "/moderations",
        "/chat/completions/{completion_id}",
        "/conversations",
        "/conversations/{conversation_id}",
        "/conversations/{conversation_id}/items",
    }
)


class BodyTooLarge(Exception):
    pass


class AsgiBody:
    """The body of an ASGI request, not read yet."""

    def __init__(self, receive: Callable[[], Awaitable[MutableMapping[str, Any]]], declared: int | None) -> None:
        self.receive = receive
        self.declared = declared

    async def chunks(self, limit: int) -> AsyncIterator[bytes]:
        if self.declared is not None and self.declared > limit:
            raise BodyTooLarge()
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ConnectionResetError("the caller left while sending its request")
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise BodyTooLarge()
                yield chunk
            if not message.get("more_body", False):
                return

    async def read(self, limit: int) -> bytes:
        parts = [chunk async for chunk in self.chunks(limit)]
        return parts[0] if len(parts) == 1 else b"".join(parts)


def declared_length(headers: dict[str, str]) -> int | None:
    value = headers.get("content-length", "").strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


class Spool:
    """An upload kept in an unlinked temporary file (0600): read again from the start for each
    attempt, in bounded pieces."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.size = 0

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self.file.write, data)
        self.size += len(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        offset = 0
        while offset < self.size:
            piece = await asyncio.to_thread(_read_at, self.file, offset, min(_SPOOL_CHUNK, self.size - offset))
            if not piece:
                return
            offset += len(piece)
            yield piece

    def close(self) -> None:
        self.file.close()


def _read_at(file: IO[bytes], offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


class Form:
    """A multipart body fed as it arrives: its text fields (bounded), its files' names and sizes,
    and optionally each file's data (``on_file``)."""

    def __init__(self, boundary: bytes, on_file: Callable[[bytes], None] | None = None) -> None:
        self.fields: dict[str, str] = {}
        self.files: list[tuple[str, int]] = []
        self.on_file = on_file
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._data = bytearray()
        self._name = ""
        self._file = False
        self._size = 0
        self.ended = False
        self.error: OpenAIError | None = None
        self.parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except OpenAIError:  # a check of a file's line, raised from inside the parser
            raise
        except Exception as error:  # python-multipart's MultipartParseError and friends
            raise invalid_request(f"The multipart body could not be parsed: {str(error)[:200]}") from None
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        if not self.ended:
            raise invalid_request("The multipart body ended before its closing boundary.")

    def _begin(self) -> None:
        self._headers, self._data, self._name, self._file, self._size = {}, bytearray(), "", False, 0

    def _header_end(self) -> None:
        self._headers[bytes(self._field).decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    def _headers_done(self) -> None:
        disposition = self._headers.get("content-disposition", b"")
        _, options = parse_options_header(disposition)
        name = options.get(b"name")
        self._name = name.decode("utf-8", "replace") if name else ""
        # ``filename*=UTF-8''…`` (RFC 5987) is a file too, though parse_options_header drops it
        self._file = b"filename" in options or b"filename" in disposition.lower()
        if not self._file and self._name in self.fields:
            self.error = invalid_request(f"The form field `{self._name[:64]}` is given more than once.", self._name)
        elif len(self.fields) >= _MAX_FIELDS:
            self.error = invalid_request(f"The form has more than {_MAX_FIELDS} fields.")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._file:
            if self.on_file is not None:
                self.on_file(data[start:end])
        elif self._size > _MAX_FIELD:
            self.error = invalid_request(f"The form field `{self._name[:64]}` is longer than 64 KiB.", self._name)
        else:
            self._data.extend(data[start:end])

    def _part_end(self) -> None:
        if self._file:
            self.files.append((self._name, self._size))
            if self.on_file is not None:
                self.on_file(b"")  # the end of this file
        else:
            self.fields[self._name] = self._data.decode("utf-8", "replace")

    def _end(self) -> None:
        self.ended = True


class Lines:
    """A file's data split into lines as it comes; each JSON line's model is checked."""

    def __init__(self, check: Callable[[int, bytes], None], max_line: int) -> None:
        self.check = check
        self.max_line = max_line
        self.buffer = bytearray()
        self.number = 0
        self.too_long = False

    def __call__(self, data: bytes) -> None:
        if not data:  # the file's end
            self._line(bytes(self.buffer))
            self.buffer.clear()
            self.number, self.too_long = 0, False
            return
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                if not self.too_long:
                    self.buffer.extend(data[start:])
                    if len(self.buffer) > self.max_line:
                        self.too_long = True  # a line too long to check: the caller decides
                        self.buffer.clear()
                return
            if not self.too_long:
                self.buffer.extend(data[start:end])
                self._line(bytes(self.buffer))
            else:
                self.number += 1
                self.check(self.number, b"")  # reported as too long by the checker
            self.buffer.clear()
            self.too_long = False
            start = end + 1

    def _line(self, line: bytes) -> None:
        self.number += 1
        if line.strip() or self.too_long:
            self.check(self.number, line)


def _models_of(line: Any) -> list[Any]:
    if not isinstance(line, dict):
        return []
    found = [line["model"]] if "model" in line else []
    body = line.get("body")
    if isinstance(body, dict) and "model" in body:
        found.append(body["model"])
    return found


class Intake:
    def __init__(self, max_body: int, max_upload: int, max_uploads: int) -> None:
        self.max_body = max_body
        self.max_upload = max_upload
        self.uploads = asyncio.Semaphore(max_uploads)
        self.max_uploads = max_uploads

    @classmethod
    def from_settings(cls, settings: Any) -> Intake:
        g = settings.gateway
        return cls(int(g.max_body_mb * 1024 * 1024), int(g.max_upload_mb * 1024 * 1024), g.max_concurrent_uploads)

    async def handle(self, exchange: Exchange, call_next: Handler) -> Reply:
        body: AsgiBody | None = exchange.notes.pop(BODY_NOTE, None)
        spool: Spool | None = None
        try:
            if body is not None:
                spool = await self._read(exchange, body)
            self._check_models(exchange)
        except OpenAIError as error:
            if spool is not None:
                spool.close()
            return refusal_reply(exchange, error.status, error.body(), dict(error.headers))
        if spool is None:
            return await call_next(exchange)
        try:
            return await call_next(exchange)
        finally:
            spool.close()  # the upstream has had the whole body by the time a reply comes back

    # -- bodies -------------------------------------------------------------------------------

    async def _read(self, exchange: Exchange, body: AsgiBody) -> Spool | None:
        if exchange.method in _BODYLESS:
            return None  # a body there is not read, and never forwarded
        content_type = exchange.headers.get("content-type", "")
        media, options = parse_options_header(content_type)
        if wants_multipart(exchange.method, exchange.path, media.decode("latin-1").lower()):
            boundary = options.get(b"boundary")
            if media.lower() != b"multipart/form-data" or not boundary:
                raise invalid_request(
                    f"POST /v1{exchange.path} takes a file upload: send multipart/form-data with a boundary "
                    f"(the request said {content_type[:100]!r})."
                )
            return await self._spool(exchange, body, boundary)
        try:
            raw = await body.read(self.max_body)
        except BodyTooLarge:
            raise too_large(self.max_body) from None
        exchange.received = raw
        exchange.headers["content-type"] = "application/json"
        if not raw.strip():
            exchange.body, exchange.json = b"", None
            return None
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise unparsable_json() from None
        exchange.json = parsed
        exchange.body = orjson.dumps(parsed)
        exchange.learn_request()
        return None

    async def _spool(self, exchange: Exchange, body: AsgiBody, boundary: bytes) -> Spool:
        if body.declared is not None and body.declared > self.max_upload:
            raise too_large(self.max_upload)
        if self.uploads.locked():
            raise OpenAIError(
                429,
                f"This gateway is receiving {self.max_uploads} uploads already "
                "(gateway.max_concurrent_uploads). Please try again shortly.",
                "requests",
                None,
                "too_many_uploads",
                {"retry-after": "1"},
            )
        async with self.uploads:
            spool = Spool()
            form = Form(boundary)
            pending = bytearray()
            try:
                async for chunk in body.chunks(self.max_upload):
                    form.feed(chunk)
                    pending.extend(chunk)
                    if len(pending) >= _SPOOL_CHUNK:
                        await spool.write(bytes(pending))
                        pending.clear()
                if pending:
                    await spool.write(bytes(pending))
                form.finish()
                exchange.json = dict(form.fields)
                exchange.upload = spool
                exchange.learn_request()
                batch = form.fields.get("purpose") == "batch"
                if form.files and (batch or exchange.principal.models is not None):
                    await self._check_lines(exchange, spool, boundary, batch)
            except BodyTooLarge:
                spool.close()
                raise too_large(self.max_upload) from None
            except BaseException:
                spool.close()
                raise
        exchange.received = b""
        return spool

    async def _check_lines(self, exchange: Exchange, spool: Spool, boundary: bytes, batch: bool) -> None:
        """Every JSON line of the uploaded files that names a model (a Batch API input) must name
        one the key may use; in a batch file every line must be checkable. The models named are
        left for the ownership stage (a fine-tuned model must be the key's own)."""
        principal = exchange.principal
        named: set[str] = set()
        exchange.notes[UPLOAD_MODELS] = named

        def check(number: int, line: bytes) -> None:
            if not line:
                if batch:
                    raise invalid_request(
                        f"Line {number} of the batch file is longer than this gateway checks "
                        f"({self.max_body // (1024 * 1024)} MiB, gateway.max_body_mb)."
                    )
                return
            try:
                parsed = orjson.loads(line.removeprefix(b"\xef\xbb\xbf"))
            except orjson.JSONDecodeError:
                if batch:
                    raise invalid_request(f"Line {number} of the batch file is not valid JSON.") from None
                return
            for model in _models_of(parsed):
                if not isinstance(model, str) or not model_allowed(principal, model):
                    raise model_refused(str(model)[:256])
                if len(named) >= 10_000 and model not in named:
                    raise invalid_request("The batch file names more than 10,000 different models.", "file")
                named.add(model)

        form = Form(boundary, Lines(check, self.max_body))
        async for chunk in spool.chunks():
            form.feed(chunk)

    # -- models -------------------------------------------------------------------------------

    def _check_models(self, exchange: Exchange) -> None:
        principal = exchange.principal
        if exchange.method != "POST":
            return
        priced = exchange.path in BILLED_ENDPOINTS
        if priced and not exchange.model:
            raise invalid_request(
                f"POST /v1{exchange.path} needs a `model` (a string) at this gateway: without one the call "
                "can be neither allowed nor priced.",
                "model",
                "missing_model",
            )
        if exchange.model is not None and not model_allowed(principal, exchange.model):
            raise model_refused(exchange.model)
        batch_in_parts = exchange.path == "/uploads" and isinstance(exchange.json, dict)
        if principal.models is not None and batch_in_parts and exchange.json.get("purpose") == "batch":
            raise OpenAIError(
                403,
                "A key with a model allowlist uploads batch files with POST /v1/files, where each line's "
                "model is checked; the Uploads API sends files in parts that cannot be checked.",
                "invalid_request_error",
                "purpose",
                "upload_not_checkable",
            )
        if principal.caps and not priced and endpoints.template("POST", exchange.path) not in FREE:
            raise OpenAIError(
                403,
                f"This key has a budget, and the gateway cannot price POST /v1{exchange.path}; "
                "calls it cannot price would spend past the cap unseen.",
                "invalid_request_error",
                None,
                "budget_cannot_price",
            )


def wants_multipart(method: str, path: str, media: str) -> bool:
    """True when the operation takes a multipart body: always for upload endpoints, by the
    caller's media type where the API takes either, and for an unknown path that sends one."""
    kind = endpoints.body_kind(method, path)
    if kind == "multipart":
        return True
    return kind in ("either", None) and media.startswith("multipart/")


def too_large(limit: int) -> OpenAIError:
    return OpenAIError(
        413,
        f"Request body too large: this gateway accepts at most {limit / (1024 * 1024):g} MiB for this kind of request.",
        "invalid_request_error",
        None,
        "request_too_large",
    )
