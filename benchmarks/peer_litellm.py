"""Ferryman's gateway beside LiteLLM's proxy, in front of the same upstream, in one run.

    python benchmarks/peer_litellm.py [--litellm-python PATH] [--requests 500] [--duration 4] [--warmup 1]
                                      [--concurrency 64] [--quick] [--json]

LiteLLM is optional: ``pip install -e '.[peer]'`` installs ``litellm[proxy]`` into the project's
venv. It pins older versions of some of Ferryman's dependencies, so it is better kept in a venv
of its own and pointed at with ``--litellm-python`` (or ``LITELLM_PYTHON``)::

    python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
    python benchmarks/peer_litellm.py --litellm-python /tmp/litellm-venv/bin/python

Without LiteLLM the script says how to install it and exits 0.

Four processes on loopback: the fast upstream of ``gateway_overhead.py`` (``_common.openai_app``),
Ferryman's gateway on it (``ferryman serve``, one worker, the full pipeline, a key with a budget
and RPM/TPM limits), LiteLLM's proxy on it (``litellm --config cfg.yaml --num_workers 1``: one
model ``gpt-4o-mini`` → ``openai/gpt-4o-mini`` at the upstream's ``api_base``, a master key, no
database, so no virtual keys, budgets or spend logs: less work than Ferryman does) and this load
generator, with the same client and the same calls for all:

- **concurrency 1**: ``--requests`` plain calls to each of direct / ferryman / litellm, the order
  rotating every round; p50/p99 and what each proxy adds to the direct p50/p99; then streams,
  time to the first content event;
- **concurrency 64**: requests/s for ``--duration`` s after ``--warmup`` s, plain and streamed,
  with the CPU the proxy's processes (the server and any children) used per request.

Goals (issue #4): Ferryman's requests/s per worker >= 5 x LiteLLM's, and its added latency (p50,
concurrency 1) <= 1/6 of LiteLLM's. The benchmark reports; it exits non-zero only when a server
fails to start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HOST, LoadResult, ServerProcess, free_port, rss_mib, run, table, tree_cpu_seconds
from gateway_overhead import (
    LONG_STREAM,
    PATH,
    PLAIN_TOKENS,
    SHORT_STREAM,
    Stack,
    Target,
    loaded,
    request_body,
    sequential,
    summary,
)

RPS_GOAL = 5.0  # Ferryman's requests/s per worker >= 5 x LiteLLM's
LATENCY_GOAL = 1 / 6  # Ferryman's added latency <= 1/6 of LiteLLM's
MASTER_KEY = "litellm-bench-master"  # LiteLLM's own key check (no database: no virtual keys)
INSTALL = """LiteLLM is not installed (it is optional). To run this benchmark:

    python -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'
    python benchmarks/peer_litellm.py --litellm-python /tmp/litellm-venv/bin/python

