"""Pacing: sustained throughput against the mock's rate limits, and the 429s callers see.

    python benchmarks/pacing.py [--rpm 1200] [--seconds 10] [--warmup S] [--concurrency 64]
                                [--mode rpm|tpm|both] [--seeded] [--json] [--no-uvloop]

The mock runs in its own subprocess (``ferryman mock``). For each scenario the same chat request
is sent two ways, each from a fresh limit bucket, by ``--concurrency`` closed-loop workers
through a warm-up and then a measured window of ``--seconds``:

- **greedy** (the baseline): straight to the mock, no Ferryman, resending at once on a 429. It
  keeps the mock's bucket empty, so its successes per second in the window *are* the limit the
  mock enforces, measured in this run;
- **ferryman**: the official async SDK through Ferryman's pipeline (pacing on, retries off, so
  every 429 the mock sent would reach a caller), limits learned from the headers (``--seeded``:
  from ``DeploymentSettings.rpm`` / ``.tpm``).

Scenarios: ``rpm`` (the mock's RPM binds) and ``tpm`` (its TPM binds, set so the same request
rate is allowed: the request costs its prompt tokens plus ``max_tokens=200``).

The mock's bucket holds a minute of capacity (burst = RPM): the warm-up spends it (by default it
lasts until a minute's worth of calls succeeded, plus one second), and the window after it
measures the sustained rate. Printed per run: successes per second in the window, as a
fraction of the nominal limit (RPM / 60) and of the greedy baseline, the 429s the callers got,
and (ferryman) the 429s the mock sent. Goal: ferryman ≥ 0.95 of the limit with 0 429s to callers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
import openai
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HOST, ServerProcess, free_port, make_client, run, table

from ferryman.config import Settings
from ferryman.pipeline import build
from ferryman.tokens import count_request_prompt_tokens
from ferryman.transport import AsyncFerrymanTransport

GOAL = 0.95
MAX_WARMUP_S = 300.0
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
KEY_ENV = "FERRYMAN_BENCH_UPSTREAM_KEY"


@dataclass
class Result:
    scenario: str
    run: str
    window_successes: int
    rps: float
    limit_rps: float
    of_limit: float
    of_greedy: float | None
    calls: int
    caller_429s: int
    mock_429s: int | None
    other_errors: int
    warmup_s: float
    burst_spent: bool  # the warm-up saw at least the burst succeed


def mock_server(port: int) -> ServerProcess:
    argv = [sys.executable, "-m", "ferryman.cli", "mock", "--host", HOST, "--port", str(port)]
    return ServerProcess("ferryman mock", argv, port)


def request_body(max_tokens: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": max_tokens}


def limits_for(scenario: str, rpm: int) -> tuple[int, int, int]:
    """(mock rpm, mock tpm, max_tokens) so that ``rpm`` requests a minute is the binding limit."""
    if scenario == "rpm":
        return rpm, 10**12, 16
    cost = count_request_prompt_tokens("/chat/completions", request_body(200)) + 200
    return 10**9, cost * rpm, 200


class Control:
    def __init__(self, url: str) -> None:
        self.http = httpx2.Client(base_url=url + "/_ferryman", timeout=60)

    def fresh(self, rpm: int, tpm: int) -> None:
        """New limits (which also empties the buckets) and an empty request log."""
        self.http.patch("/settings", json={"rpm": rpm, "tpm": tpm}).raise_for_status()
        self.http.delete("/requests").raise_for_status()

    def statuses(self) -> list[Any]:
        data = self.http.get("/requests").raise_for_status().json()["data"]
        return [entry["status"] for entry in data]


def drained(successes: list[float], rpm: int) -> bool:
    """The burst is spent: a minute's worth succeeded, and the last second ran at about the limit."""
    if len(successes) < rpm:
        return False
    now = time.perf_counter()
    return sum(1 for t in successes[-(rpm // 30 + 10) :] if t > now - 1.0) <= 1.1 * rpm / 60 + 1


async def closed_loop(call: Any, args: argparse.Namespace) -> tuple[list[float], list[int], float]:
    """Workers calling ``call()`` (→ HTTP status) through the warm-up and the window; the success
    times (relative to the window's start), every status, and how long the warm-up took."""
    successes: list[float] = []
    statuses: list[int] = []

    async def worker() -> None:
        while True:
            status = await call()
            statuses.append(status)
            if status == 200:
                successes.append(time.perf_counter())

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(args.concurrency)]
    if args.warmup is not None:
        await asyncio.sleep(args.warmup)
    else:  # until the burst is spent, then one second more
        while time.perf_counter() - started < MAX_WARMUP_S and not drained(successes, args.rpm):
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
    window = time.perf_counter()
    await asyncio.sleep(args.seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return [t - window for t in successes], statuses, window - started


async def greedy(url: str, body: bytes, args: argparse.Namespace) -> tuple[list[float], list[int], float]:
    headers = {"authorization": "Bearer sk-bench-greedy", "content-type": "application/json"}
    async with make_client(args.concurrency) as client:

        async def call() -> int:
            return (await client.post(url + "/v1/chat/completions", content=body, headers=headers)).status_code

        return await closed_loop(call, args)


async def through_ferryman(
    url: str, request: dict[str, Any], seeds: dict[str, int], args: argparse.Namespace, data_dir: str
) -> tuple[list[float], list[int], float]:
    settings = Settings(
        deployments=[{"name": "mock", "base_url": url + "/v1", "api_keys": [f"env:{KEY_ENV}"], **seeds}],
        store={"url": f"sqlite:///{data_dir}/ferryman-{time.monotonic_ns()}.db"},
        retry={"max_attempts": 1},
        pacing={"max_wait_s": 600},
    )
    pipeline = build(settings)
    limits = httpx2.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    http = httpx2.AsyncClient(transport=AsyncFerrymanTransport(pipeline), limits=limits, timeout=600)
    client = openai.AsyncOpenAI(
        base_url="http://ferryman.invalid/v1", api_key="sk-caller", max_retries=0, http_client=http
    )

    async def call() -> int:
        try:
            raw = await client.chat.completions.with_raw_response.create(**request)
            return raw.http_response.status_code
        except openai.APIStatusError as error:
            return error.status_code
        except openai.APIConnectionError:
            return 0

    try:
        return await closed_loop(call, args)
    finally:
        await client.close()
        pipeline.store.close()  # type: ignore[attr-defined]


def summarise(scenario: str, name: str, run: tuple[list[float], list[int], float], args: argparse.Namespace) -> Result:
    times, statuses, warmup = run
    rpm = args.rpm
    in_window = sum(1 for t in times if 0 <= t < args.seconds)
    rps = in_window / args.seconds
    limit_rps = rpm / 60
    return Result(
        scenario=scenario,
        run=name,
        window_successes=in_window,
        rps=round(rps, 2),
        limit_rps=round(limit_rps, 2),
        of_limit=round(rps / limit_rps, 3),
        of_greedy=None,
        calls=len(statuses),
        caller_429s=statuses.count(429),
        mock_429s=None,
        other_errors=sum(1 for s in statuses if s not in (200, 429)),
        warmup_s=round(warmup, 1),
        burst_spent=sum(1 for t in times if t < 0) >= rpm,
    )


async def scenario(
    name: str, mock: ServerProcess, control: Control, args: argparse.Namespace, data_dir: str
) -> list[Result]:
    mock_rpm, mock_tpm, max_tokens = limits_for(name, args.rpm)
    request = request_body(max_tokens)
    log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr, flush=True))

    log(f"  {name}: greedy baseline ...")
    control.fresh(mock_rpm, mock_tpm)
    baseline = summarise(name, "greedy (no Ferryman)", await greedy(mock.url, orjson.dumps(request), args), args)

    log(f"  {name}: through Ferryman ...")
    control.fresh(mock_rpm, mock_tpm)
    seeds = {"rpm": mock_rpm, "tpm": mock_tpm} if args.seeded else {}
    label = "ferryman" + (" (seeded)" if args.seeded else " (learned)")
    paced = summarise(name, label, await through_ferryman(mock.url, request, seeds, args, data_dir), args)
    paced.mock_429s = control.statuses().count(429)
    if baseline.rps:
        paced.of_greedy = round(paced.rps / baseline.rps, 3)
        baseline.of_greedy = 1.0
    return [baseline, paced]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpm", type=int, default=1200, help="the binding limit, in requests a minute")
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before the window (default: until the burst is spent, +1 s)"
    )
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--mode", choices=["rpm", "tpm", "both"], default="both")
    parser.add_argument("--seeded", action="store_true", help="seed rpm/tpm in the deployment settings")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault(KEY_ENV, "sk-ferryman-bench-upstream")
    scenarios = ["rpm", "tpm"] if args.mode == "both" else [args.mode]

    async def measure(mock: ServerProcess, data_dir: str) -> list[Result]:
        control = Control(mock.url)
        results: list[Result] = []
        for name in scenarios:
            results += await scenario(name, mock, control, args, data_dir)
        return results

    with tempfile.TemporaryDirectory() as data_dir, mock_server(free_port()) as mock:
        os.environ["FERRYMAN_DATA_DIR"] = data_dir
        results, loop_name = run(measure(mock, data_dir), use_uvloop=not args.no_uvloop)

    paced = [r for r in results if r.run.startswith("ferryman")]
    met = all(r.of_limit >= GOAL and r.caller_429s == 0 for r in paced)
    if args.json:
        config = {**vars(args), "loop": loop_name}
        print(json.dumps({"config": config, "results": [asdict(r) for r in results], "goal_met": met}, indent=2))
        return
    warmup = "until the burst is spent, +1 s" if args.warmup is None else f"{args.warmup:g} s"
    print(f"\nrpm={args.rpm} (limit {args.rpm / 60:.2f} req/s), window {args.seconds:g} s after a warm-up "
          f"({warmup}), concurrency {args.concurrency}, {loop_name}\n")  # fmt: skip
    headers = ["scenario", "run", "warm-up s", "req/s", "of limit", "of greedy", "calls", "429s to callers",
               "429s sent by mock", "other errors"]  # fmt: skip
    rows = [[r.scenario, r.run, r.warmup_s, r.rps, r.of_limit, r.of_greedy, r.calls, r.caller_429s, r.mock_429s,
             r.other_errors] for r in results]  # fmt: skip
    print(table(rows, headers))
    if not all(r.burst_spent for r in results):
        print("\nWARNING: a warm-up ended before the burst was spent; its window overstates the sustained rate "
              "(raise --warmup, or leave it on auto; more --concurrency if auto hit its cap)")  # fmt: skip
    print()
    for r in paced:
        print(f"{r.scenario}: ferryman sustained {r.of_limit:.3f} of the limit ({r.of_greedy} of the greedy "
              f"baseline), {r.caller_429s} 429s to callers, {r.mock_429s} sent by the mock")  # fmt: skip
    print(f"\nGOAL {'MET' if met else 'MISSED'}: ferryman >= {GOAL} of the limit with 0 429s to callers")


if __name__ == "__main__":
    main()
