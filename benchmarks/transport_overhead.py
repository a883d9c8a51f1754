"""Client CPU per call: the plain ``openai`` SDK against the SDK through Ferryman's pipeline.

    python benchmarks/transport_overhead.py [--calls 2000] [--warmup 200] [--rounds 3] [--json]
                                            [--set audit.enabled=false ...]

The Ferryman mock runs in its own subprocess (``ferryman mock --rpm 1e9 --tpm 1e12``, so limits
never bite), so its CPU is not counted. In this process, one after the other, the same sequential
requests (gpt-4o-mini, one short user message, max_tokens=32) are sent by

- **plain**: ``openai.OpenAI(base_url=mock)``;
- **ferryman**: ``ferryman.OpenAI(ferryman={"settings": Settings(deployments=[mock], store=<a temp
  SQLite file>)})``, every stage at its defaults (audit on, Prometheus on, pacing and retry on);

non-streaming, and streaming (reading every chunk). CPU is ``time.process_time()`` of this process
(every thread: the SDK's, the pipeline's background loop, the store's pool), divided by the calls
made after the warm-up. Each configuration runs ``--rounds`` times, interleaved, and keeps its best
round (noise only ever adds CPU).

``--set KEY=VALUE`` (repeatable; dotted keys of ``ferryman.config.Settings``, JSON values) changes
the ferryman client's settings, e.g. ``--set audit.enabled=false`` or ``--set pacing.enabled=false``
to see what one stage costs.

``--stages`` adds one more run of the ferryman client (sync, plain calls) with each stage timed by
its thread's CPU clock, its own work only (what it does before and after the stages inside it),
and the upstream call likewise: what each part costs inside real calls, which is more than the
same code costs in a tight loop of its own (``pipeline_stages.py``). The timers add ~1 µs a stage.

Goal: ferryman's CPU per call <= 1.15 x the plain SDK's. The benchmark reports; it exits non-zero
only when the mock fails to start.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HOST, ServerProcess, free_port, table

GOAL = 1.15
KEY = "sk-ferryman-bench-0123456789"
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]


def mock_server(port: int) -> ServerProcess:
    argv = [sys.executable, "-m", "ferryman.cli", "mock", "--host", HOST, "--port", str(port),
            "--rpm", str(10**9), "--tpm", str(10**12)]  # fmt: skip
    return ServerProcess("ferryman mock", argv, port)


def plain_client(base_url: str, kind: str = "sync") -> Any:
    import openai

    make = openai.AsyncOpenAI if kind == "async" else openai.OpenAI
    return make(base_url=base_url, api_key=KEY, max_retries=0)


def overrides(pairs: list[str]) -> dict[str, Any]:
    """``["audit.enabled=false", "retry.max_attempts=1"]`` → ``{"audit": {"enabled": False}, ...}``."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, not {pair!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, leaf = key.split(".")
        node = tree
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def ferryman_client(base_url: str, folder: Path, extra: dict[str, Any] | None = None, kind: str = "sync") -> Any:
    import ferryman
    from ferryman.config import Settings

    os.environ["FERRYMAN_BENCH_UPSTREAM_KEY"] = KEY
    os.environ["FERRYMAN_DATA_DIR"] = str(folder / "data")
    settings = Settings(
        **{
            "deployments": [{"name": "mock", "base_url": base_url, "api_keys": ["env:FERRYMAN_BENCH_UPSTREAM_KEY"]}],
            "store": {"url": f"sqlite:///{folder / 'bench.db'}"},
            **(extra or {}),
        }
    )
    make = ferryman.AsyncOpenAI if kind == "async" else ferryman.OpenAI
    return make(ferryman={"settings": settings}, api_key="ferryman-managed")


def call(client: Any, stream: bool) -> None:
    if stream:
        chunks = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=32, stream=True)
        if sum(1 for _ in chunks) == 0:  # read to the end, as an application does
            raise RuntimeError("an empty stream")
    else:
        reply = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=32)
        if not reply.choices:
            raise RuntimeError("a reply without choices")


async def acall(client: Any, stream: bool) -> None:
    if stream:
        chunks = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, max_tokens=32, stream=True
        )
        if sum([1 async for _ in chunks]) == 0:
            raise RuntimeError("an empty stream")
    else:
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=32)
        if not reply.choices:
            raise RuntimeError("a reply without choices")


def measure(
    client: Any, stream: bool, calls: int, warmup: int, runner: asyncio.Runner | None = None
) -> dict[str, float]:
    """CPU and wall time per call; an async client's calls run one after another on ``runner``."""
    if runner is not None:

        async def calls_of(n: int) -> None:
            for _ in range(n):
                await acall(client, stream)

        def send(n: int) -> None:
            runner.run(calls_of(n))
    else:

        def send(n: int) -> None:
            for _ in range(n):
                call(client, stream)

    send(warmup)
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    send(calls)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {"cpu_us": 1e6 * cpu / calls, "wall_us": 1e6 * wall / calls}


