"""Helpers for ``ferryman run`` tests: the real CLI as a subprocess, against the session's mock.

``batch_job`` (a :class:`Job`) owns a temporary directory with the input, the output and the
pipeline's data dir; ``job.run(*args)`` runs ``python -m ferryman.cli run INPUT -o OUTPUT ARGS``
to the end and returns the finished process, ``job.start(*args)`` starts it and returns the
``Popen``. The environment points the CLI at the mock (``OPENAI_BASE_URL``, a non-``sk`` test key)
and nowhere else: no ``FERRYMAN_CONFIG``, no other ``FERRYMAN_*`` or ``OPENAI_*`` variable.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ferryman.mock.control_client import MockControl

TEST_KEY = "batch-test-key-not-a-secret"
CLI_TIMEOUT_S = 60.0


def chat_line(custom_id: str, model: str = "gpt-4o-mini", max_tokens: int = 3, **body: Any) -> dict[str, Any]:
    """A Batch API line for chat completions whose message names its custom_id (so the mock's
    request log shows which line each request was)."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": model,
            "messages": [{"role": "user", "content": f"line {custom_id}"}],
            "max_tokens": max_tokens,
            **body,
        },
    }


def batch_line(custom_id: str, url: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def write_jsonl(path: Path, rows: Iterable[dict[str, Any] | str]) -> Path:
    """One line per row: dicts as JSON, strings as they are (for broken lines)."""
    with path.open("wb") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else orjson.dumps(row).decode()).encode() + b"\n")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def request_line_id(entry: dict[str, Any]) -> str | None:
    """The custom_id a chat request logged by the mock was sent for (see :func:`chat_line`)."""
    body = entry.get("body")
    if not isinstance(body, dict):
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    content = messages[-1].get("content") if isinstance(messages[-1], dict) else None
    if isinstance(content, str) and content.startswith("line "):
        return content[len("line ") :]
    return None


def journal_states(path: Path) -> dict[str, str]:
    """custom_id → state, read from a journal file (safe while the runner writes it: WAL)."""
    db = sqlite3.connect(path, timeout=5)
    try:
        return dict(db.execute("SELECT custom_id, state FROM lines").fetchall())
    finally:
        db.close()


def journal_recorded(path: Path) -> int:
    """How many lines have a committed result; 0 while the journal is not made yet."""
    if not path.exists():
        return 0
    db = sqlite3.connect(path, timeout=5)
    try:
        row = db.execute("SELECT COUNT(*) FROM lines WHERE state IN ('done', 'failed')").fetchone()
        return int(row[0])
    except sqlite3.Error:  # the schema is not there yet
        return 0
    finally:
        db.close()


class Job:
    """One ``ferryman run`` job in its own directory."""

    def __init__(self, root: Path, mock: MockControl) -> None:
        self.root = root
        self.mock = mock
        self.input = root / "in.jsonl"
        self.output = root / "out.jsonl"
        self.errors = root / "out.errors.jsonl"
        self.journal = root / "out.jsonl.journal"
        self.data = root / "data"

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FERRYMAN_", "OPENAI_", "AZURE_OPENAI")) and k not in ("COLUMNS", "LINES")
        }
        env.update(
            OPENAI_BASE_URL=self.mock.base_url,
            OPENAI_API_KEY=TEST_KEY,
            FERRYMAN_DATA_DIR=str(self.data),
            COLUMNS="200",  # rich's tables at full width in a pipe
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def argv(self, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "ferryman.cli", "run", str(self.input), "-o", str(self.output), *args]
        return argv if "--progress" in args else [*argv, "--no-progress"]

    def write(self, rows: Iterable[dict[str, Any] | str]) -> Path:
        return write_jsonl(self.input, rows)

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            cwd=self.root,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def run(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=self.root,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    def results(self) -> list[dict[str, Any]]:
        return read_jsonl(self.output)

    def error_rows(self) -> list[dict[str, Any]]:
        return read_jsonl(self.errors)

    def states(self) -> dict[str, str]:
        return journal_states(self.journal)


@pytest.fixture
def batch_job(ferryman_mock: MockControl, tmp_path: Path) -> Iterator[Job]:
    """A job directory whose CLI runs talk to the (reset) session mock."""
    yield Job(tmp_path, ferryman_mock)
