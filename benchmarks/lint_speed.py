"""``ferryman lint``'s speed on real code: lines per second on the corpus of ``scripts/lint_corpus.py``.

    python benchmarks/lint_speed.py [--runs 3] [--json]

The corpus is the sources and examples of openai, openai-agents and langchain-openai (pinned sdists
from PyPI, cached; ~2,700 files, ~440,000 lines). Two measurements, the best of ``--runs`` each
(noise from other work only ever slows a run down):

- **in one process**: every file's bytes, read beforehand, linted with ``lint_source`` (all rules,
  opt-in ones too), against the baseline of plain ``ast.parse`` of the same bytes in the same run:
  the ratio is what the rules cost on top of the parse, which no Python linter built on ``ast`` avoids;
- **the command**: ``ferryman lint <corpus> --select ALL`` as a user runs it, a whole process (start-up,
  finding the files, reading them, the worker processes, the report), against the goal of issue #13:
  all of the corpus in under 5 s. It prints "met" or "missed".

The garbage collector is paused while a run is measured, as the linter itself does. The benchmark
reports; it exits non-zero only when the corpus cannot be fetched or the command fails to run.
"""

from __future__ import annotations

import argparse
import ast
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table

ROOT = Path(__file__).resolve().parents[1]
GOAL_S = 5.0


def _corpus() -> object:
    spec = importlib.util.spec_from_file_location("lint_corpus", ROOT / "scripts" / "lint_corpus.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["lint_corpus"] = module
    spec.loader.exec_module(module)
    return module


def _best(runs: int, work: object) -> float:
    best = float("inf")
    for _ in range(runs):
        gc.collect()
        gc.disable()
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
        gc.enable()
    return best


def _command(roots: list[str]) -> float:
    here = Path(sys.executable).parent / "ferryman"
    argv = [str(here) if here.exists() else "ferryman", "lint", "--select", "ALL", "--today", "2026-12-04",
            "--format", "json", *roots]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"ferryman lint failed ({done.returncode}):\n{done.stderr.decode()[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (the best is kept)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    from ferryman.lint.config import Options
    from ferryman.lint.engine import cpus, lint_source
    from ferryman.lint.rules import enabled

    corpus = _corpus()
    cache = corpus.fetch()  # type: ignore[attr-defined]
    files = corpus.files(cache)  # type: ignore[attr-defined]
    sources = [(path, Path(path).read_bytes()) for path in files]
    lines = sum(source.count(b"\n") for _, source in sources)
    options = Options(enabled(["ALL"]), corpus.TODAY)  # type: ignore[attr-defined]

    def parse() -> None:
        for _, source in sources:
            ast.parse(source)

    def lint() -> None:
        for path, source in sources:
            lint_source(source, path, options)

    parse_s = _best(args.runs, parse)
    lint_s = _best(args.runs, lint)
    roots = corpus.roots(cache)  # type: ignore[attr-defined]
    command_s = min(_command(roots) for _ in range(args.runs))
    results = {
        "files": len(sources),
        "lines": lines,
        "cpus": cpus(),
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "ast_parse_s": parse_s,
        "lint_one_process_s": lint_s,
        "ratio_to_ast_parse": lint_s / parse_s,
        "lines_per_s_one_process": lines / lint_s,
        "command_s": command_s,
        "lines_per_s_command": lines / command_s,
        "goal_s": GOAL_S,
        "met": command_s < GOAL_S,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"corpus: {len(sources)} files, {lines:,} lines; {cpus()} CPUs; best of {args.runs} runs")
    rows = [
        ("ast.parse (baseline)", f"{parse_s:.2f} s", f"{lines / parse_s:,.0f}", "1.00x", "", ""),
        ("lint_source, one process", f"{lint_s:.2f} s", f"{lines / lint_s:,.0f}", f"{lint_s / parse_s:.2f}x", "", ""),
        ("ferryman lint (command)", f"{command_s:.2f} s", f"{lines / command_s:,.0f}", f"{command_s / parse_s:.2f}x",
         f"< {GOAL_S:.0f} s", "met" if command_s < GOAL_S else "missed"),
    ]  # fmt: skip
    print(table(rows, ["what", "time", "lines/s", "vs ast.parse", "goal", "verdict"]))


if __name__ == "__main__":
    main()
