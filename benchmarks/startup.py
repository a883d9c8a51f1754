"""Start-up: what Ferryman adds to a command-line call, to building a client and to its first call.

    python benchmarks/startup.py [--runs 9] [--json]

Whole processes, each started fresh (``python -c …``; the median of ``--runs`` runs, runs of the
variants interleaved so drift on the machine hits them alike), with the Ferryman mock as the
upstream in its own subprocess and a data directory made (and migrated) before the first run, and
bytecode cached as on a user's machine (``PYTHONDONTWRITEBYTECODE`` is dropped for the runs):

- **``ferryman --help``**: the installed entry point, against ``python -c pass`` (the interpreter's
  own start, the baseline);
- **construction**: ``import ferryman; ferryman.OpenAI(base_url=mock)`` against
  ``import openai; openai.OpenAI(base_url=mock)``: the process's time, less the plain one's;
- **first call**: the same processes, each making one chat completion after construction: the
  first call's time (the process's, less its construct-only twin's) through Ferryman, less the
  plain SDK's (whose first call imports and builds the SDK's resources, which Ferryman's pays
  too).

Goals (issue #12): ``ferryman --help`` <= 0.3 s; construction adds <= 0.3 s; the first call adds
<= 0.2 s. Each line prints the ratio against its baseline from the same run and "met" or
"missed". The benchmark reports; it exits non-zero only when the mock fails to start.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ServerProcess, free_port, table

HELP_GOAL_S = 0.3
CONSTRUCT_GOAL_S = 0.3
FIRST_CALL_GOAL_S = 0.2

CALL = (
    "c.chat.completions.create(model='gpt-4o-mini', max_tokens=16,"
    " messages=[{'role': 'user', 'content': 'Say hello in five words.'}])"
)
PLAIN = "import openai", "openai.OpenAI(base_url=BASE, api_key='local', max_retries=0)"
FERRYMAN = "import ferryman", "ferryman.OpenAI(base_url=BASE, api_key='local')"


def script(client: tuple[str, str], call: bool) -> str:
    """A process that imports, constructs (and calls), printing its in-process marks as JSON."""
    imports, construct = client
    return "\n".join(
        [
            "import json, time",
            "t0 = time.perf_counter()",
            imports,
            "t1 = time.perf_counter()",
            f"c = {construct}",
            "t2 = time.perf_counter()",
            CALL if call else "pass",
            "t3 = time.perf_counter()",
            "print(json.dumps({'import_s': t1 - t0, 'construct_s': t2 - t1, 'call_s': t3 - t2}))",
        ]
    )


SCRIPTS = {
    "python": "pass",
    "plain construct": script(PLAIN, call=False),
    "ferryman construct": script(FERRYMAN, call=False),
    "plain call": script(PLAIN, call=True),
    "ferryman call": script(FERRYMAN, call=True),
}


def _ferryman_command() -> list[str]:
    here = Path(sys.executable).parent / "ferryman"
    found = str(here) if here.exists() else shutil.which("ferryman")
    if not found:
        raise SystemExit("the ferryman command is not installed in this environment (pip install -e .)")
    return [found]


def _time(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """The process's wall time, and the in-process marks it printed (if any)."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:3])} failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    last = done.stdout.decode().strip().splitlines()[-1:] if argv[1:2] == ["-c"] else []
    return elapsed, (json.loads(last[0]) if last and last[0].startswith("{") else {})


def measure(runs: int, base_url: str, data_dir: str) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Whole-process medians per variant, and the medians of the in-process marks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "FERRYMAN_"))}
    env["FERRYMAN_DATA_DIR"] = data_dir
    # As on a user's machine, bytecode is cached (the warm-up run writes it): a session that sets
    # PYTHONDONTWRITEBYTECODE would otherwise compile every Ferryman module at every start.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    argvs = {name: [sys.executable, "-c", f"BASE = {base_url!r}\n{code}"] for name, code in SCRIPTS.items()}
    argvs["ferryman --help"] = [*_ferryman_command(), "--help"]
    for argv in argvs.values():  # warm the page cache and the bytecode; the data directory is migrated
        _time(argv, env)
    samples: dict[str, list[float]] = {name: [] for name in argvs}
    marks: dict[str, dict[str, list[float]]] = {name: {} for name in argvs}
    for _ in range(runs):
        for name, argv in argvs.items():
            elapsed, inside = _time(argv, env)
            samples[name].append(elapsed)
            for mark, value in inside.items():
                marks[name].setdefault(mark, []).append(value)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    inner = {name: {m: statistics.median(v) for m, v in found.items()} for name, found in marks.items() if found}
    return medians, inner


def report(medians: dict[str, float]) -> dict[str, dict[str, float | bool]]:
    first_plain = medians["plain call"] - medians["plain construct"]
    first_ferryman = medians["ferryman call"] - medians["ferryman construct"]
    added_construct = medians["ferryman construct"] - medians["plain construct"]
    return {
        "ferryman --help": {
            "seconds": medians["ferryman --help"],
            "baseline_s": medians["python"],
            "ratio": medians["ferryman --help"] / medians["python"],
            "goal_s": HELP_GOAL_S,
            "met": medians["ferryman --help"] <= HELP_GOAL_S,
        },
        "construction (added)": {
            "seconds": added_construct,
            "baseline_s": medians["plain construct"],
            "ratio": medians["ferryman construct"] / medians["plain construct"],
            "goal_s": CONSTRUCT_GOAL_S,
            "met": added_construct <= CONSTRUCT_GOAL_S,
        },
        "first call (added)": {
            "seconds": first_ferryman - first_plain,
            "baseline_s": first_plain,
            "ratio": first_ferryman / first_plain,
            "goal_s": FIRST_CALL_GOAL_S,
            "met": first_ferryman - first_plain <= FIRST_CALL_GOAL_S,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9, help="runs of each process (the median is kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    port = free_port()
    mock = [*_ferryman_command(), "mock", "--port", str(port), "--rpm", "1000000000", "--tpm", "1000000000000"]
    data_dir = tempfile.mkdtemp(prefix="ferryman-startup-")
    try:
        with ServerProcess("mock", mock, port) as server:
            medians, inner = measure(args.runs, server.url + "/v1", data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    results = report(medians)
    if args.json:
        print(json.dumps({"medians_s": medians, "in_process_s": inner, "results": results}, indent=2))
        return
    print(f"whole-process medians of {args.runs} runs each:")
    print(table([(name, f"{value:.3f} s") for name, value in medians.items()], ["process", "median"]))
    rows = [
        (
            name,
            f"{r['seconds']:.3f} s",
            f"{r['baseline_s']:.3f} s",
            f"{r['ratio']:.2f}x",
            f"<= {r['goal_s']} s",
            "met" if r["met"] else "missed",
        )
        for name, r in results.items()
    ]
    print(table(rows, ["what", "time", "baseline", "ratio", "goal", "verdict"]))
    print("in-process medians (perf_counter inside each process; no interpreter start or teardown):")
    marks = [
        (name, *(f"{found.get(m, 0.0):.3f} s" for m in ("import_s", "construct_s", "call_s")))
        for name, found in inner.items()
    ]
    print(table(marks, ["process", "import", "construct", "first call"]))


if __name__ == "__main__":
    main()
