"""``/v1/batches``: create, retrieve, list, cancel, and the batch lifecycle run in the background.

A batch goes ``validating`` → ``in_progress`` → ``finalizing`` → ``completed`` over about
``settings.batch_seconds`` (10% validating, 80% running its lines, 10% finalizing; read live,
so the control API can speed a running batch up). A file that fails the checks in
:mod:`ferryman.mock.batch_lines` ends ``failed`` with ``errors``. Each line runs through the
mock's own handler; successes go to the output file, failed lines to the error file, and the
cost of every line, at Batch API prices, is charged to the creator's key.

``cancel`` moves a running batch to ``cancelling``; it stops within one line and ends
``cancelled`` with the results it has so far. After a restart with ``--state DIR``,
``on_startup`` resumes unfinished batches (running their lines again from the first) and
finishes ``cancelling`` ones; batches whose 24 h window has passed become ``expired``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ferryman.errors import invalid_request, not_found
from ferryman.mock import batch_lines
from ferryman.mock.batch_lines import Line, LineResult
from ferryman.mock.call import Call, Endpoint, json_response
from ferryman.mock.resources.files import create_file, get_file, list_page, no_such_file
from ferryman.mock.state import now
from ferryman.pricing import TokenCounts

if TYPE_CHECKING:
    from ferryman.mock.app import MockApp

log = logging.getLogger("ferryman.mock")

WINDOW_SECONDS = 24 * 3600
OUTPUT_FILE_SECONDS = 30 * 24 * 3600  # output and error files expire like batch input files, unless told
ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
PERSIST_EVERY = 0.25  # seconds between writes of request_counts to the state dir while running


@dataclass
class _Run:
    """What a running batch keeps outside its (persisted, public) object."""

    key: str  # the creator's key id (a hash, not the key)
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # set by cancel


_runs: weakref.WeakKeyDictionary[MockApp, dict[str, _Run]] = weakref.WeakKeyDictionary()


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    """The Batch object as sent: no private fields (null ones stay, as OpenAI sends them)."""
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _zero_usage() -> dict[str, Any]:
    return {
        "input_tokens": 0,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 0,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 0,
    }


# -- endpoints ------------------------------------------------------------------------------------------


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict):
        return
    if len(metadata) > 16:
        raise invalid_request(
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties, "
            f"but got an object with {len(metadata)} properties instead.",
            "metadata",
            "object_above_max_properties",
        )
    for key, value in metadata.items():
        if len(key) > 64:
            raise invalid_request(
                f"Invalid 'metadata': key too long. Expected keys of at most 64 characters, but got a key with "
                f"{len(key)} characters instead.",
                "metadata",
                "string_above_max_length",
            )
        if len(value) > 512:
            raise invalid_request(
                f"Invalid 'metadata.{key}': string too long. Expected a string with maximum length 512, but got "
                f"a string with length {len(value)} instead.",
                f"metadata.{key}",
                "string_above_max_length",
            )


async def create(call: Call) -> Any:
    body: dict[str, Any] = call.body
    app = call.app
    file_id = body["input_file_id"]
    source = get_file(app, file_id)
    if source is None:
        raise no_such_file(file_id, "input_file_id")
    if source["purpose"] != "batch":
        raise invalid_request(
            f"The input file {file_id} has purpose '{source['purpose']}'; batch input files must be uploaded "
            "with purpose 'batch'.",
            "input_file_id",
            "invalid_file_purpose",
        )
    _check_metadata(body.get("metadata"))
    created = now()
    expiry = body.get("output_expires_after")
    batch: dict[str, Any] = {
        "id": "batch_" + secrets.token_hex(16),
        "object": "batch",
        "endpoint": body["endpoint"],
        "model": batch_lines.first_model(app.store.get_blob(file_id) or b""),
        "errors": None,
        "input_file_id": file_id,
        "completion_window": body["completion_window"],
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + WINDOW_SECONDS,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "usage": _zero_usage(),
        "metadata": body.get("metadata"),
        "_output_seconds": expiry["seconds"] if isinstance(expiry, dict) else OUTPUT_FILE_SECONDS,
        "_key_id": call.key,  # a hash, safe to keep in the state dir
    }
    app.store.put("batches", batch)
    _start(app, batch, call.key)
    return json_response(_public(batch))


def _batch_or_404(call: Call) -> dict[str, Any]:
    batch_id = call.path_params["batch_id"]
    batch = call.app.store.get("batches", batch_id)
    if batch is None:
        raise not_found(f"No batch found with id '{batch_id}'.", None, "batch_not_found")
    return batch


async def retrieve(call: Call) -> Any:
    return json_response(_public(_batch_or_404(call)))


async def list_batches(call: Call) -> Any:
    page = list_page(call.app.store.all("batches"), call.query, default_limit=20, max_limit=100)
    page["data"] = [_public(b) for b in page["data"]]
    return json_response(page)


async def cancel(call: Call) -> Any:
    batch = _batch_or_404(call)
    status = batch["status"]
    if status in ("validating", "in_progress", "finalizing"):
        batch["status"] = "cancelling"
        batch["cancelling_at"] = now()
        call.app.store.put("batches", batch)
        run = _runs.get(call.app, {}).get(batch["id"])
        if run is not None:
            run.wake.set()
        else:  # nothing is running it (it cannot happen unless a task died): finish here
            _finish(call.app, batch, "cancelled", [])
    elif status != "cancelling":
        raise invalid_request(f"Cannot cancel a batch with status '{status}'.")
    return json_response(_public(batch))


# -- the lifecycle -----------------------------------------------------------------------------------


def _start(app: MockApp, batch: dict[str, Any], key: str) -> None:
    run = _Run(key)
    _runs.setdefault(app, {})[batch["id"]] = run
    app.tasks.spawn(_lifecycle(app, batch, run))


async def _wait_until(run: _Run, due: Callable[[], float]) -> None:
    """Sleep until the loop time ``due()`` (re-read every 0.1 s, so a change to
    ``batch_seconds`` applies to running batches), waking early if the batch is cancelled."""
    loop = asyncio.get_running_loop()
    while not run.wake.is_set():
        left = due() - loop.time()
        if left <= 0:
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.wake.wait(), min(left, 0.1))
    await asyncio.sleep(0)


def _phase(app: MockApp, fraction: float, start: float | None = None) -> Callable[[], float]:
    """When ``fraction`` of ``batch_seconds`` has passed since ``start`` (default: now)."""
    begin = asyncio.get_running_loop().time() if start is None else start
    return lambda: begin + app.settings.batch_seconds * fraction


def _alive(app: MockApp, batch: dict[str, Any]) -> bool:
    """Still the stored object (a reset or a delete ends the lifecycle quietly)."""
    return app.store.get("batches", batch["id"]) is batch


async def _lifecycle(app: MockApp, batch: dict[str, Any], run: _Run) -> None:
    try:
        await _live_through(app, batch, run)
    except Exception:  # a bug in the mock: fail the batch rather than leave it running forever
        log.exception("batch %s failed in the mock", batch["id"])
        if _alive(app, batch):
            problem = batch_lines.line_error("server_error", "The batch failed because of an error in the mock.", None)
            batch.update(status="failed", failed_at=now(), errors={"object": "list", "data": [problem]})
            app.store.put("batches", batch)
    finally:
        runs = _runs.get(app, {})
        if runs.get(batch["id"]) is run:
            del runs[batch["id"]]


async def _live_through(app: MockApp, batch: dict[str, Any], run: _Run) -> None:
    if batch["status"] == "validating":
        await _wait_until(run, _phase(app, 0.1))
    if not _alive(app, batch):
        return
    if batch["status"] == "cancelling":
        _finish(app, batch, "cancelled", [])
        return
    data = app.store.get_blob(batch["input_file_id"])
    if data is None or get_file(app, batch["input_file_id"]) is None:
        lines: list[Line] = []
        problems = [
            batch_lines.line_error(
                "file_not_found", f"The input file {batch['input_file_id']} no longer exists.", None, "input_file_id"
            )
        ]
    else:
        lines, problems = batch_lines.check(data, batch["endpoint"])
    if problems:
        batch.update(status="failed", failed_at=now(), errors={"object": "list", "data": problems})
        app.store.put("batches", batch)
        return
    if batch["status"] == "validating":
        batch.update(status="in_progress", in_progress_at=now())
    batch["request_counts"] = {"total": len(lines), "completed": 0, "failed": 0}
    batch["usage"] = _zero_usage()
    batch["model"] = batch["model"] or next(
        (line.body["model"] for line in lines if isinstance(line.body.get("model"), str)), None
    )
    app.store.put("batches", batch)
    results = await _run_lines(app, batch, run, lines)
    if not _alive(app, batch):
        return
    if batch["status"] != "cancelling":
        batch.update(status="finalizing", finalizing_at=batch["finalizing_at"] or now())
        app.store.put("batches", batch)
        await _wait_until(run, _phase(app, 0.1))
        if not _alive(app, batch):
            return
    _finish(app, batch, "cancelled" if batch["status"] == "cancelling" else "completed", results)


async def _run_lines(app: MockApp, batch: dict[str, Any], run: _Run, lines: list[Line]) -> list[LineResult]:
    """Run the lines one by one, spread over 80% of ``batch_seconds``; stop early on cancel."""
    started = asyncio.get_running_loop().time()
    saved = time.monotonic()
    counts = batch["request_counts"]
    usage = TokenCounts()
    results: list[LineResult] = []
    for index, line in enumerate(lines):
        if batch["status"] == "cancelling" or not _alive(app, batch):
            break
        result = await batch_lines.run(app, run.key, batch["endpoint"], line)
        results.append(result)
        counts["completed" if result.ok else "failed"] += 1
        if result.usage is not None:
            usage = _add(usage, TokenCounts.from_usage(result.usage))
            batch["usage"] = _usage(usage)  # (its cost was charged as it ran: MockApp.account)
        if time.monotonic() - saved > PERSIST_EVERY and _alive(app, batch):
            app.store.put("batches", batch)
            saved = time.monotonic()
        await _wait_until(run, _phase(app, 0.8 * (index + 1) / len(lines), started))
    return results


def _add(a: TokenCounts, b: TokenCounts) -> TokenCounts:
    return TokenCounts(
        input=a.input + b.input,
        cached_input=a.cached_input + b.cached_input,
        cache_write=a.cache_write + b.cache_write,
        output=a.output + b.output,
        reasoning=a.reasoning + b.reasoning,
    )


def _usage(counts: TokenCounts) -> dict[str, Any]:
    """Usage in the Responses shape, as ``Batch.usage`` has it."""
    return {
        "input_tokens": counts.input,
        "input_tokens_details": {"cached_tokens": counts.cached_input},
        "output_tokens": counts.output,
        "output_tokens_details": {"reasoning_tokens": counts.reasoning},
        "total_tokens": counts.input + counts.output,
    }


def _finish(app: MockApp, batch: dict[str, Any], status: str, results: list[LineResult]) -> None:
    """Write the output and error files (only those with lines) and close the batch."""
    expires = now() + int(batch.get("_output_seconds") or OUTPUT_FILE_SECONDS)
    for ok, kind, name in ((True, "output_file_id", "output"), (False, "error_file_id", "error")):
        chosen = [r.output_line() for r in results if r.ok is ok]
        if chosen:
            data = b"\n".join(chosen) + b"\n"
            batch[kind] = create_file(app, data, f"{batch['id']}_{name}.jsonl", "batch_output", expires)["id"]
    batch["status"] = status
    batch["completed_at" if status == "completed" else "cancelled_at"] = now()
    app.store.put("batches", batch)


async def on_startup(app: MockApp) -> None:
    """Resume the batches a previous run (same ``--state DIR``) left unfinished."""
    for batch in app.store.all("batches"):
        status = batch.get("status")
        if status not in ACTIVE:
            continue
        if batch.get("expires_at") and batch["expires_at"] <= now():
            batch.update(status="expired", expired_at=now())
            app.store.put("batches", batch)
        elif status == "cancelling":
            _finish(app, batch, "cancelled", [])
        else:
            _start(app, batch, batch.get("_key_id", ""))


ENDPOINTS = [
    Endpoint("POST", "/v1/batches", create, body="json", schema="CreateBatchRequest"),
    Endpoint("GET", "/v1/batches", list_batches),
    Endpoint("GET", "/v1/batches/{batch_id}", retrieve),
    Endpoint("POST", "/v1/batches/{batch_id}/cancel", cancel),
]
