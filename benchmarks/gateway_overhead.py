"""What ``ferryman serve`` adds: the same calls straight to an upstream and through the gateway.

    python benchmarks/gateway_overhead.py [--requests 1000] [--duration 4] [--warmup 1] [--concurrency 64]
                                          [--gap-ms 1] [--quick] [--json] [--profile FILE]
                                          [--set audit.enabled=false ...] [--plain-key]

Three processes on loopback, each on its own: a fast **upstream** (``_common.openai_app``: a fixed
``chat.completion`` with ``usage``, or a ``chat.completion.chunk`` stream of N content events
(N = ``max_tokens``) ``--gap-ms`` apart, with a usage chunk when asked), the **gateway**
(``python -m ferryman.cli serve``, one worker, the full pipeline: telemetry + Prometheus,
audit to SQLite, ownership, the key's RPM/TPM limits, the key's budget, account, route, retry,
pacing; JSON access log; SQLite store in a temporary folder; one virtual key made with
``python -m ferryman.cli keys create --budget --rpm --tpm``), and this **load generator** (one
``httpx2.AsyncClient`` configuration for direct and gateway calls alike). Every call is
``POST /v1/chat/completions`` (gpt-4o-mini, one short user message); streams are read to
``[DONE]`` and do not set ``stream_options`` (as the SDK's default), so the gateway asks the
upstream for usage and hides that chunk from the caller.

What it measures, in one run:

- **Added latency at concurrency 1**: ``--requests`` sequential calls to each target, direct and
  gateway interleaved (so drift on the machine hits both alike). Added p50/p99 = the gateway's
  percentile less the direct one's; the median of the per-call paired differences (gateway call
  less the direct call right next to it) is printed as a check, and so is the gateway's own
  ``x-ferryman-overhead-ms`` header (its time less the upstream's, as it measures it).
- **Time to first token**: sequential streamed calls, time from sending to the first content
  event (``"tok "``) direct and through the gateway; the delta of the p50s (and p99s).
- **Gateway CPU per request**: utime+stime of the gateway process (``/proc/PID/stat``) over the
  loaded plain run divided by its requests; the sequential figure is shown beside it.
- **Gateway CPU per stream event**: two loaded stream runs, short (``max_tokens=4``) and long
  (``max_tokens=36``); CPU per event = the difference in CPU per stream over the difference in
  events per stream (the marginal cost of one more event; the per-stream rest is shown too).
- **Requests/s at concurrency 64**: ``--duration`` seconds after ``--warmup`` (closed loop), direct
  and through the gateway, plain and long streams.
- **RSS** of the gateway before the first call and after the last (and its peak).

Goals (issue #4): added latency p50 <= 1 ms and p99 <= 5 ms, TTFT delta <= 2 ms, gateway CPU
<= 1 ms per request and <= 0.1 ms per stream event. The benchmark reports; it exits non-zero
only when a server fails to start.

``--profile FILE`` runs the gateway under cProfile (CPU time of the event loop thread, from the
first call on; the database thread's in FILE.db). Every figure is then slower: use it only to
see where the time goes. ``--set KEY=VALUE`` (a gateway setting, e.g. ``audit.enabled=false``)
and ``--plain-key`` (a key with no budget and no limits) leave parts out, to see what they cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    HOST,
    LoadResult,
    ServerProcess,
    free_port,
    make_client,
    openai_server,
    percentile,
    process_cpu_seconds,
    rss_mib,
    run,
    run_load,
    table,
)

GOALS = {
    "added_p50_ms": 1.0,
    "added_p99_ms": 5.0,
    "ttft_delta_ms": 2.0,
    "cpu_ms_per_request": 1.0,
    "cpu_ms_per_event": 0.1,
}
UPSTREAM_KEY = "ferryman-bench-upstream"  # what the gateway sends upstream (the fast upstream ignores it)
PATH = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
PLAIN_TOKENS = 16
SHORT_STREAM, LONG_STREAM = 4, 36  # content events per stream; each stream also has role, finish and [DONE]
OTHER_CPU_WARNING = 25


def request_body(max_tokens: int, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


# -- the servers -----------------------------------------------------------------------------------


def store_url(folder: Path) -> str:
    return f"sqlite:///{folder / 'gateway.db'}"


def gateway_env(folder: Path, upstream_url: str) -> dict[str, str]:
    """Environment for ``ferryman serve`` / ``ferryman keys``: its own settings file (one
    deployment, the upstream; SQLite in ``folder``), no OPENAI_* or FERRYMAN_* from outside."""
    config = folder / "ferryman.toml"
    config.write_text(
        "[[deployments]]\n"
        'name = "upstream"\n'
        f'base_url = "{upstream_url}/v1"\n'
        'api_keys = ["env:FERRYMAN_BENCH_UPSTREAM_KEY"]\n'
        "\n[store]\n"
        f'url = "{store_url(folder)}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FERRYMAN_"))}
    env.update(
        FERRYMAN_CONFIG=str(config),
        FERRYMAN_DATA_DIR=str(folder / "data"),
        FERRYMAN_BENCH_UPSTREAM_KEY=UPSTREAM_KEY,
    )
    return env


def create_key(env: dict[str, str], store_url: str, limits: bool = True) -> str:
    """A virtual key with a budget and RPM/TPM limits high enough never to refuse (so both
    stages run their full path on every call; ``limits=False``: none). Returned, never printed."""
    argv = [sys.executable, "-m", "ferryman.cli", "keys", "create", "--name", "bench", "--expires", "1d",
            "--store", store_url]  # fmt: skip
    if limits:
        argv += ["--budget", "1000000/month", "--rpm", str(10**8), "--tpm", str(10**11)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ferryman keys create failed ({done.returncode}): {done.stderr[-2000:]}")
    return lines[-1].strip()


# ``ferryman serve`` under cProfile, counting the event loop thread's CPU time (not wall time, which
# would charge a coroutine for the time it waits). Profiling starts on SIGUSR1 (sent once the
# gateway is up, so imports and start-up stay out) and the stats are written when it stops.
# The store's database thread (``ferryman-db_0``: SQLite work) gets its own profiler, from its start,
# written to FILE.db.
PROFILE_BOOT = """
import cProfile, runpy, signal, sys, threading, time
import concurrent.futures.thread as pool
out = sys.argv[1]
sys.argv = ["ferryman", *sys.argv[2:]]
profiler, db_profiler = cProfile.Profile(time.thread_time), cProfile.Profile(time.thread_time)
signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
plain_worker, db_threads = pool._worker, []

