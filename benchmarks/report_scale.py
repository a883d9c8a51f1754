"""``ferryman report`` over a million audit records: its time and peak memory.

    python benchmarks/report_scale.py [--rows 1000000] [--postgres URL] [--json]

Synthetic audit rows (30 days, 20 models, 50 keys, 5 teams in tags, 2 % 429s, 1 % 500s, a third
of them streamed with a TTFT) are written straight into a fresh store (outside the hash chain: the
report does not verify it), then each variant runs as its own process, the installed command
``ferryman report --format json --store URL``: the wall time of the whole process and its peak
RSS (``ru_maxrss`` of the child). The baseline, measured in the same run, is the floor of any
report: one process that opens the same database and sums the period's cost and tokens in one
``SELECT`` through the plain DB-API driver.

Goal (issue #14): under 5 s and under 300 MB on SQLite here. PostgreSQL runs too when
``--postgres`` names a server (a database of its own is made and dropped), or when one answers on
127.0.0.1:5432.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

TIME_GOAL_S = 5.0
RSS_GOAL_MB = 300.0
DAY = 86_400
MODELS = [f"model-{i:02d}" for i in range(18)] + ["gpt-4o-mini", "gpt-4o"]
VARIANTS = {
    "report (totals, by model)": [],
    "report --by day --by model": ["--by", "day", "--by", "model"],
    "report --by key --by tag:team": ["--by", "key", "--by", "tag:team"],
}
BASELINE = """
import sys, time
url, since = sys.argv[1], float(sys.argv[2])
if url.startswith("sqlite"):
    import sqlite3
    conn = sqlite3.connect(url.split("///", 1)[1])
    mark = "?"
else:
    import psycopg
    conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    mark = "%s"
cur = conn.cursor()
cur.execute(
    f"SELECT count(*), sum(cost_usd), sum(input_tokens), sum(output_tokens) FROM audit WHERE ts >= {mark}", (since,)
)
print(cur.fetchone())
"""


def _rows(count: int, now: float) -> Any:
    rng = random.Random(14)
    for i in range(count):
        model = MODELS[rng.randrange(len(MODELS))]
        status = 429 if rng.random() < 0.02 else 500 if rng.random() < 0.01 else 200
        tokens_in = 0 if status != 200 else rng.randint(50, 4000)
        tokens_out = 0 if status != 200 else rng.randint(5, 800)
        streamed = rng.random() < 0.33
        yield (
            now - rng.random() * 30 * DAY,
            f"req_{i:08d}",
            f"key_{rng.randrange(50):04d}",
            "openai",
            model,
            "/chat/completions",
            status,
            1,
            rng.uniform(80, 3000),
            rng.uniform(50, 600) if streamed else None,
            tokens_in,
            0,
            tokens_out,
            0,
            f"{(tokens_in * 0.15 + tokens_out * 0.6) / 1_000_000:.10f}",
            "miss",
            json.dumps({"team": f"team-{rng.randrange(5)}"}),
            "0" * 64,
            "0" * 64,
        )


COLUMNS = (
    "ts, request_id, principal, upstream, model, endpoint, status, attempts, latency_ms, ttft_ms, input_tokens, "
    "cached_tokens, output_tokens, reasoning_tokens, cost_usd, cache, tags, prev_hash, hash"
)


def populate(url: str, count: int, now: float) -> None:
    from ferryman.config import Settings
    from ferryman.store import open_store

    store = open_store(Settings(), url)  # the schema at head, by the migrations
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        mark = "?" if url.startswith("sqlite") else "%s"
        insert = f"INSERT INTO audit ({COLUMNS}) VALUES ({', '.join([mark] * 19)})"
        batch: list[tuple[Any, ...]] = []
        for row in _rows(count, now):
            batch.append(row)
            if len(batch) == 50_000:
                cursor.executemany(insert, batch)
                batch.clear()
        if batch:
            cursor.executemany(insert, batch)
        raw.commit()
    finally:
        raw.close()
        store.close()


def _ferryman() -> str:
    here = Path(sys.executable).parent / "ferryman"
    return str(here) if here.exists() else "ferryman"


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB, this child's own ``ru_maxrss`` from ``wait4``) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        child = subprocess.Popen(argv, env=env, stdout=out, stderr=errors, stdin=subprocess.DEVNULL, text=True)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        errors.seek(0)
        if child.returncode != 0:
            raise SystemExit(f"{' '.join(argv[:3])} failed ({child.returncode}): {errors.read().strip()[-500:]}")
        return elapsed, usage.ru_maxrss / 1024, out.read()


def run_on(label: str, url: str, rows: int, env: dict[str, str]) -> list[dict[str, Any]]:
    now = time.time()
    started = time.perf_counter()
    populate(url, rows, now)
    print(f"{label}: {rows:,} rows written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    since = str(now - 30 * DAY)
    base_s, base_mb, _ = measure([sys.executable, "-c", BASELINE, url, since], env)
    results = []
    for name, extra in VARIANTS.items():
        seconds, rss_mb, out = measure([_ferryman(), "report", "--format", "json", "--store", url, *extra], env)
        report = json.loads(out)
        assert report["totals"]["requests"] > 0
        results.append(
            {
                "store": label,
                "variant": name,
                "seconds": seconds,
                "rss_mb": rss_mb,
                "baseline_s": base_s,
                "baseline_rss_mb": base_mb,
                "requests": report["totals"]["requests"],
                "time_met": seconds < TIME_GOAL_S,
                "rss_met": rss_mb < RSS_GOAL_MB,
            }
        )
    return results


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def postgres_run(server: str, rows: int, env: dict[str, str]) -> list[dict[str, Any]]:
    import psycopg

    name = f"ferryman_bench_{os.getpid()}"
    admin = psycopg.connect(server.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = server.rsplit("/", 1)[0]
        url = f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
        return run_on("postgresql", url, rows, env)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (default: 127.0.0.1:5432 when it answers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FERRYMAN_")}
        env["FERRYMAN_DATA_DIR"] = str(Path(tmp) / "data")
        results += run_on("sqlite", f"sqlite:///{Path(tmp) / 'audit.db'}", args.rows, env)
        server = args.postgres or ("postgresql://postgres@127.0.0.1:5432/test" if _answers(5432) else None)
        if server:
            results += postgres_run(server, args.rows, env)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    rows = [
        [
            r["store"],
            r["variant"],
            f"{r['seconds']:.2f} s",
            f"{r['baseline_s']:.2f} s",
            f"{r['seconds'] / r['baseline_s']:.2f}x",
            f"{r['rss_mb']:.0f} MB",
            ("met" if r["time_met"] and r["rss_met"] else "missed") if r["store"] == "sqlite" else "-",
        ]
        for r in results
    ]
    print(f"{args.rows:,} audit rows; goal on SQLite: < {TIME_GOAL_S:g} s and < {RSS_GOAL_MB:g} MB")
    print(table(rows, ["store", "what", "time", "baseline", "ratio", "peak RSS", "verdict"]))


if __name__ == "__main__":
    main()