class _Timed:
    """A stage (or the terminal) whose own thread CPU time is added up under its name."""

    def __init__(self, inner: Any, name: str, totals: dict[str, int]) -> None:
        self.inner, self.name, self.totals = inner, name, totals

    async def handle(self, exchange: Any, call_next: Any) -> Any:
        inside = 0

        async def timed_next(ex: Any) -> Any:
            nonlocal inside
            started = time.thread_time_ns()
            try:
                return await call_next(ex)
            finally:
                inside += time.thread_time_ns() - started

        started = time.thread_time_ns()
        try:
            return await self.inner.handle(exchange, timed_next)
        finally:
            self.totals[self.name] = self.totals.get(self.name, 0) + time.thread_time_ns() - started - inside

    async def __call__(self, exchange: Any) -> Any:  # as the terminal
        started = time.thread_time_ns()
        try:
            return await self.inner(exchange)
        finally:
            self.totals[self.name] = self.totals.get(self.name, 0) + time.thread_time_ns() - started


def stage_costs(base_url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """CPU µs per call of each stage and of the upstream call, inside real sync calls."""
    from ferryman.pipeline.chain import Pipeline

    client = ferryman_client(base_url, _folder(folder / "stages"), overrides(args.set))
    transport = client._client._transport
    pipeline = transport.pipeline
    totals: dict[str, int] = {}
    stages = [_Timed(stage, type(stage).__name__.lower(), totals) for stage in pipeline.stages]
    transport.pipeline = Pipeline(stages, _Timed(pipeline.terminal, "upstream", totals))
    try:
        measure(client, False, max(args.warmup, 1), 0)  # the warm-up, not counted
        totals.clear()
        whole = measure(client, False, args.calls, 0)
    finally:
        client.close()
    parts = {name: round(total / 1000 / args.calls, 1) for name, total in totals.items()}
    return {"cpu_us": round(whole["cpu_us"], 1), "parts_us": parts}


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def best(rounds: list[dict[str, float]]) -> dict[str, float]:
    return min(rounds, key=lambda r: r["cpu_us"])


def run(base_url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every (api, client, plain/stream) configuration, rounds interleaved."""
    results: dict[str, list[dict[str, float]]] = {}
    for api in args.api:
        runner = asyncio.Runner() if api == "async" else None  # the default asyncio loop, as an app has
        made = {
            "plain": plain_client(base_url, api),
            "ferryman": ferryman_client(base_url, _folder(folder / api), overrides(args.set), api),
        }
        try:
            for stream in (False, True):
                for i in range(args.rounds):
                    order = list(made) if i % 2 == 0 else list(reversed(made))
                    for name in order:
                        label = f"{api} {name} ({'stream' if stream else 'plain'})"
                        result = measure(made[name], stream, args.calls, args.warmup, runner)
                        results.setdefault(label, []).append(result)
        finally:
            for client in made.values():
                if runner is not None:
                    runner.run(client.close())
                else:
                    client.close()
            if runner is not None:
                runner.close()
    return {label: {"best": best(rounds), "rounds": rounds} for label, rounds in results.items()}


def report(results: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ratios = {}
    for api in args.api:
        for kind in ("plain", "stream"):
            plain, through = results[f"{api} plain ({kind})"]["best"], results[f"{api} ferryman ({kind})"]["best"]
            ratios[f"{api} {kind}"] = round(through["cpu_us"] / plain["cpu_us"], 3)
    return {
        "config": {
            "calls": args.calls,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "goal": GOAL,
            "set": args.set,
            "api": args.api,
        },
        "results": results,
        "ratios": ratios,
        "goal_met": {kind: ratio <= GOAL for kind, ratio in ratios.items()},
    }


def print_stages(stages: dict[str, Any]) -> None:
    print()
    print(f"Inside real sync calls ({stages['cpu_us']:.0f} µs/call in all), each part's own thread CPU per call:")
    for name, cost in stages["parts_us"].items():
        print(f"  {name:10s} {cost:7.1f} µs")
    print(f"  {'together':10s} {sum(stages['parts_us'].values()):7.1f} µs")


def print_text(data: dict[str, Any]) -> None:
    rows = []
    for label, result in data["results"].items():
        b = result["best"]
        rows.append([label, round(b["cpu_us"], 1), round(b["wall_us"], 1),
                     " ".join(str(round(r["cpu_us"])) for r in result["rounds"])])  # fmt: skip
    print(table(rows, ["client", "CPU µs/call", "wall µs/call", "CPU µs/call per round"]))
    print()
    for kind, ratio in data["ratios"].items():
        verdict = "GOAL MET" if data["goal_met"][kind] else "GOAL MISSED"
        print(f"{kind:12s} ferryman / plain SDK CPU per call: {ratio:.3f}x (goal <= {GOAL}x) -> {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000, help="measured calls per round (default 2000)")
    parser.add_argument("--warmup", type=int, default=200, help="calls before each measured round (default 200)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration; the best counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--api",
        action="append",
        choices=["sync", "async"],
        help="the SDK's sync client (openai.OpenAI), its async one (openai.AsyncOpenAI), or both (the default)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a ferryman setting, e.g. audit.enabled=false"
    )
    parser.add_argument("--stages", action="store_true", help="also time each stage's own CPU inside real sync calls")
    args = parser.parse_args()
    args.api = args.api or ["sync", "async"]
    try:
        mock = mock_server(free_port()).start()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    stages: dict[str, Any] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="ferryman-bench-") as folder:
            results = run(mock.url + "/v1", args, Path(folder))
            stages = stage_costs(mock.url + "/v1", args, Path(folder)) if args.stages else None
    finally:
        mock.stop()
    data = report(results, args)
    if stages is not None:
        data["stages"] = stages
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print_text(data)
        if stages is not None:
            print_stages(stages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
