"""What each pipeline stage costs, and what the sync SDK's hand-off to the pipeline costs.

    python benchmarks/pipeline_stages.py [--calls 3000] [--rounds 3] [--json]

No network and no upstream: the terminal handler returns a canned chat completion (with OpenAI's
headers and usage), so what is measured is Ferryman's own work, free of socket and server noise.

1. **Stages.** The pipeline of the default settings (audit to a temporary SQLite file,
   Prometheus, account, route, retry, pacing) is driven on one uvloop loop, one call after the
   other. Stages are added from the innermost outwards (terminal; + pacing; + retry; ...), so
   each row's increase is what that stage adds. CPU is ``time.process_time()`` (all threads).
2. **Hand-off.** The sync ``openai.OpenAI`` calls a canned ``httpx2`` transport (the SDK's own
   work: the baseline), then ``ferryman.transport.FerrymanTransport`` around an empty pipeline
   with the same canned reply: the difference is the trip to the background loop and back.

Ratios are against the baselines measured in the same run. The benchmark reports; it exits
non-zero only when something cannot start.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson

from ferryman.config import Settings
from ferryman.exchange import Exchange, Reply
from ferryman.pipeline import build
from ferryman.pipeline.chain import Pipeline
from ferryman.transport import FerrymanTransport

BENCH_KEY = "env:FERRYMAN_BENCH_UPSTREAM_KEY"
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
REQUEST = orjson.dumps({"messages": MESSAGES, "model": "gpt-4o-mini", "max_tokens": 32})
REQUEST_HEADERS = {
    "content-type": "application/json",
    "authorization": "Bearer ferryman-managed",
    "accept": "application/json",
    "user-agent": "OpenAI/Python",
    "x-stainless-lang": "python",
}
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1764000000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there, nice to meet you.", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 14,
            "completion_tokens": 8,
            "total_tokens": 22,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_bench",
    }
)
REPLY_HEADERS = {
    "content-type": "application/json",
    "x-request-id": "req_bench",
    "openai-processing-ms": "12",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "1000000",
    "x-ratelimit-remaining-tokens": "999000",
    "x-ratelimit-reset-tokens": "1s",
}


async def canned(_exchange: Exchange) -> Reply:
    return Reply(200, dict(REPLY_HEADERS), REPLY)


def best_of(rounds: int, run: Callable[[], float]) -> float:
    return min(run() for _ in range(rounds))


def cpu_per_call(calls: int, send: Callable[[int], None]) -> float:
    send(calls // 10)  # warm-up
    gc.collect()
    started = time.process_time()
    send(calls)
    return 1e6 * (time.process_time() - started) / calls


def stage_costs(settings: Settings, calls: int, rounds: int) -> list[dict[str, Any]]:
    """CPU per call of the terminal alone, then with the stages added from the innermost out."""
    import uvloop

    rows: list[dict[str, Any]] = []
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        stages = build(settings).stages
        for k in range(len(stages) + 1):
            pipeline = Pipeline(stages[len(stages) - k :], canned)

            def send(n: int, pipeline: Pipeline = pipeline) -> None:
                loop.run_until_complete(_calls(pipeline, n))

            cost = best_of(rounds, lambda send=send: cpu_per_call(calls, send))  # type: ignore[misc]
            rows.append({"stages": [type(s).__name__.lower() for s in pipeline.stages], "cpu_us": round(cost, 1)})
    finally:
        loop.close()
    return rows


async def _calls(pipeline: Pipeline, n: int) -> None:
    for _ in range(n):
        await pipeline(Exchange.build("POST", "/chat/completions", REQUEST_HEADERS, REQUEST))


class CannedTransport(httpx2.BaseTransport):
    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        request.read()
        return httpx2.Response(200, headers=REPLY_HEADERS, content=REPLY, request=request)


def handoff_costs(calls: int, rounds: int) -> dict[str, float]:
    def sdk_with(transport: httpx2.BaseTransport) -> Callable[[int], None]:
        client = openai.OpenAI(
            api_key="sk-bench-placeholder",
            base_url="http://canned.invalid/v1",
            max_retries=0,
            http_client=httpx2.Client(transport=transport),
        )

        def send(n: int) -> None:
            for _ in range(n):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=32)  # type: ignore[arg-type]

        return send

    direct = sdk_with(CannedTransport())
    handed = sdk_with(FerrymanTransport(Pipeline([], canned)))
    sdk = best_of(rounds, lambda: cpu_per_call(calls, direct))
    through = best_of(rounds, lambda: cpu_per_call(calls, handed))
    return {"sdk_us": round(sdk, 1), "through_empty_pipeline_us": round(through, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per measurement (default 3000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement; the best counts (default 3)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ferryman-bench-") as folder:
        os.environ["FERRYMAN_DATA_DIR"] = str(Path(folder) / "data")
        os.environ["FERRYMAN_BENCH_UPSTREAM_KEY"] = "sk-ferryman-bench-0123456789"
        settings = Settings(
            deployments=[
                {
                    "name": "canned",
                    "base_url": "http://canned.invalid/v1",
                    "api_keys": ["env:FERRYMAN_BENCH_UPSTREAM_KEY"],
                }
            ],
            store={"url": f"sqlite:///{Path(folder) / 'bench.db'}"},
        )
        stages = stage_costs(settings, args.calls, args.rounds)
    handoff = handoff_costs(args.calls, args.rounds)
    sdk, through = handoff["sdk_us"], handoff["through_empty_pipeline_us"]
    data = {"stages": stages, "handoff": handoff}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print("Pipeline stages against a canned reply (one loop, sequential calls); each row adds one stage.")
    print("The last column is the pipeline's CPU as a share of the sync SDK's own CPU per call (same run).")
    previous = stages[0]["cpu_us"]
    for row in stages:
        label = " + ".join(row["stages"]) or "terminal only"
        added = row["cpu_us"] - previous
        print(f"  {row['cpu_us']:7.1f} µs/call  (+{added:6.1f})  {row['cpu_us'] / sdk:6.3f}  {label}")
        previous = row["cpu_us"]
    print()
    print("Sync SDK hand-off to the pipeline's loop (canned replies, no stages):")
    print(f"  SDK alone {sdk:.1f} µs/call; through FerrymanTransport {through:.1f} µs/call")
    print(f"  hand-off {through - sdk:.1f} µs/call; ratio {through / sdk:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
