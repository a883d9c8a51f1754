"""Writing the results and errors files from the journal.

Both are written whole at the end of every run (a temporary file, then an atomic rename), so
each holds exactly one line per ``custom_id`` and never a torn line, however the run ended. One
that does not fit on the disk is :class:`~ferryman.batch.disk.DiskFull` naming it, and leaves the
previous file as it was (the journal has every result: the next run writes it).

A results line::

    {"custom_id": "r1", "line": 1, "status": 200, "attempts": 1, "input_tokens": 12,
     "output_tokens": 40, "cost_usd": "0.0000258", "via": "live", "response": {...}, "error": null}

An errors line (every failed or unreadable input line): ``custom_id``, ``line``, ``status`` (None
when there was no reply), ``error`` (the reason), and the ``response`` body when there was one.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from ferryman.batch.disk import DiskFull
from ferryman.batch.journal import Journal
from ferryman.files import atomic_private
from ferryman.store.faults import disk_full


def errors_path(output: Path) -> Path:
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".errors.jsonl")


def _write(path: Path, lines: list[bytes], what: str) -> None:
    try:
        with atomic_private(path, "wb") as handle:  # 0600: it holds the replies
            for line in lines:
                handle.write(line + b"\n")
    except OSError as error:
        if disk_full(error):
            raise DiskFull(path, what, error) from error
        raise


def write_results(journal: Journal, output: Path, order: str = "input") -> tuple[int, int]:
    """Write the results (every line with a result) and errors files; returns their line counts."""
    results: list[bytes] = []
    for row in journal.rows(order):
        state = row.pop("state")
        if state == "failed" and row["error"] is None:
            row["error"] = f"HTTP {row['status']}"
        results.append(orjson.dumps(row))
    errors: list[bytes] = []
    for row in journal.rows("input", ("failed", "bad")):
        errors.append(
            orjson.dumps(
                {
                    "custom_id": row["custom_id"]
                    if row["state"] != "bad" or not row["custom_id"].startswith("bad-line-")
                    else None,
                    "line": row["line"],
                    "status": row["status"],
                    "error": row["error"] or f"HTTP {row['status']}",
                    "response": row["response"],
                }
            )
        )
    _write(output, results, "the results file")
    _write(errors_path(output), errors, "the errors file")
    return len(results), len(errors)
