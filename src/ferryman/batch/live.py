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
from ferryman.batch.estimate import line_cost
from ferryman.batch.inputs import Line
from ferryman.batch.journal import Journal, Result
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline.account import parsed_reply
from ferryman.pipeline.chain import Pipeline
from ferryman.pricing import PriceTable

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
                finally:
                    self._held -= hold
                self.journal.record(result)
                self.tally.add(result)
                if self.on_result is not None:
                    self.on_result(result, self.tally)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(lines)) or 1)]
        try:
            await asyncio.gather(*workers)
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return self.tally

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
        started = time.perf_counter()
        try:
            reply = await self.pipeline(exchange)
            await reply.aread()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # no reply after the retries: the line failed, the job goes on
            reason = redact.secrets(f"no reply: {type(error).__name__}: {error}")
            return Result(line.custom_id, None, None, reason, max(exchange.attempts, 1))
        finally:
            exchange.notes["runner_ms"] = (time.perf_counter() - started) * 1000
        for callback in reply.on_close:
            callback()
        reply.on_close.clear()
        return result_of(line, exchange, reply)
