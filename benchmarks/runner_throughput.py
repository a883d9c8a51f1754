"""``ferryman run`` at the rate limit's edge: throughput as a fraction of the ceiling, and 429s.

    python benchmarks/runner_throughput.py [--requests 5000] [--rpm 2100] [--tpm T] [--bind rpm|tpm]
                                           [--max-tokens 16] [--concurrency 64] [--quick]
                                           [--no-baseline] [--json]

The mock runs in its own subprocess (``ferryman mock --rpm R --tpm T``). A JSONL input of
``--requests`` chat completions (Batch API line format, gpt-4o-mini, one short message each,
``max_tokens`` 16) is written to a temporary folder, and ``python -m ferryman.cli run IN -o OUT
--concurrency C`` runs it as a subprocess, the way a user would (``OPENAI_BASE_URL`` = the mock,
a test key, ``FERRYMAN_DATA_DIR`` = the temporary folder, every other ``FERRYMAN_*`` variable
dropped). Afterwards the mock's request log (``GET /_ferryman/requests``) gives every request it
received, with its arrival time and status.

**The ceiling.** The mock keeps, per key, an RPM bucket of capacity R and a TPM bucket of
capacity T, both starting full and refilling continuously at R/60 and T/60 a second. By time t
after the first request at most R + R/60·t requests can have been admitted, so N requests need
at least ``max(0, N - R) / (R/60)`` seconds; likewise N requests costing S tokens in total (each
its prompt tokens, counted by ``ferryman.tokens`` exactly as the mock counts them, plus its
``max_tokens``) need ``max(0, S - T) / (T/60)``. The ceiling time is the larger of the two; no
client can finish sooner. ``--bind rpm`` (default) makes RPM the binding limit (TPM is set 25 %
above what the same rate needs); ``--bind tpm`` the other way round. The defaults (5,000
requests, R = 2,100) give a ceiling of about 83 s, so "after the first minute" means something.

**Achieved fraction of the ceiling** = ceiling time / achieved time, where the achieved time is
from the first request the mock received to the last one it answered 200 (the runner's process
start-up, reading the input and writing the results files are left out; the wall time of the
whole command is printed too, with ceiling / wall). 1.0 means the job finished as soon as the
limits allow. Also printed: the **steady rate**, successes per second from ``min(60 s, half the
run)`` after the first request to the last success, as a fraction of the refill rate (by then
the initial burst is long spent, so this is the rate the pacer holds at the edge).

**429s** the mock sent: in total, in the first minute after the first request, and after it.
Goals (from issue #5): achieved ≥ 0.95 of the ceiling, and no 429s after the first minute.

**Baseline.** The ceiling itself is the baseline (computed from the limits). With the default
``--baseline`` the same input then runs again with the limits lifted (RPM 10⁹), which shows the
runner's own top speed on this machine: if it is not well above the limit, the runner, not the
pacer, is what holds the job back.

``--quick``: 800 requests at R = 600 (a ceiling of 20 s; the whole run falls inside the first
minute, so "after the first minute" is empty). Exits non-zero only if something could not
start or the runner failed; a slow result is reported, not failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import orjson

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import HOST, ServerProcess, free_port, table

from ferryman.tokens import count_request_prompt_tokens, max_output_tokens

GOAL = 0.95
FIRST_MINUTE_S = 60.0
API_KEY = "ferryman-bench-runner-key"  # the mock takes any bearer token; not key-shaped on purpose
ENDPOINT = "/v1/chat/completions"
UNLIMITED_RPM = 10**9
UNLIMITED_TPM = 10**12


@dataclass
class RunResult:
    name: str
    requests: int
    rpm: int
    tpm: int
    exit_code: int
    results_lines: int
    errors_lines: int
    wall_s: float
    runner_cpu_s: float
    sent: int  # requests the mock received for the endpoint (retries included)
    ok: int
    status_429: int
    status_429_first_minute: int
    status_429_after_first_minute: int
    other_statuses: dict[str, int]
    first_429_s: float | None
    last_429_s: float | None
    achieved_s: float  # first request received → last 200 sent
    achieved_rps: float
    ceiling_s: float | None = None
    of_ceiling: float | None = None
    of_ceiling_wall: float | None = None
    steady_from_s: float | None = None
    steady_rps: float | None = None
    steady_of_limit: float | None = None
    runner_stderr_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def line_body(i: int, max_tokens: int) -> dict[str, Any]:
    content = f"Ticket {i}: my order arrived two days late. Classify as billing, shipping or other; one word."
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens}


def write_input(path: Path, n: int, max_tokens: int) -> list[int]:
    """The input file; returns each line's cost against TPM (prompt tokens + output cap)."""
    costs: list[int] = []
    with path.open("wb") as handle:
        for i in range(n):
            body = line_body(i, max_tokens)
            line = {"custom_id": f"t{i}", "method": "POST", "url": ENDPOINT, "body": body}
            handle.write(orjson.dumps(line) + b"\n")
            endpoint = ENDPOINT.removeprefix("/v1")
            costs.append(count_request_prompt_tokens(endpoint, body) + (max_output_tokens(endpoint, body) or 0))
    return costs


