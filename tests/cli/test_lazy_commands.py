"""The top-level command imports a subcommand only when it is used, and still lists every one.

``ferryman --help`` is checked in a fresh interpreter (``sys.modules`` is per process), so the
assertion is about what a user's shell pays, not about what this test session imported already.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ferryman.cli import LAZY_COMMANDS, app, load_command

runner = CliRunner()
PLAIN = {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
# What the subcommands need and ``--help`` must not pay for.
HEAVY = (
    "sqlalchemy", "pydantic_settings", "aiohttp", "openai", "ferryman.config", "ferryman.gateway", "ferryman.batch",
)  # fmt: skip


def _first_paragraph(text: str | None) -> str:
    return " ".join((text or "").strip().split("\n\n")[0].split())


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_each_listed_line_is_the_real_commands_own(name):
    real = load_command(name)
    assert LAZY_COMMANDS[name][1] == _first_paragraph(real.short_help or real.help), (
        f"update LAZY_COMMANDS[{name!r}] in ferryman/cli.py to the command's first help line"
    )


def test_top_level_help_lists_every_command_without_importing_them():
    code = (
        "import json, sys\n"
        "from ferryman.cli import app\n"
        "try:\n"
        "    app(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({HEAVY!r}))), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**PLAIN}, check=True)
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
    for name in ("mock", *LAZY_COMMANDS):
        assert f" {name} " in done.stdout


def test_a_lazy_group_runs_its_real_subcommands():
    result = runner.invoke(app, ["keys", "--help"], env=PLAIN)
    assert result.exit_code == 0, result.output
    for sub in ("create", "list", "rotate", "revoke"):
        assert sub in result.output


def test_a_lazy_command_parses_its_real_options():
    result = runner.invoke(app, ["run", "--help"], env=PLAIN)
    assert result.exit_code == 0, result.output
    assert "INPUT.jsonl" in result.output and "--output" in result.output


def test_a_misspelt_command_is_suggested_by_its_listed_name():
    result = runner.invoke(app, ["kyes"], env=PLAIN)
    assert result.exit_code == 2
    assert "Did you mean 'keys'" in result.output
