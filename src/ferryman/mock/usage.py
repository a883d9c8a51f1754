"""What the mock served, summed for OpenAI's organisation Usage and Costs API.

Why a ledger of its own: ``GET /v1/organization/usage/*`` and ``/v1/organization/costs``
(``resources/organization.py``) must answer from the traffic this mock really served, so a
reconciliation (tokens and dollars a gateway recorded against what "OpenAI" reports) can be
tested against a known truth. It is fed from one place only, :meth:`MockApp.account`, which
also charges the key's quota: every served call (front door, stream, batch line) counts once.

Memory is bounded: calls are summed per minute, kind, key id, model, batch flag and service tier
(a :class:`Cell`), and past :data:`MAX_CELLS` the oldest cells are dropped. Costs are the ones
the quota is charged (``ferryman.pricing``; batch lines at the batch price), split into the
input part (plain, cached and cache-write input) and the output part for ``line_item``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from ferryman import pricing
from ferryman.pricing import TokenCounts

MAX_CELLS = 200_000

# The route of a served call → the Usage API's kind (its endpoint's last path segment).
KIND_OF_PATH = {
    "/v1/chat/completions": "completions",
    "/v1/responses": "completions",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
    "/v1/moderations": "moderations",
}


@dataclass(frozen=True, order=True)
class CellKey:
    minute: int  # unix seconds, a multiple of 60
    kind: str  # completions, embeddings or moderations
    api_key_id: str  # the request log's ``key_…`` hash
    model: str
    batch: bool
    service_tier: str  # default, flex, priority (as the reply reports it)


@dataclass
class Cell:
    input_tokens: int = 0  # all input, cached and cache writes included
    input_cached_tokens: int = 0
    input_cache_write_tokens: int = 0
    output_tokens: int = 0
    num_model_requests: int = 0
    input_cost: Decimal = Decimal(0)
    output_cost: Decimal = Decimal(0)
    priced: bool = False  # the price table knew the model (moderations are free: never priced)

    def add(self, other: Cell) -> None:
        self.input_tokens += other.input_tokens
        self.input_cached_tokens += other.input_cached_tokens
        self.input_cache_write_tokens += other.input_cache_write_tokens
        self.output_tokens += other.output_tokens
        self.num_model_requests += other.num_model_requests
        self.input_cost += other.input_cost
        self.output_cost += other.output_cost
        self.priced = self.priced or other.priced


def reported_tier(asked: Any) -> str:
    """The ``service_tier`` a reply reports for the one asked: flex and priority as asked, else default."""
    if asked == "fast":
        return "priority"
    return asked if asked in ("flex", "priority") else "default"


def split_cost(model: str, counts: TokenCounts, total: Decimal | None, tier: str) -> tuple[Decimal, Decimal] | None:
    """``total`` as (input part, output part): input priced alone with the same table and tier."""
    if total is None:
        return None
    input_only = pricing.cost_usd(model, replace(counts, output=0, reasoning=0), tier=tier)
    input_part = min(input_only, total) if input_only is not None else Decimal(0)
    return input_part, total - input_part


class UsageLedger:
    """Per-minute sums of served calls. Used from the server's event loop only."""

    def __init__(self, max_cells: int = MAX_CELLS) -> None:
        self.max_cells = max_cells
        self._cells: dict[CellKey, Cell] = {}

    def __len__(self) -> int:
        return len(self._cells)

    def clear(self) -> None:
        self._cells.clear()

    def record(
        self,
        *,
        at: float,
        kind: str,
        api_key_id: str,
        model: str,
        batch: bool,
        service_tier: str,
        counts: TokenCounts,
        cost: tuple[Decimal, Decimal] | None,
    ) -> None:
        key = CellKey(int(at) // 60 * 60, kind, api_key_id, model, batch, service_tier)
        cell = self._cells.get(key)
        if cell is None:
            if len(self._cells) >= self.max_cells:
                del self._cells[next(iter(self._cells))]  # the first inserted: the oldest minute
            cell = self._cells[key] = Cell()
        cell.add(
            Cell(
                input_tokens=counts.input,
                input_cached_tokens=min(counts.cached_input, counts.input),
                input_cache_write_tokens=min(counts.cache_write, max(0, counts.input - counts.cached_input)),
                output_tokens=counts.output,
                num_model_requests=1,
                input_cost=cost[0] if cost else Decimal(0),
                output_cost=cost[1] if cost else Decimal(0),
                priced=cost is not None,
            )
        )

    def cells(self, start: int, end: int, kind: str | None = None) -> Iterator[tuple[CellKey, Cell]]:
        """The cells whose minute lies in ``[start, end)``, of one kind or all."""
        for key, cell in self._cells.items():
            if start <= key.minute < end and (kind is None or key.kind == kind):
                yield key, cell


__all__ = ["KIND_OF_PATH", "MAX_CELLS", "Cell", "CellKey", "UsageLedger", "reported_tier", "split_cost"]
