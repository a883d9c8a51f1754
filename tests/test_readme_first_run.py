"""The README's two commands, run as a newcomer runs them: a fresh clone, a fresh virtualenv.

The first command installs Ferryman and starts ``ferryman serve``; the test then uses what it
prints, as the README says to: the two ``export`` lines with the official SDK, and the admin key
with the dashboard in Chromium. The second command is the whole test suite, which cannot run
inside itself: it runs with ``--collect-only`` added (so it installs the development extras into
that same ``.venv``, runs ruff and mypy, and collects every test), the one change to it.

The clone is of this repository's ``HEAD`` (uncommitted changes are not in it). Slow (minutes,
most of it pip), and in CI: ``.ci/run`` runs the whole suite.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
INSTALL_DEADLINE_S = 900.0  # clone to the first printed key: pip in a fresh venv, with a cold cache
MODEL = "gpt-6-luna"  # no shutdown date in the shipped table


def readme_commands() -> list[str]:
    """The commands of the README's first code block, without their trailing comments."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "the README starts with a bash block of its two commands"
    commands = [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def newcomer_env(tmp: Path) -> dict[str, str]:
    """This machine's environment less anything of ours: no OpenAI or Ferryman variables, no
    active virtualenv. pip keeps its configuration (the package index), so HOME stays."""
    venv_bin = str(Path(sys.executable).parent)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "FERRYMAN_", "PYTEST_", "COV_")) and k not in ("VIRTUAL_ENV", "PYTHONPATH")
    }
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    env["FERRYMAN_DATA_DIR"] = str(tmp / "data")  # not the user's own data directory
    return env


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    target = tmp_path / "ferryman"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, timeout=120)
    return target


class Lines:
    """A process's stderr, read on a thread, so the test can wait for a line with a deadline."""

    def __init__(self, stream: object) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    def until(self, pattern: str, deadline: float) -> re.Match[str]:
        for line in self.seen:
            if found := re.search(pattern, line):
                return found
        while True:
            try:
                line = self.queue.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} in time; stderr so far:\n" + self.tail()) from None
            if line is None:
                raise AssertionError(f"the process ended before printing {pattern!r}:\n" + self.tail())
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found

    def tail(self) -> str:
        return "\n".join(self.seen[-60:])


@pytest.fixture
def first_command(clone: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Lines, int]]:
    install_and_serve = readme_commands()[0]
    assert install_and_serve.endswith("ferryman serve"), install_and_serve
    port = free_port()
    env = newcomer_env(tmp_path)
    env["FERRYMAN_GATEWAY__PORT"] = str(port)  # the command as written; the port is a setting
    process = subprocess.Popen(
        ["bash", "-c", install_and_serve],
        cwd=clone,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: bash, pip, then ferryman serve
    )
    lines = Lines(process.stderr)
    try:
        yield process, lines, port
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_the_readme_s_two_commands_work_from_a_fresh_clone(first_command, clone, tmp_path):
    process, lines, port = first_command
    deadline = time.monotonic() + INSTALL_DEADLINE_S
    base_url = lines.until(r"export OPENAI_BASE_URL=(\S+)", deadline).group(1)
    api_key = lines.until(r"export OPENAI_API_KEY=(\S+)", deadline).group(1)
    assert base_url == f"http://127.0.0.1:{port}/v1"

    # The exports, with the official SDK: a reply from the embedded emulator, through the gateway.
    # A newcomer's run has no FERRYMAN_MOCK_TODAY: the emulator acts on the real date, so the model
    # is one with no shutdown date (gpt-4o-mini's successor), not one that retires under the test;
    # it reasons, and its cap holds the reasoning tokens as well as the answer.
    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=30)
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_completion_tokens=400
    )
    assert reply.choices[0].message.content and reply.usage is not None and reply.usage.total_tokens > 0

    # The admin key, printed once with the dashboard's address, logs in there.
    lines.until(r"created an admin key in (\S+), shown only this once", deadline)
    index = len(lines.seen)
    admin_key = lines.until(r"^\s+(\S+)\s*$", deadline).group(1)
    assert len(lines.seen) == index + 1, "the admin key is the line after the one announcing it"
    ui = lines.until(r"(http://\S+/ui)\b", deadline).group(1)
    assert ui == f"http://127.0.0.1:{port}/ui"
    key_file = tmp_path / "data" / "admin.key"
    assert key_file.read_text().strip() == admin_key and key_file.stat().st_mode & 0o777 == 0o600
    shown = dashboard_rows(ui, admin_key)
    assert any(MODEL in row for row in shown), shown

    os.killpg(process.pid, signal.SIGTERM)  # the documented stop: a drain, then exit 0
    assert process.wait(timeout=60) == 0, lines.tail()

    # The second command, the whole test suite, with --collect-only (it cannot run inside itself).
    suite = readme_commands()[1]
    assert suite == "./scripts/test", suite
    done = subprocess.run(
        ["bash", "-c", suite + " --collect-only"],
        cwd=clone,
        env=newcomer_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=INSTALL_DEADLINE_S,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "== ruff" in done.stdout and "== mypy" in done.stdout and "Success: no issues found" in done.stdout
    assert re.search(r"^\d+ tests collected", done.stdout, re.M), done.stdout[-2000:]


def dashboard_rows(ui: str, admin_key: str) -> list[str]:
    """Log in at ``ui`` in Chromium with ``admin_key``; the recent requests table's rows."""
    if not (CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)):
        if os.environ.get("FERRYMAN_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{CHROMIUM} is missing, and FERRYMAN_REQUIRE_SERVICES=1 makes the browser tests mandatory")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(ui)
            page.fill("#admin-key", admin_key)
            page.click("#login-form button[type=submit]")
            page.wait_for_selector("body[data-loaded]")
            page.wait_for_selector("#requests tbody tr")
            assert page.is_hidden("#login-form")
            return [row.inner_text() for row in page.locator("#requests tbody tr").all()]
        finally:
            browser.close()