def ceiling_seconds(n: int, total_tokens: int, rpm: int, tpm: int) -> tuple[float, float]:
    """(RPM-bound, TPM-bound) fastest completion of the whole job from full buckets."""
    by_requests = max(0, n - rpm) / (rpm / 60)
    by_tokens = max(0, total_tokens - tpm) / (tpm / 60)
    return by_requests, by_tokens


class Control:
    def __init__(self, url: str) -> None:
        self.http = httpx2.Client(base_url=url + "/_ferryman", timeout=120)

    def fresh(self, rpm: int, tpm: int) -> None:
        """New limits (which also refills the buckets) and an empty request log."""
        self.http.patch("/settings", json={"rpm": rpm, "tpm": tpm}).raise_for_status()
        self.http.delete("/requests").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = self.http.get("/requests").raise_for_status().json()["data"]
        return [entry for entry in data if entry.get("path") == ENDPOINT]

    def close(self) -> None:
        self.http.close()


def runner_env(mock_url: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
    env.update(OPENAI_BASE_URL=mock_url + "/v1", OPENAI_API_KEY=API_KEY, FERRYMAN_DATA_DIR=str(data_dir))
    return env


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def run_once(
    name: str, mock: ServerProcess, control: Control, input_path: Path, work: Path, n: int, rpm: int, tpm: int,
    concurrency: int, log: Any,
) -> RunResult:  # fmt: skip
    control.fresh(rpm, tpm)
    out = work / f"{name}.results.jsonl"
    data_dir = work / f"data-{name}"
    data_dir.mkdir()
    argv = [sys.executable, "-m", "ferryman.cli", "run", str(input_path), "-o", str(out),
            "--concurrency", str(concurrency)]  # fmt: skip
    log(f"  {name}: {n} requests, mock rpm={rpm} tpm={tpm}, concurrency {concurrency} ...")
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=runner_env(mock.url, data_dir), capture_output=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)

    entries = control.requests()
    start = min((e["time"] for e in entries), default=0.0)
    statuses = [e.get("status") for e in entries]
    ok_times = sorted(e["time"] - start for e in entries if e.get("status") == 200)
    times_429 = sorted(e["time"] - start for e in entries if e.get("status") == 429)
    others: dict[str, int] = {}
    for status in statuses:
        if status not in (200, 429):
            others[str(status)] = others.get(str(status), 0) + 1
    achieved = ok_times[-1] if ok_times else 0.0
    return RunResult(
        name=name,
        requests=n,
        rpm=rpm,
        tpm=tpm,
        exit_code=proc.returncode,
        results_lines=count_lines(out),
        errors_lines=count_lines(out.with_name(f"{name}.results.errors.jsonl")),
        wall_s=round(wall, 2),
        runner_cpu_s=round(cpu, 1),
        sent=len(entries),
        ok=len(ok_times),
        status_429=len(times_429),
        status_429_first_minute=sum(1 for t in times_429 if t < FIRST_MINUTE_S),
        status_429_after_first_minute=sum(1 for t in times_429 if t >= FIRST_MINUTE_S),
        other_statuses=others,
        first_429_s=round(times_429[0], 2) if times_429 else None,
        last_429_s=round(times_429[-1], 2) if times_429 else None,
        achieved_s=round(achieved, 2),
        achieved_rps=round(len(ok_times) / achieved, 1) if achieved > 0 else math.nan,
        runner_stderr_tail=proc.stderr.decode(errors="replace")[-1500:] if proc.returncode else "",
        extra={"ok_times": ok_times},
    )