or, into this venv (it changes some dependency versions): pip install -e '.[peer]'"""


def has_litellm(python: str) -> bool:
    try:
        done = subprocess.run([python, "-c", "import litellm.proxy.proxy_cli"], capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def litellm_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('litellm'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    return done.stdout.strip() or "?"


def litellm_server(python: str, port: int, upstream_url: str, folder: Path) -> ServerProcess:
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o-mini\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        f"      api_base: {upstream_url}/v1\n"
        "      api_key: os.environ/LITELLM_BENCH_UPSTREAM_KEY\n"
        "general_settings:\n"
        "  master_key: os.environ/LITELLM_BENCH_MASTER_KEY\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FERRYMAN_", "LITELLM_"))}
    env.update(
        LITELLM_BENCH_UPSTREAM_KEY="litellm-bench-upstream",
        LITELLM_BENCH_MASTER_KEY=MASTER_KEY,
        LITELLM_LOCAL_MODEL_COST_MAP="True",  # no download of the price list at start (no network here)
    )
    script = Path(python).parent / "litellm"
    launcher = [str(script)] if script.exists() else [python, "-m", "litellm.proxy.proxy_cli"]
    argv = [*launcher, "--config", str(config), "--host", HOST, "--port", str(port), "--num_workers", "1"]
    return ServerProcess("litellm proxy", argv, port, env=env)


def litellm_target(server: ServerProcess) -> Target:
    pid = server.pid
    headers = {"authorization": f"Bearer {MASTER_KEY}", "content-type": "application/json"}
    return Target("litellm", server.url + PATH, headers, lambda: tree_cpu_seconds(pid))


async def measure(stack: Stack, litellm: ServerProcess, args: argparse.Namespace) -> dict[str, Any]:
    direct, ferryman, peer = stack.direct(), stack.through_gateway(), litellm_target(litellm)
    three = [direct, ferryman, peer]
    note = (lambda text: None) if args.json else (lambda text: print(f"  {text} ...", file=sys.stderr, flush=True))
    plain_body, short_body = request_body(PLAIN_TOKENS, stream=False), request_body(SHORT_STREAM, stream=True)
    long_body = request_body(LONG_STREAM, stream=True)
    warm = max(20, args.requests // 10)

    note(f"concurrency 1, plain: {args.requests} calls to each, rotating")
    latency = await sequential(three, plain_body, args.requests, warm, stream=False)
    ttft_calls = max(50, args.requests // 3)
    note(f"concurrency 1, streams: {ttft_calls} calls to each, rotating")
    ttft = await sequential(three, short_body, ttft_calls, warm // 2, stream=True)

    runs: dict[str, LoadResult] = {}
    for label, target, body, stream in (
        ("direct plain", direct, plain_body, False),
        ("ferryman plain", ferryman, plain_body, False),
        ("litellm plain", peer, plain_body, False),
        ("ferryman stream", ferryman, long_body, True),
        ("litellm stream", peer, long_body, True),
    ):
        note(f"concurrency {args.concurrency}: {label}")
        runs[label] = await loaded(target, body, args, label, stream)
    assert stack.gateway is not None
    return {
        "latency": {name: summary(latency, name) for name in ("ferryman", "litellm")},
        "ttft": {name: summary(ttft, name) for name in ("ferryman", "litellm")},
        "runs": {name: r.as_dict() for name, r in runs.items()},
        "rss_mib": {"ferryman": rss_mib(stack.gateway.pid), "litellm": rss_mib(litellm.pid)},
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def goal(text: str, value: float | None, met: bool) -> dict[str, Any]:
    return {"goal": text, "value": value, "met": met}


def derive(data: dict[str, Any]) -> dict[str, Any]:
    lat, runs = data["latency"], data["runs"]
    f_rps, l_rps = runs["ferryman plain"]["rps"], runs["litellm plain"]["rps"]
    f_cpu, l_cpu = (
        runs["ferryman plain"]["server_cpu_us_per_request"],
        runs["litellm plain"]["server_cpu_us_per_request"],
    )
    rps_ratio = ratio(f_rps, l_rps)
    latency_ratio = ratio(lat["ferryman"]["added_p50_ms"], lat["litellm"]["added_p50_ms"])
    return {
        "ratios": {
            "rps_per_worker": rps_ratio,
            "server_bound_rps": ratio(
                runs["ferryman plain"]["server_bound_rps"], runs["litellm plain"]["server_bound_rps"]
            ),
            "added_p50": latency_ratio,
            "added_p99": ratio(lat["ferryman"]["added_p99_ms"], lat["litellm"]["added_p99_ms"]),
            "ttft_delta_p50": ratio(data["ttft"]["ferryman"]["added_p50_ms"], data["ttft"]["litellm"]["added_p50_ms"]),
            "cpu_per_request": ratio(f_cpu, l_cpu),
            "cpu_per_stream": ratio(
                runs["ferryman stream"]["server_cpu_us_per_request"],
                runs["litellm stream"]["server_cpu_us_per_request"],
            ),
            "stream_rps": ratio(runs["ferryman stream"]["rps"], runs["litellm stream"]["rps"]),
        },
        "goals": {
            "rps_per_worker": goal(f">= {RPS_GOAL}x", rps_ratio, rps_ratio is not None and rps_ratio >= RPS_GOAL),
            "added_latency_p50": goal(
                "<= 1/6 (0.167)", latency_ratio, latency_ratio is not None and latency_ratio <= LATENCY_GOAL
            ),
        },
    }


def print_text(data: dict[str, Any], derived: dict[str, Any], cfg: dict[str, Any]) -> None:
    lat, ttft, runs, r = data["latency"], data["ttft"], data["runs"], derived["ratios"]
    f, li = lat["ferryman"], lat["litellm"]
    print(f"Ferryman gateway vs LiteLLM proxy {cfg['litellm_version']} (1 worker each) on the same fixed-reply "
          f"upstream; {cfg['cpus']} CPUs")  # fmt: skip
    print(
        f"concurrency 1: {cfg['requests']} plain calls and {cfg['ttft_calls']} streams to each, rotating; "
        f"concurrency {cfg['concurrency']}: {cfg['duration']} s per run after {cfg['warmup']} s"
    )
    print()
    cpu = {name: runs[f"{name} plain"]["server_cpu_us_per_request"] for name in ("ferryman", "litellm")}
    cpu_stream = {name: runs[f"{name} stream"]["server_cpu_us_per_request"] for name in ("ferryman", "litellm")}
    rows = [
        ["latency p50 ms (c=1)", f["base_p50_ms"], f["p50_ms"], li["p50_ms"], None],
        ["latency p99 ms (c=1)", f["base_p99_ms"], f["p99_ms"], li["p99_ms"], None],
        ["added p50 ms (c=1)", None, f["added_p50_ms"], li["added_p50_ms"], r["added_p50"]],
        ["added p99 ms (c=1)", None, f["added_p99_ms"], li["added_p99_ms"], r["added_p99"]],
        ["TTFT added p50 ms (c=1)", None, ttft["ferryman"]["added_p50_ms"], ttft["litellm"]["added_p50_ms"],
         r["ttft_delta_p50"]],
        [f"req/s plain (c={cfg['concurrency']})", runs["direct plain"]["rps"], runs["ferryman plain"]["rps"],
         runs["litellm plain"]["rps"], r["rps_per_worker"]],
        ["server-bound req/s (1 core)", runs["direct plain"]["server_bound_rps"],
         runs["ferryman plain"]["server_bound_rps"], runs["litellm plain"]["server_bound_rps"], r["server_bound_rps"]],
        ["CPU ms/request", None, ms(cpu["ferryman"]), ms(cpu["litellm"]), r["cpu_per_request"]],
        [f"req/s streams of {LONG_STREAM} tokens", None, runs["ferryman stream"]["rps"],
         runs["litellm stream"]["rps"], r["stream_rps"]],
        ["CPU ms/stream", None, ms(cpu_stream["ferryman"]), ms(cpu_stream["litellm"]), r["cpu_per_stream"]],
        ["RSS MiB after", None, data["rss_mib"]["ferryman"], data["rss_mib"]["litellm"], None],
    ]  # fmt: skip
    print(table(rows, ["figure", "direct", "ferryman", "litellm", "ferryman / litellm"]))
    print()
    rows = [[x["name"], x["rps"], x["p50_ms"], x["p99_ms"], x["errors"], x["client_cpu_pct"], x["server_cpu_pct"],
             x["other_cpu_pct"]] for x in runs.values()]  # fmt: skip
    headers = [f"c={cfg['concurrency']} run", "req/s", "p50 ms", "p99 ms", "errors", "client CPU%", "server CPU%",
               "other CPU%"]  # fmt: skip
    print(table(rows, headers))
    for x in runs.values():
        if x["first_error"]:
            print(f"  first error in {x['name']}: {x['first_error']}")
    print()
    for name, goal in derived["goals"].items():
        verdict = "GOAL MET" if goal["met"] else "GOAL MISSED"
        text = "requests/s per worker, ferryman / litellm" if name == "rps_per_worker" else (
            "added latency p50 at concurrency 1, ferryman / litellm")  # fmt: skip
        print(f"{text}: {goal['value']} (goal {goal['goal']}) -> {verdict}")


def ms(us: float | None) -> float | None:
    return None if us is None else round(us / 1000, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--litellm-python", default=os.environ.get("LITELLM_PYTHON", sys.executable),
                        help="a Python with litellm[proxy] (default: $LITELLM_PYTHON, else this one)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=500, help="sequential calls to each target (default 500)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per loaded run (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per loaded run (default 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in loaded runs (default 64)")
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    args.gap_ms = 1.0
    if args.quick:
        args.requests, args.duration, args.warmup = min(args.requests, 150), min(args.duration, 1.5), 0.5
    if not has_litellm(args.litellm_python):
        print(INSTALL)
        return 0
    version = litellm_version(args.litellm_python)
    try:
        stack = Stack(gap_ms=args.gap_ms).start()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="ferryman-litellm-") as folder:
            assert stack.upstream is not None
            server = litellm_server(args.litellm_python, free_port(), stack.upstream.url, Path(folder))
            try:
                server.start(timeout=180)
            except RuntimeError as error:
                print(f"error: {error}", file=sys.stderr)
                return 1
            try:
                data, loop = run(measure(stack, server, args))
            finally:
                server.stop()
    finally:
        stack.stop()
    cfg = {"requests": args.requests, "ttft_calls": max(50, args.requests // 3), "duration": args.duration,
           "warmup": args.warmup, "concurrency": args.concurrency, "cpus": os.cpu_count(), "client_loop": loop,
           "litellm_version": version}  # fmt: skip
    derived = derive(data)
    if args.json:
        print(json.dumps({"config": cfg, **data, **derived}, indent=2))
    else:
        print_text(data, derived, cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
