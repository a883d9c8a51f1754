"""``ferryman mock`` as a user runs it: a real process on a real port."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx2
import openai
from typer.testing import CliRunner

from ferryman.cli import app
from ferryman.mock.server import free_port

runner = CliRunner()


def test_help_documents_the_options_and_fault_grammar():
    result = runner.invoke(app, ["mock", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    assert result.exit_code == 0
    for option in (
        "--rpm",
        "--tpm",
        "--batch-seconds",
        "--finetune-seconds",
        "--latency-ms",
        "--fault",
        "--fixtures",
        "--state",
    ):
        assert option in result.output
    assert "cut_after" in result.output and "retry_after_ms" in result.output


def test_top_level_help_and_version():
    assert runner.invoke(app, ["--help"]).exit_code == 0
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("ferryman ")


def test_bad_fault_rule_exits_2_with_a_message():
    result = runner.invoke(app, ["mock", "--fault", "status=abc"])
    assert result.exit_code == 2
    assert "status" in result.output


def _wait_until_up(url: str, process: subprocess.Popen[bytes], deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else "exited"
        try:
            if httpx2.get(url + "/_ferryman/health", timeout=1).status_code == 200:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.05)  # polling a readiness probe, not ordering a test
    raise AssertionError("ferryman mock did not start")


def test_mock_process_serves_the_sdk(tmp_path):
    fixtures = tmp_path / "fixtures.yaml"
    fixtures.write_text("- match: ping\n  content: pong\n")
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ferryman.cli",
            "mock",
            "--port",
            str(port),
            "--rpm",
            "100",
            "--fixtures",
            str(fixtures),
            "--fault",
            "path=/v1/chat/*;model=gpt-4o;status=503",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process)
        client = openai.OpenAI(base_url=url + "/v1", api_key="sk-cli-test", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "ping"}]
        )
        assert raw.parse().choices[0].message.content == "pong"
        assert raw.headers["x-ratelimit-limit-requests"] == "100"
        try:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "ping"}])
            raise AssertionError("the --fault rule did not apply")
        except openai.InternalServerError as error:
            assert error.status_code == 503
    finally:
        process.terminate()
        process.wait(10)
    assert process.returncode in (0, -15)