def add_ceiling(result: RunResult, ceiling: float, limit_rps: float) -> None:
    result.ceiling_s = round(ceiling, 2)
    result.of_ceiling = round(ceiling / result.achieved_s, 3) if result.achieved_s > 0 else None
    result.of_ceiling_wall = round(ceiling / result.wall_s, 3) if result.wall_s > 0 else None
    ok_times: list[float] = result.extra["ok_times"]
    if not ok_times:
        return
    end = ok_times[-1]
    since = min(FIRST_MINUTE_S, end / 2)
    steady = sum(1 for t in ok_times if since < t <= end)
    if end > since:
        result.steady_from_s = round(since, 1)
        result.steady_rps = round(steady / (end - since), 2)
        result.steady_of_limit = round(result.steady_rps / limit_rps, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=None, help="lines in the input (default 5000; quick 800)")
    parser.add_argument("--rpm", type=int, default=None, help="the binding rate, requests a minute (default 2100)")
    parser.add_argument("--tpm", type=int, default=None, help="the mock's TPM (default: from --bind)")
    parser.add_argument("--bind", choices=["rpm", "tpm"], default="rpm", help="which limit binds")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="800 requests at 600 RPM (a 20 s ceiling)")
    parser.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True,
                        help="also run with the limits lifted (the runner's own top speed)")  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.requests or (800 if args.quick else 5000)
    rate = args.rpm or (600 if args.quick else 2100)
    log = (lambda message: None) if args.json else (lambda message: print(message, file=sys.stderr, flush=True))

    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="ferryman-runner-bench-") as tmp:
        work = Path(tmp)
        input_path = work / "in.jsonl"
        costs = write_input(input_path, n, args.max_tokens)
        total_tokens = sum(costs)
        mean_cost = total_tokens / n
        if args.bind == "rpm":
            rpm, tpm = rate, args.tpm or math.ceil(1.25 * rate * mean_cost)
        else:
            rpm, tpm = math.ceil(1.25 * rate), args.tpm or round(rate * mean_cost)
        by_requests, by_tokens = ceiling_seconds(n, total_tokens, rpm, tpm)
        ceiling = max(by_requests, by_tokens)
        if ceiling <= 0:
            parser.error("the whole job fits in the limits' first-minute burst: raise --requests or lower --rpm/--tpm")
        limit_rps = min(rpm / 60, tpm / 60 / mean_cost)

        port = free_port()
        argv = [sys.executable, "-m", "ferryman.cli", "mock", "--host", HOST, "--port", str(port),
                "--rpm", str(rpm), "--tpm", str(tpm)]  # fmt: skip
        with ServerProcess("ferryman mock", argv, port) as mock:
            control = Control(mock.url)
            try:
                limited = run_once("limited", mock, control, input_path, work, n, rpm, tpm, args.concurrency, log)
                add_ceiling(limited, ceiling, limit_rps)
                results.append(limited)
                if args.baseline:
                    free = run_once("unlimited", mock, control, input_path, work, n, UNLIMITED_RPM, UNLIMITED_TPM,
                                    args.concurrency, log)  # fmt: skip
                    results.append(free)
            finally:
                control.close()

    for r in results:
        r.extra.pop("ok_times", None)
    failed = [r for r in results if r.exit_code != 0 or r.results_lines != n]
    met_rate = limited.of_ceiling is not None and limited.of_ceiling >= GOAL
    met_429 = limited.status_429_after_first_minute == 0
    config = {**vars(args), "requests": n, "rpm": rpm, "tpm": tpm, "mean_tokens_per_request": round(mean_cost, 2),
              "total_tokens": total_tokens, "ceiling_rpm_s": round(by_requests, 2),
              "ceiling_tpm_s": round(by_tokens, 2), "limit_rps": round(limit_rps, 3)}  # fmt: skip
    if args.json:
        print(json.dumps({"config": config, "results": [asdict(r) for r in results],
                          "goal_throughput_met": met_rate, "goal_429_met": met_429}, indent=2))  # fmt: skip
        sys.exit(1 if failed else 0)

    print(f"\n{n} requests, mock rpm={rpm} tpm={tpm} ({args.bind} binds; {mean_cost:.1f} tokens a request, "
          f"{total_tokens:,} in all), concurrency {args.concurrency}")  # fmt: skip
    print(f"ceiling: {ceiling:.1f} s from the first request (RPM alone {by_requests:.1f} s, TPM alone "
          f"{by_tokens:.1f} s); sustained limit {limit_rps:.2f} req/s\n")  # fmt: skip
    headers = ["run", "exit", "results", "wall s", "runner CPU s", "first→last 200 s", "req/s", "of ceiling",
               "steady req/s", "steady of limit", "sent", "429s", "429s after 1st min", "other"]  # fmt: skip
    rows = [[r.name, r.exit_code, r.results_lines, r.wall_s, r.runner_cpu_s, r.achieved_s, r.achieved_rps,
             r.of_ceiling, r.steady_rps, r.steady_of_limit, r.sent, r.status_429, r.status_429_after_first_minute,
             r.other_statuses or None] for r in results]  # fmt: skip
    print(table(rows, headers))
    print()
    print(f"achieved {limited.of_ceiling} of the ceiling ({ceiling:.1f} s / {limited.achieved_s} s from the first "
          f"request to the last 200); {limited.of_ceiling_wall} counting the whole command's wall time "
          f"({limited.wall_s} s)")  # fmt: skip
    if limited.steady_rps is not None:
        print(f"steady rate after {limited.steady_from_s:g} s: {limited.steady_rps} req/s = "
              f"{limited.steady_of_limit} of the limit's {limit_rps:.2f} req/s")  # fmt: skip
    when = f"; first at {limited.first_429_s} s, last at {limited.last_429_s} s" if limited.status_429 else ""
    print(f"429s sent by the mock: {limited.status_429} ({limited.status_429_first_minute} in the first minute, "
          f"{limited.status_429_after_first_minute} after it{when})")  # fmt: skip
    if args.baseline and len(results) > 1:
        free = results[1]
        print(f"runner's own top speed (limits lifted): {free.achieved_rps} req/s "
              f"({free.achieved_rps / limit_rps:.1f}x the limit), {free.wall_s} s wall")  # fmt: skip
    if ceiling < FIRST_MINUTE_S:
        print("note: the ceiling is under a minute, so 'after the first minute' covers little or nothing")
    for r in failed:
        print(f"\nRUN FAILED: {r.name} exited {r.exit_code} with {r.results_lines}/{n} results:\n"
              f"{r.runner_stderr_tail}")  # fmt: skip
    print(f"\nGOAL {'MET' if met_rate else 'MISSED'}: achieved >= {GOAL} of the ceiling ({limited.of_ceiling})")
    print(f"GOAL {'MET' if met_429 else 'MISSED'}: no 429s after the first minute "
          f"({limited.status_429_after_first_minute})")  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
