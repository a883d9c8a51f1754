"""What a job will cost, before it runs (``ferryman run --dry-run``).

Exact prompt tokens per line (the real tokenizer), the worst-case output (each line's own cap:
``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, else the model's maximum
output from the price table), and the cost of both live and through the Batch API (its 50 %
tier), per model and in total. The worst case is an upper bound: replies usually stop sooner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from ferryman.batch.inputs import BadLine, Line
from ferryman.pricing import PriceTable
from ferryman.tokens import count_request_prompt_tokens, max_output_tokens


@dataclass
class ModelEstimate:
    lines: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    live_usd: Decimal = Decimal(0)
    batch_usd: Decimal = Decimal(0)
    unpriced: int = 0  # lines whose model has no price


@dataclass
class Estimate:
    lines: int = 0
    bad_lines: int = 0
    models: dict[str, ModelEstimate] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.models.values())

    @property
    def output_tokens(self) -> int:
        return sum(m.output_tokens for m in self.models.values())

    @property
    def live_usd(self) -> Decimal:
        return sum((m.live_usd for m in self.models.values()), Decimal(0))

    @property
    def batch_usd(self) -> Decimal:
        return sum((m.batch_usd for m in self.models.values()), Decimal(0))


def worst_case(line: Line, prices: PriceTable) -> tuple[int, int]:
    """(exact prompt tokens, most output tokens) of one line."""
    prompt = count_request_prompt_tokens(line.url, line.body)
    output = max_output_tokens(line.url, line.body, prices.max_output_tokens(line.body["model"])) or 0
    return prompt, output


FREE_ENDPOINTS = ("/v1/moderations",)  # OpenAI does not charge for moderations


def line_cost(line: Line, prices: PriceTable, tier: str = "") -> Decimal | None:
    if line.url in FREE_ENDPOINTS:
        return Decimal(0)
    prompt, output = worst_case(line, prices)
    return prices.cost_usd(line.body["model"], {"prompt_tokens": prompt, "completion_tokens": output}, tier=tier)


def estimate(items: Iterable[Line | BadLine], prices: PriceTable) -> Estimate:
    result = Estimate()
    for item in items:
        if isinstance(item, BadLine):
            result.bad_lines += 1
            continue
        result.lines += 1
        model = item.body["model"]
        entry = result.models.setdefault(model, ModelEstimate())
        prompt, output = worst_case(item, prices)
        entry.lines += 1
        entry.prompt_tokens += prompt
        entry.output_tokens += output
        usage = {"prompt_tokens": prompt, "completion_tokens": output}
        free = item.url in FREE_ENDPOINTS
        live = Decimal(0) if free else prices.cost_usd(model, usage)
        batch = Decimal(0) if free else prices.cost_usd(model, usage, tier="batches")
        if live is None or batch is None:
            entry.unpriced += 1
            continue
        entry.live_usd += live
        entry.batch_usd += batch
    return result
