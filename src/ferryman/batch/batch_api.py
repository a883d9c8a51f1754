"""The Batch API driver (``ferryman run --via batch-api``): split, upload, create, poll, download, merge.

The pending lines are grouped by endpoint (a batch has one) in input order and split into
parts within the Batch API's limits (``max_lines`` requests and ``max_bytes`` of JSONL per input
file). Each part is a row of the journal's ``parts`` table, and every id is recorded the moment
it exists, before the next step: the uploaded input file, then the batch. So a restart, after a
crash or a ``kill -9`` at any point, picks each unmerged part up where it is: no input file →
upload; no batch → create (after looking for a batch already made from that file, in case the
process died between creating it and recording its id); else poll. Only pending lines not already
in an unmerged part go into new parts.

Polling backs off from ``poll_s``, doubling up to 60 s, and shows each batch's status and
``request_counts`` on the progress bar. When a batch ends (``completed``, ``failed``, ``expired``,
``cancelled``) its output and error files are downloaded and every line merged into the journal
as a :class:`~ferryman.batch.journal.Result` (``via="batch-api"``, cost at the Batch API's tier):
non-2xx lines and error-file lines are failed with their reason, lines with no result at all are
failed ("batch … ended … without a result for this line"), and a batch that failed validation
fails every line of its part with the batch's errors. Then the part is marked merged. The results
file is written from the journal by the CLI, exactly as for the live path.

Ctrl-C while batches run asks (on a terminal) whether to cancel them; either way the
interrupt goes on to the CLI, which writes the results so far and exits 130. Batches left
running are picked up by the next run of the same command.

Everything goes through the official SDK on Ferryman's pipeline (retries, audit).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from collections.abc import Iterable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Console
from rich.progress import Progress, TaskID

from ferryman import redact
from ferryman.batch.inputs import Line
from ferryman.batch.journal import Journal, Part, Result
from ferryman.batch.live import error_of, usage_counts
from ferryman.pricing import PriceTable

if TYPE_CHECKING:
    import openai

MAX_LINES = 50_000  # requests per batch input file
MAX_BYTES = 200 * 1024 * 1024  # bytes per batch input file
MAX_POLL_S = 60.0
TERMINAL = ("completed", "failed", "expired", "cancelled")
FIND_BATCH_LIMIT = 500  # recent batches searched for one made from a part's file before a restart
MAX_POLL_FAILURES = 10  # consecutive failed polls before the run gives up (the batches go on)
VIA = "batch-api"


class BatchAPIError(RuntimeError):
    """The Batch API could not be driven; the parts are kept, so running the same command again resumes."""


def split(lines: Iterable[Line], max_lines: int = MAX_LINES, max_bytes: int = MAX_BYTES) -> list[list[Line]]:
    """Lines (of one endpoint) → parts of at most ``max_lines`` lines and ``max_bytes`` bytes of
    JSONL each, in order. A line too big for any part is left out (the caller fails it)."""
    parts: list[list[Line]] = []
    current: list[Line] = []
    size = 0
    for line in lines:
        length = len(line.batch_line()) + 1
        if length > max_bytes:
            continue
        if current and (len(current) >= max_lines or size + length > max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append(line)
        size += length
    if current:
        parts.append(current)
    return parts


def _reason(error: Any, input_line: Any = None) -> str:
    """``code: message`` of a Batch API error object (an SDK model or a dict), with the input
    line it names (``input_line``: the batch file's line number → the input's)."""
    if hasattr(error, "model_dump"):
        error = error.model_dump()
    if not isinstance(error, dict):
        return str(error)
    code, message, line = error.get("code"), error.get("message"), error.get("line")
    text = ": ".join(str(part) for part in (code, message) if part) or "error"
    if isinstance(line, int) and input_line is not None:
        number = input_line(line)
        if number is not None:
            return f"{text} (input line {number})"
    return text


def _api_error(error: Exception) -> str:
    status = getattr(error, "status_code", None)
    body = getattr(error, "body", None)
    if isinstance(status, int):
        text = error_of(status, {"error": body} if isinstance(body, dict) and "error" not in body else body)
    else:
        text = f"{type(error).__name__}: {error}"
    return redact.secrets(text)


def _permanent(error: Exception) -> bool:
    """An API's refusal that asking again will not change (4xx other than 408, 409 and 429)."""
    status = getattr(error, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


class BatchAPIRunner:
    def __init__(
        self,
        settings: Any,
        journal: Journal,
        lines: dict[str, Line],
        poll_s: float = 5.0,
        progress: Progress | None = None,
        console: Console | None = None,
        max_lines: int = MAX_LINES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.lines = lines
        self.poll_s = max(0.01, poll_s)
        self.console = console or Console(stderr=True)
        self.progress = progress or Progress(console=self.console, disable=True)
        self.max_lines = max(1, max_lines)
        self.max_bytes = max_bytes
        self.prices = PriceTable.for_settings(settings)
        self._tasks: dict[int, TaskID] = {}

    # -- entry points -------------------------------------------------------------------------

    def run_blocking(self, pending: list[Line]) -> None:
        """Run the job to the end. On Ctrl-C, offer to cancel the running batches, then re-raise."""
        try:
            asyncio.run(self.run(pending))
        except KeyboardInterrupt:
            self._interrupted()
            raise

    async def run(self, pending: list[Line]) -> None:
        """Plan the parts for ``pending`` (in input order), then drive every unmerged part to merged."""
        parts = self.plan(pending)
        if not parts:
            return
        client, close = self._client()
        try:
            with self.progress:
                for part in parts:
                    self._task(part)
                running: list[Part] = []
                for part in parts:
                    submitted = await self._submit(client, part)
                    if submitted is not None:
                        running.append(submitted)
                await self._poll(client, running)
        finally:
            await close()

    # -- planning -----------------------------------------------------------------------------

    def plan(self, pending: list[Line]) -> list[Part]:
        """Record new parts for the pending lines that are in no unmerged part; every unmerged part."""
        open_parts = [part for part in self.journal.parts() if not part.merged]
        taken = {custom_id for part in open_parts for custom_id in part.custom_ids}
        by_url: dict[str, list[Line]] = {}
        for line in pending:
            if line.custom_id not in taken:
                by_url.setdefault(line.url, []).append(line)
        for group in by_url.values():
            for line in group:
                if len(line.batch_line()) + 1 > self.max_bytes:
                    self.journal.record(
                        Result(
                            line.custom_id,
                            None,
                            None,
                            f"the request is {len(line.batch_line()):,} bytes, more than a batch input file may"
                            f" hold ({self.max_bytes:,} bytes); send it with --via live",
                            attempts=0,
                            via=VIA,
                        )
                    )
            for chunk in split(group, self.max_lines, self.max_bytes):
                self.journal.add_part([line.custom_id for line in chunk])
        return [part for part in self.journal.parts() if not part.merged]

    def _url(self, part: Part) -> str:
        for custom_id in part.custom_ids:
            line = self.lines.get(custom_id)
            if line is not None:
                return line.url
        raise BatchAPIError(f"part {part.part}: none of its lines is in the input")

    def _file(self, part: Part) -> bytes:
        return b"".join(self.lines[c].batch_line() + b"\n" for c in part.custom_ids if c in self.lines)

    # -- the client ---------------------------------------------------------------------------

    def _client(self) -> tuple[openai.AsyncOpenAI, Any]:
        """The official SDK on Ferryman's pipeline (its own retries off: the pipeline retries)."""
        import httpx2
        import openai

        from ferryman.exchange import SOURCE_RUN_BATCH_API
        from ferryman.pipeline import build
        from ferryman.transport import AsyncFerrymanTransport

        pipeline = build(self.settings)
        transport = AsyncFerrymanTransport(pipeline, SOURCE_RUN_BATCH_API)  # its records say so (via_batch)
        http = httpx2.AsyncClient(transport=transport, timeout=httpx2.Timeout(600.0, connect=5))
        key = os.environ.get("OPENAI_API_KEY") or "ferryman-managed"
        client = openai.AsyncOpenAI(http_client=http, max_retries=0, api_key=key)

        async def close() -> None:
            try:
                await client.close()
            finally:
                store = getattr(pipeline, "store", None)
                if store is not None:
                    store.close()

        return client, close

    # -- upload and create --------------------------------------------------------------------

    async def _submit(self, client: openai.AsyncOpenAI, part: Part) -> Part | None:
        """Upload the part's file and create its batch, unless the journal has them; the part with
        its ids, or None if the API refused it (its lines are then failed and the part merged)."""
        import openai

        url = self._url(part)
        uploaded_before = part.input_file_id is not None
        if part.input_file_id is None:
            data = self._file(part)
            try:
                file = await client.files.create(file=(f"ferryman-part-{part.part}.jsonl", data), purpose="batch")
            except openai.APIError as error:
                self._refused(part, "could not upload the batch input file", error)
                return None
            self.journal.update_part(part.part, input_file_id=file.id)
            part = dataclasses.replace(part, input_file_id=file.id)
            self._say(part, f"uploaded {len(part.custom_ids)} lines ({len(data):,} bytes) as {file.id}")
        if part.batch_id is None:
            assert part.input_file_id is not None
            batch = await self._find_batch(client, part.input_file_id) if uploaded_before else None
            if batch is None:
                try:
                    batch = await client.batches.create(
                        input_file_id=part.input_file_id,
                        endpoint=url,  # type: ignore[arg-type]
                        completion_window="24h",
                        metadata={"ferryman_part": str(part.part)},
                    )
                except openai.APIError as error:
                    self._refused(part, "could not create the batch", error)
                    return None
            self.journal.update_part(part.part, batch_id=batch.id, status=batch.status)
            part = dataclasses.replace(part, batch_id=batch.id, status=batch.status)
            self._say(part, f"batch {batch.id} created ({url})")
        else:
            self._say(part, f"resuming batch {part.batch_id} ({part.status or 'unknown'})")
        return part

    async def _find_batch(self, client: openai.AsyncOpenAI, input_file_id: str) -> Any:
        """A batch already made from ``input_file_id`` (the process died before recording it)."""
        import openai

        looked = 0
        try:
            async for batch in client.batches.list(limit=100):  # newest first
                if batch.input_file_id == input_file_id:
                    self.console.print(f"found batch {batch.id}, made from {input_file_id} before a restart")
                    return batch
                looked += 1
                if looked >= FIND_BATCH_LIMIT:
                    break
        except openai.APIError:
            pass
        return None

    def _refused(self, part: Part, what: str, error: Exception) -> None:
        reason = f"{what}: {_api_error(error)}"
        if not _permanent(error):
            raise BatchAPIError(f"part {part.part}: {reason}; run the same command again to resume") from error
        self._fail_all(part, reason)
        self.journal.update_part(part.part, merged=1)
        self._say(part, f"[red]{reason}[/red]")

    # -- polling ------------------------------------------------------------------------------

    async def _poll(self, client: openai.AsyncOpenAI, parts: list[Part]) -> None:
        import openai

        running = {part.part: part for part in parts}
        interval = self.poll_s
        failures = 0
        while running:
            for number, part in list(running.items()):
                assert part.batch_id is not None
                try:
                    batch = await client.batches.retrieve(part.batch_id)
                except openai.NotFoundError:
                    self._fail_all(part, f"batch {part.batch_id} no longer exists")
                    self.journal.update_part(number, status="missing", merged=1)
                    del running[number]
                    continue
                except openai.APIError as error:
                    failures += 1
                    if failures >= MAX_POLL_FAILURES:
                        raise BatchAPIError(
                            f"could not poll batch {part.batch_id}: {_api_error(error)}; the batches go on, "
                            "run the same command again to pick up their results"
                        ) from error
                    self.console.print(f"[yellow]polling {part.batch_id} failed:[/yellow] {_api_error(error)}")
                    continue
                failures = 0
                if batch.status != part.status:
                    self.journal.update_part(number, status=batch.status)
                    part = running[number] = dataclasses.replace(part, status=batch.status)
                self._show(part, batch)
                if batch.status in TERMINAL:
                    await self._merge(client, part, batch)
                    del running[number]
            if running:
                await asyncio.sleep(interval)
                interval = min(interval * 2, MAX_POLL_S)

    # -- merging ------------------------------------------------------------------------------

    async def _merge(self, client: openai.AsyncOpenAI, part: Part, batch: Any) -> None:
        """Every line of an ended batch into the journal; then the part is merged."""
        self.journal.update_part(
            part.part, status=batch.status, output_file_id=batch.output_file_id, error_file_id=batch.error_file_id
        )
        wanted = set(part.custom_ids)
        errors = getattr(batch.errors, "data", None) if batch.errors is not None else None
        spent = Decimal(0)
        if batch.status == "failed" and errors:
            shown = "; ".join(_reason(error, lambda n: self._input_line(part, n)) for error in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            self._fail_all(part, f"batch {batch.id} failed validation: {shown}{more}")
        else:
            seen: set[str] = set()
            for file_id in (batch.output_file_id, batch.error_file_id):
                if not file_id:
                    continue
                try:
                    content = (await client.files.content(file_id)).content
                except Exception as error:
                    raise BatchAPIError(
                        f"could not download {file_id} of batch {batch.id}: {_api_error(error)}; "
                        "run the same command again to resume"
                    ) from error
                for raw in content.splitlines():
                    result = self._result_of(raw)
                    if result is None or result.custom_id not in wanted or result.custom_id in seen:
                        continue
                    seen.add(result.custom_id)
                    if self.journal.record(result):
                        spent += result.cost_usd
            reason = f"batch {batch.id} ended {batch.status} without a result for this line"
            for custom_id in part.custom_ids:
                if custom_id not in seen:
                    self.journal.record(Result(custom_id, None, None, reason, via=VIA))
        self.journal.update_part(part.part, merged=1)
        task = self._tasks.get(part.part)
        if task is not None:
            self.progress.update(task, description=f"part {part.part}: {batch.status}, merged", spend=spent)

    def _result_of(self, raw: bytes) -> Result | None:
        """One line of an output or error file (``BatchRequestOutput``) → a Result."""
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(item, dict) or not isinstance(item.get("custom_id"), str):
            return None
        custom_id: str = item["custom_id"]
        response = item.get("response")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            status: int = response["status_code"]
            body = response.get("body")
            if isinstance(body, str | bytes):
                try:
                    body = orjson.loads(body)
                except orjson.JSONDecodeError:
                    body = {"raw": body if isinstance(body, str) else body.decode("utf-8", "replace")}
            usage = body.get("usage") if isinstance(body, dict) else None
            input_tokens, output_tokens = usage_counts(usage)
            cost = Decimal(0)
            if status < 400 and isinstance(usage, dict):
                model = body.get("model") if isinstance(body, dict) else None
                line = self.lines.get(custom_id)
                if not isinstance(model, str) and line is not None:
                    model = line.body.get("model")
                cost = self.prices.cost_usd(model, usage, tier="batches") or Decimal(0)
            reason = None if status < 400 else error_of(status, body)
            return Result(custom_id, status, body, reason, 1, input_tokens, output_tokens, cost, VIA)
        error = item.get("error")
        reason = _reason(error) if error else "the batch returned neither a response nor an error for this line"
        return Result(custom_id, None, None, reason, via=VIA)

    def _input_line(self, part: Part, number: int) -> int | None:
        """The input's line number of line ``number`` (1-based) of the part's batch file."""
        if not 1 <= number <= len(part.custom_ids):
            return None
        line = self.lines.get(part.custom_ids[number - 1])
        return line.number if line is not None else None

    def _fail_all(self, part: Part, reason: str) -> None:
        for custom_id in part.custom_ids:
            self.journal.record(Result(custom_id, None, None, reason, via=VIA))

    # -- Ctrl-C -------------------------------------------------------------------------------

    def running(self) -> list[Part]:
        """The parts whose batch was created and may still be running."""
        return [
            part
            for part in self.journal.parts()
            if not part.merged and part.batch_id is not None and part.status not in TERMINAL
        ]

    def _interrupted(self) -> None:
        running = self.running()
        if not running:
            return
        n = len(running)
        noun = "batch" if n == 1 else "batches"
        if not sys.stdin.isatty():
            self.console.print(
                f"[yellow]left {n} {noun} running[/yellow] (not a terminal, so not asking whether to cancel); "
                "run the same command again to pick up the results"
            )
            return
        from rich.prompt import Confirm

        try:
            cancel = Confirm.ask(f"Cancel the {n} running {noun}?", console=self.console, default=False)
        except EOFError:
            cancel = False
        if cancel:
            asyncio.run(self._cancel(running))
        else:
            self.console.print(f"left {n} {noun} running; run the same command again to pick up the results")

    async def _cancel(self, parts: list[Part]) -> None:
        import openai

        client, close = self._client()
        try:
            for part in parts:
                assert part.batch_id is not None
                try:
                    batch = await client.batches.cancel(part.batch_id)
                except openai.APIError as error:
                    self.console.print(f"[yellow]could not cancel {part.batch_id}:[/yellow] {_api_error(error)}")
                    continue
                self.journal.update_part(part.part, status=batch.status)
                self.console.print(f"batch {batch.id}: {batch.status}")
        finally:
            await close()

    # -- showing ------------------------------------------------------------------------------

    def _task(self, part: Part) -> TaskID:
        task = self._tasks.get(part.part)
        if task is None:
            task = self.progress.add_task(
                f"part {part.part}: {part.status or 'new'}", total=len(part.custom_ids), tokens=0, spend=Decimal(0)
            )
            self._tasks[part.part] = task
        return task

    def _show(self, part: Part, batch: Any) -> None:
        counts = batch.request_counts
        done = (counts.completed + counts.failed) if counts is not None else 0
        total = (counts.total if counts is not None and counts.total else None) or len(part.custom_ids)
        usage = getattr(batch, "usage", None)
        tokens = getattr(usage, "total_tokens", 0) or 0
        self.progress.update(
            self._task(part), description=f"part {part.part}: {batch.status}", completed=done, total=total,
            tokens=tokens,
        )  # fmt: skip

    def _say(self, part: Part, text: str) -> None:
        self.progress.console.print(f"part {part.part}: {text}")  # above the bar while it shows
