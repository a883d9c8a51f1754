"""``/v1/files``: upload (multipart), list, retrieve, download content, delete.

Metadata lives in the store under kind ``"files"`` and the bytes as a blob under the file's
id, so with ``--state DIR`` both survive a restart. Files whose ``expires_at`` has passed are
gone, as on OpenAI. Other resources (batch output, fine-tuning results) create files with
:func:`create_file`.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import Response

from ferryman.errors import OpenAIError, invalid_request, not_found
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.state import new_id, now

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MAX_FILE_BYTES = 512 * 1024 * 1024  # OpenAI's limit per file
MAX_BATCH_FILE_BYTES = 200 * 1024 * 1024  # batch input files
BATCH_FILE_SECONDS = 30 * 24 * 3600  # purpose=batch files expire after 30 days by default
MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 3600, 30 * 24 * 3600
_FORM_FIELDS = ("file", "purpose", "expires_after[anchor]", "expires_after[seconds]")


# -- helpers other resources use ----------------------------------------------------------------


def create_file(
    app: MockApp, data: bytes, filename: str, purpose: str, expires_at: int | None = None
) -> dict[str, Any]:
    """Store ``data`` as a new file and return its OpenAI ``File`` object."""
    file_id = new_id("file-", 22)
    obj: dict[str, Any] = {
        "id": file_id,
        "object": "file",
        "bytes": len(data),
        "created_at": now(),
        "expires_at": expires_at,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }
    app.store.put_blob(file_id, data)
    app.store.put("files", obj)
    return obj


def view(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as sent: its private fields removed.

    OpenAI sends ``"expires_at": null`` and ``"status_details": null`` (and the Batch object's
    unset timestamps and file ids as null), as the spec's own examples show, though its schemas
    type them as non-nullable; the vendored spec allows them (scripts/vendor_openapi.py).
    """
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def no_such_file(file_id: str, param: str | None = "id") -> OpenAIError:
    return not_found(f"No such File object: {file_id}", param)


def get_file(app: MockApp, file_id: str) -> dict[str, Any] | None:
    """The file, or None if it never existed, was deleted or has expired."""
    obj = app.store.get("files", file_id)
    if obj is None:
        return None
    expires = obj.get("expires_at")
    if isinstance(expires, int) and expires <= now():
        app.store.delete("files", file_id)
        app.store.delete_blob(file_id)
        return None
    return obj


def list_page(
    items: list[dict[str, Any]], query: Any, *, default_limit: int, max_limit: int, order: str = "desc"
) -> dict[str, Any]:
    """A cursor page over ``items`` (oldest first) the way OpenAI lists: ``after`` an id, ``limit``."""
    limit = _int_param(query.get("limit"), "limit", default_limit, 1, max_limit)
    ordered = items if order == "asc" else list(reversed(items))
    after = query.get("after")
    if after:
        ids = [o["id"] for o in ordered]
        ordered = ordered[ids.index(after) + 1 :] if after in ids else []
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