def worker(*args, **kwargs):
    if not threading.current_thread().name.startswith("ferryman-db") or db_threads:
        return plain_worker(*args, **kwargs)
    db_threads.append(threading.current_thread())
    db_profiler.enable()
    try:
        return plain_worker(*args, **kwargs)
    finally:
        db_profiler.disable()
        db_profiler.dump_stats(out + ".db")

pool._worker = worker
try:
    runpy.run_module("ferryman.cli", run_name="__main__", alter_sys=True)
except (SystemExit, KeyboardInterrupt):
    pass
finally:
    profiler.disable()
    profiler.dump_stats(out)
"""


def gateway_server(port: int, env: dict[str, str], profile: str | None = None) -> ServerProcess:
    serve = ["serve", "--host", HOST, "--port", str(port)]
    if profile:
        return ServerProcess("ferryman serve", [sys.executable, "-c", PROFILE_BOOT, profile, *serve], port, env=env)
    return ServerProcess("ferryman serve", [sys.executable, "-m", "ferryman.cli", *serve], port, env=env)


@dataclass
class Target:
    """Where calls go: ``url`` (the chat completions URL), the headers to send, and the CPU
    (seconds, cumulative) of the process that serves it."""

    name: str
    url: str
    headers: dict[str, str]
    cpu: Callable[[], float | None]


@dataclass
class Stack:
    """The upstream and the gateway (with its key) in front of it, started and stopped together."""

    gap_ms: float = 1.0
    profile: str | None = None
    settings: dict[str, str] = field(default_factory=dict)  # FERRYMAN_* variables on top (see --set)
    key_limits: bool = True
    upstream: ServerProcess | None = None
    gateway: ServerProcess | None = None
    key: str = ""
    folder: tempfile.TemporaryDirectory[str] | None = None
    rss_start: float | None = None

    def start(self) -> Stack:
        self.folder = tempfile.TemporaryDirectory(prefix="ferryman-gateway-bench-")
        try:
            self.upstream = openai_server(free_port(), chunks=PLAIN_TOKENS, gap_ms=self.gap_ms).start()
            env = {**gateway_env(Path(self.folder.name), self.upstream.url), **self.settings}
            self.key = create_key(env, store_url(Path(self.folder.name)), self.key_limits)
            self.gateway = gateway_server(free_port(), env, self.profile).start(timeout=60)
            if self.profile:
                os.kill(self.gateway.pid, signal.SIGUSR1)
        except BaseException:
            self.stop()
            raise
        self.rss_start = rss_mib(self.gateway.pid)
        return self

    def stop(self) -> None:
        if self.profile and self.gateway is not None and self.gateway.proc is not None:
            # uvicorn re-raises the signal it stopped on: SIGTERM would kill cProfile before it writes;
            # SIGINT becomes a KeyboardInterrupt, after which cProfile still writes its stats.
            self.gateway.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.gateway.proc.wait(30)
        for server in (self.gateway, self.upstream):
            if server is not None:
                server.stop()
        if self.folder is not None:
            self.folder.cleanup()

    def direct(self) -> Target:
        assert self.upstream is not None
        pid = self.upstream.pid
        headers = {"authorization": f"Bearer {UPSTREAM_KEY}", "content-type": "application/json"}
        return Target("direct", self.upstream.url + PATH, headers, lambda: process_cpu_seconds(pid))

    def through_gateway(self) -> Target:
        assert self.gateway is not None
        pid = self.gateway.pid
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        return Target("ferryman", self.gateway.url + PATH, headers, lambda: process_cpu_seconds(pid))

    def gateway_output(self) -> str:
        return self.gateway.output() if self.gateway is not None else ""


# -- one call --------------------------------------------------------------------------------------


async def call_plain(client: Any, target: Target, body: bytes) -> tuple[float, float | None]:
    """(seconds, the gateway's x-ferryman-overhead-ms if any) of one non-streaming call."""
    start = time.perf_counter()
    reply = await client.post(target.url, content=body, headers=target.headers)
    elapsed = time.perf_counter() - start
    if reply.status_code != 200 or b'"usage"' not in reply.content:
        raise RuntimeError(f"{target.name}: HTTP {reply.status_code}: {reply.text[:300]}")
    overhead = reply.headers.get("x-ferryman-overhead-ms")
    return elapsed, float(overhead) if overhead is not None else None


async def call_stream(client: Any, target: Target, body: bytes) -> tuple[float, float, int]:
    """(seconds to the first content event, seconds to the end, events received) of one stream
    read to ``data: [DONE]``."""
    start = time.perf_counter()
    first: float | None = None
    parts: list[bytes] = []
    async with client.stream("POST", target.url, content=body, headers=target.headers) as reply:
        if reply.status_code != 200:
            await reply.aread()
            raise RuntimeError(f"{target.name}: HTTP {reply.status_code}: {reply.text[:300]}")
        async for chunk in reply.aiter_raw():
            if first is None and b"tok " in (parts[-1][-8:] if parts else b"") + chunk:
                first = time.perf_counter() - start
            parts.append(chunk)
    total = time.perf_counter() - start
    whole = b"".join(parts)
    if not whole.rstrip().endswith(b"data: [DONE]") or first is None:
        raise RuntimeError(f"{target.name}: a stream without content or [DONE]: {whole[-300:]!r}")
    return first, total, whole.count(b"data: ")


# -- sequential calls (concurrency 1) --------------------------------------------------------------


@dataclass
class Sequential:
    """Per target: the seconds of each call (TTFT for streams), in call order, and its server's
    CPU over the whole phase."""

    samples: dict[str, list[float]] = field(default_factory=dict)
    overhead_ms: dict[str, list[float]] = field(default_factory=dict)
    cpu_s: dict[str, float | None] = field(default_factory=dict)
    calls: int = 0


async def sequential(targets: Sequence[Target], body: bytes, calls: int, warmup: int, stream: bool) -> Sequential:
    """``calls`` rounds of one call to each target, the order rotating each round."""
    result = Sequential(samples={t.name: [] for t in targets}, overhead_ms={t.name: [] for t in targets})
    async with make_client(len(targets)) as client:  # one kept-alive connection per target

        async def once(target: Target) -> tuple[float, float | None]:
            if stream:
                ttft, _, _ = await call_stream(client, target, body)
                return ttft, None
            return await call_plain(client, target, body)

        for _ in range(warmup):
            for target in targets:
                await once(target)
        cpu0 = {t.name: t.cpu() for t in targets}
        for i in range(calls):
            shift = i % len(targets)
            for target in [*targets[shift:], *targets[:shift]]:
                seconds, overhead = await once(target)
                result.samples[target.name].append(seconds)
                if overhead is not None:
                    result.overhead_ms[target.name].append(overhead)
        for t in targets:
            before, after = cpu0[t.name], t.cpu()
            result.cpu_s[t.name] = after - before if before is not None and after is not None else None
    result.calls = calls
    return result


def ms(value: float) -> float:
    return round(value * 1000, 3)


def pct_ms(values: Sequence[float], q: float) -> float:
    return ms(percentile(sorted(values), q))


def summary(seq: Sequential, name: str, base: str = "direct") -> dict[str, Any]:
    """p50/p99 of ``name`` and of ``base``, what ``name`` adds, and the paired check."""
    mine, theirs = seq.samples[name], seq.samples[base]
    paired = [a - b for a, b in zip(mine, theirs, strict=True)]
    cpu = seq.cpu_s.get(name)
    out: dict[str, Any] = {
        "p50_ms": pct_ms(mine, 0.50),
        "p99_ms": pct_ms(mine, 0.99),
        "base_p50_ms": pct_ms(theirs, 0.50),
        "base_p99_ms": pct_ms(theirs, 0.99),
        "paired_median_ms": ms(statistics.median(paired)),
        "cpu_ms_per_call": None if cpu is None else round(1000 * cpu / seq.calls, 3),
    }
    out["added_p50_ms"] = round(out["p50_ms"] - out["base_p50_ms"], 3)
    out["added_p99_ms"] = round(out["p99_ms"] - out["base_p99_ms"], 3)
    if seq.overhead_ms.get(name):
        out["header_overhead_p50_ms"] = round(percentile(sorted(seq.overhead_ms[name]), 0.5), 3)
        out["header_overhead_p99_ms"] = round(percentile(sorted(seq.overhead_ms[name]), 0.99), 3)
    return out


# -- concurrent load -------------------------------------------------------------------------------


async def loaded(target: Target, body: bytes, args: argparse.Namespace, label: str, stream: bool) -> LoadResult:
    """``args.concurrency`` calls in flight for ``args.duration`` s; for streams, ``extra`` has the
    events each stream carried."""
    events: list[int] = []
    async with make_client(args.concurrency) as client:

        async def plain() -> None:
            await call_plain(client, target, body)

        async def streamed() -> None:
            _, _, count = await call_stream(client, target, body)
            if len(events) < 1000:
                events.append(count)

        result = await run_load(label, streamed if stream else plain, concurrency=args.concurrency,
                                seconds=args.duration, warmup=args.warmup, server_cpu_fn=target.cpu)  # fmt: skip
    if events:
        result.extra["events_per_stream"] = round(statistics.mean(events), 2)
    return result


# -- the whole run -----------------------------------------------------------------------------------


async def measure(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    direct, gateway = stack.direct(), stack.through_gateway()
    both = [direct, gateway]
    note = (lambda text: None) if args.json else (lambda text: print(f"  {text} ...", file=sys.stderr, flush=True))
    plain_body = request_body(PLAIN_TOKENS, stream=False)
    short_body, long_body = request_body(SHORT_STREAM, stream=True), request_body(LONG_STREAM, stream=True)
    warm = max(20, args.requests // 10)

    note(f"concurrency 1, plain: {args.requests} calls to each, interleaved")
    latency = await sequential(both, plain_body, args.requests, warm, stream=False)
    ttft_calls = max(50, args.requests // 3)
    note(f"concurrency 1, streams: {ttft_calls} calls to each, interleaved")
    ttft = await sequential(both, short_body, ttft_calls, warm // 2, stream=True)

    runs: list[LoadResult] = []
    for label, target, body, stream in (
        ("direct plain", direct, plain_body, False),
        ("ferryman plain", gateway, plain_body, False),
        ("direct stream", direct, long_body, True),
        ("ferryman stream", gateway, long_body, True),
        ("ferryman short stream", gateway, short_body, True),
    ):
        note(f"concurrency {args.concurrency}: {label}")
        runs.append(await loaded(target, body, args, label, stream))
    assert stack.gateway is not None
    pid = stack.gateway.pid
    return {
        "latency": summary(latency, "ferryman"),
        "ttft": summary(ttft, "ferryman"),
        "runs": {r.name: r.as_dict() for r in runs},
        "rss_mib": {"start": stack.rss_start, "end": rss_mib(pid), "peak": rss_mib(pid, "VmHWM")},
    }


def derive(data: dict[str, Any]) -> dict[str, Any]:
    """Per-request and per-event CPU, the figures the goals are about, and the verdicts."""
    runs = data["runs"]
    plain, long_, short = runs["ferryman plain"], runs["ferryman stream"], runs["ferryman short stream"]
    per_event = per_stream_rest = None
    long_events, short_events = long_["extra"].get("events_per_stream"), short["extra"].get("events_per_stream")
    if long_events and short_events and long_["server_cpu_us_per_request"] and short["server_cpu_us_per_request"]:
        slope = (long_["server_cpu_us_per_request"] - short["server_cpu_us_per_request"]) / (long_events - short_events)
        per_event = round(slope / 1000, 4)
        per_stream_rest = round((short["server_cpu_us_per_request"] - slope * short_events) / 1000, 3)
    figures = {
        "added_p50_ms": data["latency"]["added_p50_ms"],
        "added_p99_ms": data["latency"]["added_p99_ms"],
        "ttft_delta_ms": data["ttft"]["added_p50_ms"],
        "cpu_ms_per_request": None
        if plain["server_cpu_us_per_request"] is None
        else round(plain["server_cpu_us_per_request"] / 1000, 3),
        "cpu_ms_per_event": per_event,
    }
    return {
        "figures": figures,
        "cpu_ms_per_stream_besides_events": per_stream_rest,
        "goals": {name: goal(name, value) for name, value in figures.items()},
        "rps_ratio_plain": ratio(plain["rps"], runs["direct plain"]["rps"]),
    }


def goal(name: str, value: float | None) -> dict[str, Any]:
    return {"goal": GOALS[name], "value": value, "met": value is not None and value <= GOALS[name]}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


GOAL_TEXT = {
    "added_p50_ms": "added latency p50 at concurrency 1",
    "added_p99_ms": "added latency p99 at concurrency 1",
    "ttft_delta_ms": "time-to-first-token delta (p50)",
    "cpu_ms_per_request": "gateway CPU per request (ms)",
    "cpu_ms_per_event": "gateway CPU per stream event (ms)",
}


def print_text(data: dict[str, Any], derived: dict[str, Any], cfg: dict[str, Any]) -> None:
    lat, ttft, runs, rss = data["latency"], data["ttft"], data["runs"], data["rss_mib"]
    print(f"ferryman serve (1 worker, full pipeline) vs direct to a fixed-reply upstream; {cfg['cpus']} CPUs, "
          f"client loop {cfg['client_loop']}")  # fmt: skip
    print(f"concurrency 1: {cfg['requests']} plain calls and {cfg['ttft_calls']} streams ({SHORT_STREAM} tokens) "
          f"to each, interleaved; concurrency {cfg['concurrency']}: {cfg['duration']} s per run after "
          f"{cfg['warmup']} s; upstream events {cfg['gap_ms']} ms apart")  # fmt: skip
    if cfg["set"] or cfg["plain_key"]:
        changed = [*cfg["set"], *(["a key with no budget or limits"] if cfg["plain_key"] else [])]
        print(f"NOT the full pipeline: {', '.join(changed)}")
    print()
    rows = [
        ["latency p50 ms (c=1)", lat["base_p50_ms"], lat["p50_ms"], lat["added_p50_ms"]],
        ["latency p99 ms (c=1)", lat["base_p99_ms"], lat["p99_ms"], lat["added_p99_ms"]],
        ["  paired median diff ms", "", "", lat["paired_median_ms"]],
        ["  x-ferryman-overhead-ms p50/p99", "", "",
         f"{lat.get('header_overhead_p50_ms')}/{lat.get('header_overhead_p99_ms')}"],
        ["TTFT p50 ms (c=1)", ttft["base_p50_ms"], ttft["p50_ms"], ttft["added_p50_ms"]],
        ["TTFT p99 ms (c=1)", ttft["base_p99_ms"], ttft["p99_ms"], ttft["added_p99_ms"]],
        ["server CPU ms/request (c=1)", None, lat["cpu_ms_per_call"], None],
    ]  # fmt: skip
    print(table(rows, ["figure", "direct", "ferryman", "ferryman adds"]))
    print()
    rows = []
    for r in runs.values():
        rows.append([r["name"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"], r["client_cpu_pct"],
                     r["server_cpu_pct"], r["other_cpu_pct"], r["server_cpu_us_per_request"], r["server_bound_rps"],
                     r["extra"].get("events_per_stream")])  # fmt: skip
    headers = [f"c={cfg['concurrency']} run", "req/s", "p50 ms", "p99 ms", "errors", "client CPU%", "server CPU%",
               "other CPU%", "server µs/req", "server-bound req/s", "events/stream"]  # fmt: skip
    print(table(rows, headers))
    for r in runs.values():
        if r["first_error"]:
            print(f"  first error in {r['name']}: {r['first_error']}")
    busy = [r["name"] for r in runs.values() if (r["other_cpu_pct"] or 0) > OTHER_CPU_WARNING]
    if busy:
        print(f"WARNING: other processes used more than {OTHER_CPU_WARNING}% of a CPU during: {', '.join(busy)}.")
    print()
    print(f"requests/s through the gateway / direct (plain, c={cfg['concurrency']}): {derived['rps_ratio_plain']}")
    print(
        f"gateway CPU per stream besides its events: {derived['cpu_ms_per_stream_besides_events']} ms; "
        f"per event (marginal, {SHORT_STREAM} vs {LONG_STREAM} tokens): {derived['figures']['cpu_ms_per_event']} ms"
    )
    print(
        f"gateway RSS: {rss['start']} MiB before the first call, {rss['end']} MiB after the last "
        f"(peak {rss['peak']} MiB)"
    )
    print()
    for name, goal in derived["goals"].items():
        verdict = "GOAL MET" if goal["met"] else "GOAL MISSED"
        print(f"{GOAL_TEXT[name]}: {goal['value']} (goal <= {goal['goal']}) -> {verdict}")


def settings_env(pairs: Sequence[str]) -> dict[str, str]:
    """``["audit.enabled=false"]`` → ``{"FERRYMAN_AUDIT__ENABLED": "false"}``."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, not {pair!r}")
        env["FERRYMAN_" + key.replace(".", "__").upper()] = value
    return env


def print_profile(path: str, top: int = 30) -> None:
    for file, thread in ((path, "event loop thread"), (path + ".db", "database thread")):
        if not os.path.exists(file):
            continue
        stats = pstats.Stats(file)
        stats.strip_dirs()
        for key in ("tottime", "cumulative"):
            print(f"\n--- gateway profile, {thread}, top {top} by {key} ({file}) ---")
            stats.sort_stats(key).print_stats(top)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="sequential calls to each target (default 1000)")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per loaded run (default 4)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per loaded run (default 1)")
    parser.add_argument("--concurrency", type=int, default=64, help="calls in flight in loaded runs (default 64)")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="ms between the upstream's stream events")
    parser.add_argument("--quick", action="store_true", help="a small run for a smoke test (~20 s)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--profile", metavar="FILE", help="run the gateway under cProfile, stats to FILE")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a gateway setting (dotted Settings key), e.g. audit.enabled=false; no longer the full "
                        "pipeline, to see what one part costs")  # fmt: skip
    parser.add_argument("--plain-key", action="store_true",
                        help="a key with no budget and no RPM/TPM limits (to see what those stages cost)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration, args.warmup = min(args.requests, 200), min(args.duration, 1.5), 0.5
    return args


def main() -> int:
    args = parse_args()
    profile = os.path.abspath(args.profile) if args.profile else None
    stack = Stack(args.gap_ms, profile, settings_env(args.set), key_limits=not args.plain_key)
    try:
        stack.start()
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        data, loop = run(measure(stack, args))
    finally:
        stack.stop()
    cfg = {"requests": args.requests, "ttft_calls": max(50, args.requests // 3), "duration": args.duration,
           "warmup": args.warmup, "concurrency": args.concurrency, "gap_ms": args.gap_ms, "cpus": os.cpu_count(),
           "client_loop": loop, "profiled": bool(args.profile), "set": args.set,
           "plain_key": args.plain_key}  # fmt: skip
    derived = derive(data)
    if args.json:
        print(json.dumps({"config": cfg, **data, **derived}, indent=2))
    else:
        print_text(data, derived, cfg)
    if args.profile:
        if args.json:
            print("(profile stats in", args.profile + ")", file=sys.stderr)
        else:
            print("\nNOTE: the gateway ran under cProfile: its figures above are inflated.")
            print_profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
