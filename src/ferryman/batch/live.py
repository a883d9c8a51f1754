"""The live runner: every pending line through the pipeline, as fast as the rate limits allow.

Up to ``concurrency`` lines are in flight; the pipeline's pacing stage holds each one until its
(deployment, model) lane has room, learning the limits from the upstream's ``x-ratelimit-*``
headers, so the job runs at the limit's edge without 429 storms; the retry stage retries 429s,
5xx and broken connections. Each line's result is committed to the journal the moment it
arrives (see :mod:`ferryman.batch.journal`), so a kill loses at most the lines in flight.

``max_cost``: before a line goes out its worst-case cost (exact prompt tokens plus its output
cap, priced) is held against the cap together with what was spent and what the lines in flight
hold; the first line that would pass the cap stops the run cleanly (the lines in flight finish,
the rest stay pending for a later run with a higher cap).

A full disk stops the run the same way (:mod:`ferryman.batch.disk`): once a result needed the
journal's reserve, or could not be recorded at all, or the pipeline's own database could not be
written, no new line goes out; the lines in flight finish and are recorded if there is room, and
:attr:`Tally.disk_full` says what filled. A line the pipeline refused for a full disk stays
pending (it is not a failed line: nothing is wrong with it), to be sent by the next run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson

from ferryman import redact
from ferryman.batch.disk import DiskFull
from ferryman.batch.estimate import line_cost
from ferryman.batch.inputs import Line
from ferryman.batch.journal import Journal, Result
from ferryman.exchange import SOURCE_RUN, Exchange, Reply
from ferryman.pipeline.account import parsed_reply
from ferryman.pipeline.chain import Pipeline
from ferryman.pricing import PriceTable
from ferryman.store.faults import disk_full

HEADERS = {"content-type": "application/json", "accept": "application/json"}


@dataclass
class Tally:
    """What the run has done so far (for the progress bar and the summary)."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    stopped_by_cost: bool = False
    disk_full: DiskFull | None = None  # the first full-disk failure, which stopped the run
    unrecorded: int = 0  # replies that came back but found no room in the journal

    def add(self, result: Result) -> None:
        if result.ok:
            self.done += 1
        else:
            self.failed += 1
        if result.attempts > 1:
            self.retried += 1
        self.input_tokens += result.input_tokens
        self.output_tokens += result.output_tokens
        self.cost_usd += result.cost_usd


def usage_counts(usage: Any) -> tuple[int, int]:
    """(input, output) tokens of a chat, responses or embeddings ``usage``."""
    if not isinstance(usage, dict):
        return 0, 0
    prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    output = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (prompt if isinstance(prompt, int) else 0), (output if isinstance(output, int) else 0)


def error_of(status: int, body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = error.get("code") or error.get("type") or "error"
        return f"HTTP {status} {code}: {error.get('message', '')}".strip()
    return f"HTTP {status}"


def result_of(line: Line, exchange: Exchange, reply: Reply) -> Result:
    seen, body = parsed_reply(exchange, reply.body)  # the account stage parsed it already, usually
    if not seen:
        try:
            body = orjson.loads(reply.body) if reply.body else None
        except orjson.JSONDecodeError:
            body = {"raw": reply.body.decode("utf-8", errors="replace")[:2000]}
    usage = exchange.usage
    if usage is None and isinstance(body, dict):
        usage = body.get("usage")
    input_tokens, output_tokens = usage_counts(usage)
    return Result(
        line.custom_id,
        reply.status,
        body,
        None if reply.status < 400 else error_of(reply.status, body),
        max(exchange.attempts, 1),
        input_tokens,
        output_tokens,
        exchange.cost_usd if exchange.cost_usd is not None else Decimal(0),
        "live",
    )


class LiveRunner:
    def __init__(
        self,
        pipeline: Pipeline,
        journal: Journal,
        prices: PriceTable,
        concurrency: int = 64,
        max_cost: Decimal | None = None,
        on_result: Callable[[Result, Tally], None] | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.journal = journal
        self.prices = prices
        self.concurrency = max(1, concurrency)
        self.max_cost = max_cost
        self.on_result = on_result
        self.tally = Tally()
        self._held = Decimal(0)
        self._spent_before = Decimal(0)

    async def run(self, lines: list[Line], spent_before: Decimal = Decimal(0)) -> Tally:
        """Send ``lines`` (the pending ones, in input order); returns what was done."""
        self._spent_before = spent_before
        queue: asyncio.Queue[Line] = asyncio.Queue()
        for line in lines:
            queue.put_nowait(line)
        stop = asyncio.Event()

        async def worker() -> None:
            while not stop.is_set():
                try:
                    line = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                hold = self._hold(line)
                if hold is None:
                    self.tally.stopped_by_cost = True
                    stop.set()
                    return
                try:
                    result = await self._send(line)
                except DiskFull as error:  # the pipeline's own store: the line stays pending
                    self._stop_for(error, stop)
                    return
                finally:
                    self._held -= hold
                try:
                    self.journal.record(result)
                except DiskFull as error:  # no room even after the reserve: sent again next run
                    self.tally.unrecorded += 1
                    self._stop_for(error, stop)
                    return
                self.tally.add(result)
                if self.on_result is not None:
                    self.on_result(result, self.tally)
                if self.journal.full is not None:  # recorded in the reserve's room: take no new line
                    self._stop_for(self.journal.full, stop)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(lines)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return self.tally

    def _stop_for(self, error: DiskFull, stop: asyncio.Event) -> None:
        if self.tally.disk_full is None:
            self.tally.disk_full = error
        stop.set()

    def _hold(self, line: Line) -> Decimal | None:
        """The line's worst case, held against ``max_cost``; None if it would pass the cap."""
        if self.max_cost is None:
            return Decimal(0)
        worst = line_cost(line, self.prices) or Decimal(0)
        if self._spent_before + self.tally.cost_usd + self._held + worst > self.max_cost:
            return None
        self._held += worst
        return worst

    async def _send(self, line: Line) -> Result:
        exchange = Exchange.build("POST", line.path, dict(HEADERS), orjson.dumps(line.body))
        exchange.source = SOURCE_RUN
        started = time.perf_counter()
        try:
            reply = await self.pipeline(exchange)
            await reply.aread()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # no reply after the retries: the line failed, the job goes on
            if disk_full(error):  # the pipeline could not write its own store: not the line's fault
                store = getattr(self.pipeline, "store", None)
                raise store_full(getattr(getattr(store, "engine", None), "url", None), error) from error
            reason = redact.secrets(f"no reply: {type(error).__name__}: {error}")
            return Result(line.custom_id, None, None, reason, max(exchange.attempts, 1))
        finally:
            exchange.notes["runner_ms"] = (time.perf_counter() - started) * 1000
        for callback in reply.on_close:
            callback()
        reply.on_close.clear()
        return result_of(line, exchange, reply)


def store_full(url: Any, error: BaseException) -> DiskFull:
    """The pipeline's own database (at ``url``) did not fit on the disk: named by its file if it is
    SQLite, else by what the error names."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(str(url)) if url else None
    except Exception:  # not a URL SQLAlchemy reads: the error names what it can
        parsed = None
    if parsed is None or not parsed.drivername.startswith("sqlite") or not parsed.database:
        return DiskFull.of(error)
    return DiskFull(parsed.database, "the pipeline's database", error)