def _int_param(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_request(
            f"Invalid '{name}': expected an integer, but got '{raw}' instead.", name, "invalid_type"
        ) from None
    if not low <= value <= high:
        raise invalid_request(
            f"Invalid '{name}': integer {value} is out of range. Expected a value between {low} and {high}.",
            name,
            "integer_out_of_range",
        )
    return value


# -- upload -------------------------------------------------------------------------------------------


async def _read_form(call: Call, limit: int) -> list[tuple[str, str | UploadFile]]:
    """Parse the multipart body, refusing it as soon as it passes ``limit`` bytes (even when
    the client sent no Content-Length)."""
    content_type = call.request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise invalid_request(
            "Invalid Content-Type header. Expected multipart/form-data with a 'file' and a 'purpose'.",
            None,
            "invalid_content_type",
        )

    async def capped() -> AsyncGenerator[bytes, None]:
        size = 0
        async for chunk in call.request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            yield chunk

    parser = MultiPartParser(call.request.headers, capped(), max_files=1, max_fields=10, max_part_size=1024 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise invalid_request(f"Could not parse the multipart form: {exc.message}", None, "invalid_multipart") from None
    return list(form.multi_items())


def _too_large(limit: int) -> OpenAIError:
    return invalid_request(
        f"File is too large: the limit is {limit} bytes ({limit / 1024 / 1024:g} MB).", "file", "file_too_large"
    )


def _expiry(fields: dict[str, str], created_at: int, purpose: str) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return created_at + BATCH_FILE_SECONDS if purpose == "batch" else None
    if anchor != "created_at":
        raise invalid_request(
            f"Invalid 'expires_after.anchor': expected 'created_at', but got '{anchor}' instead.",
            "expires_after.anchor",
            "invalid_value",
        )
    if seconds is None:
        param = "expires_after.seconds"
        raise invalid_request(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
    value = _int_param(seconds, "expires_after.seconds", 0, MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS)
    return created_at + value


async def upload(call: Call) -> Any:
    settings = call.app.settings
    cap = min(MAX_FILE_BYTES, settings.max_file_bytes)
    items = await _read_form(call, cap + 1024 * 1024)
    upload_file: UploadFile | None = None
    fields: dict[str, str] = {}
    try:
        for name, value in items:
            if name not in _FORM_FIELDS:
                raise invalid_request(f"Unrecognized request argument supplied: {name}", name, "unknown_parameter")
            if isinstance(value, UploadFile):
                if name != "file":
                    raise invalid_request(f"Invalid '{name}': expected a string, got a file.", name, "invalid_type")
                upload_file = value
            else:
                fields[name] = value
        if upload_file is None:
            hint = " It must be sent as a file part (with a filename)." if "file" in fields else ""
            raise invalid_request(f"Missing required parameter: 'file'.{hint}", "file", "missing_required_parameter")
        purpose = fields.get("purpose")
        if purpose is None:
            raise invalid_request("Missing required parameter: 'purpose'.", "purpose", "missing_required_parameter")
        if purpose not in UPLOAD_PURPOSES:
            allowed = ", ".join(f"'{p}'" for p in UPLOAD_PURPOSES)
            raise invalid_request(
                f"Invalid value for 'purpose': '{purpose}'. Supported values are: {allowed}.",
                "purpose",
                "invalid_value",
            )
        filename = upload_file.filename or "upload"
        if purpose == "batch":
            cap = min(cap, MAX_BATCH_FILE_BYTES)
            if not filename.lower().endswith(".jsonl"):
                raise invalid_request(
                    f"Invalid file format for Batch API. Must be .jsonl, but got '{filename}'.",
                    "file",
                    "invalid_file_format",
                )
        size = upload_file.size if upload_file.size is not None else 0
        if size > cap:
            raise _too_large(cap)
        data = await upload_file.read()
        if not data:
            raise invalid_request("File is empty.", "file", "empty_file")
        created = now()
        obj = create_file(call.app, data, filename, purpose, _expiry(fields, created, purpose))
    finally:
        if upload_file is not None:
            await upload_file.close()
    return json_response(view(obj))


# -- the other endpoints ------------------------------------------------------------------------------


def _live_files(app: MockApp) -> list[dict[str, Any]]:
    return [o for o in app.store.all("files") if get_file(app, o["id"]) is not None]


async def list_files(call: Call) -> Any:
    order = call.query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise invalid_request(
            f"Invalid value for 'order': '{order}'. Supported values are: 'asc' and 'desc'.", "order", "invalid_value"
        )
    purpose = call.query.get("purpose")
    files = _live_files(call.app)
    if purpose:
        files = [o for o in files if o["purpose"] == purpose]
    page = list_page(files, call.query, default_limit=10_000, max_limit=10_000, order=order)
    page["data"] = [view(o) for o in page["data"]]
    return json_response(page)


def _file_or_404(call: Call) -> dict[str, Any]:
    file_id = call.path_params["file_id"]
    obj = get_file(call.app, file_id)
    if obj is None:
        raise no_such_file(file_id)
    return obj


async def retrieve(call: Call) -> Any:
    return json_response(view(_file_or_404(call)))


async def content(call: Call) -> Any:
    obj = _file_or_404(call)
    data = call.app.store.get_blob(obj["id"]) or b""
    return Response(data, media_type="application/octet-stream")


async def delete(call: Call) -> Any:
    obj = _file_or_404(call)
    call.app.store.delete("files", obj["id"])
    call.app.store.delete_blob(obj["id"])
    return json_response({"id": obj["id"], "object": "file", "deleted": True})


ENDPOINTS = [
    Endpoint("POST", "/v1/files", upload, body="multipart"),
    Endpoint("GET", "/v1/files", list_files),
    Endpoint("GET", "/v1/files/{file_id}", retrieve),
    Endpoint("DELETE", "/v1/files/{file_id}", delete),
    Endpoint("GET", "/v1/files/{file_id}/content", content),
]
