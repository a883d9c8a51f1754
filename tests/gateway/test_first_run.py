"""``ferryman serve`` with no admin key configured, and on a port it cannot have.

An operator's first run must leave them able to log in at ``/ui``: it makes ``admin.key`` (0600) in
the data directory and shows the key once, with the dashboard's URL; every later run says where the
key is, never the key, and never replaces the file. A busy port must be one line and exit 2, with
nothing printed, started or made before it. Real ``python -m ferryman.cli serve`` subprocesses, real
HTTP over loopback; the admin API is called with the key the banner showed.
"""

from __future__ import annotations

import re
import secrets
import socket
import stat
from pathlib import Path

import httpx2
import pytest

from ferryman.mock.control_client import MockControl
from tests.gateway.processes import GatewayProcess, first_run_env, run_cli, start_gateway

FIRST_RUN = re.compile(
    r"^created an admin key in (?P<path>\S+), shown only this once:\n"
    r"  (?P<key>[0-9a-f]{64})\n"
    r"  log in with it at (?P<ui>\S+) \(the admin API takes it as a Bearer token\)$",
    re.MULTILINE,
)
KEYS_HINT = "caller keys: ferryman keys create --name NAME"


def served(env: dict[str, str], workdir: Path, workers: int = 1) -> GatewayProcess:
    process = start_gateway(env, workdir, "--workers", str(workers))
    try:
        process.wait_ready(180 if workers > 1 else 30)  # workers each import everything: slow on a busy machine
    except BaseException:
        process.stop()
        raise
    return process


def stopped(process: GatewayProcess) -> str:
    """SIGTERM, wait; the output, once the process exited 0 (nothing was in flight)."""
    process.stop()
    assert process.process.returncode == 0, process.output()[-3000:]
    return process.output()


def admin(process: GatewayProcess, key: str) -> httpx2.Client:
    return httpx2.Client(base_url=process.url, headers={"authorization": f"Bearer {key}"}, timeout=10)


@pytest.mark.parametrize("workers", [1, 2])  # with workers, they take the key from the file as the parent does
def test_first_run_makes_an_admin_key_shows_it_once_and_later_runs_only_say_where(
    ferryman_mock: MockControl, tmp_path: Path, workers: int
):
    data = tmp_path / "data"
    env = first_run_env(data, ferryman_mock.base_url)
    first = served(env, tmp_path / "first", workers)
    try:
        found = FIRST_RUN.search(first.output())
        assert found, first.output()
        key = found["key"]
        path = data / "admin.key"
        assert Path(found["path"]) == path.absolute()
        assert found["ui"] == f"{first.url}/ui"
        assert first.output().count(key) == 1  # shown once, nowhere else (no log line quotes it)
        assert KEYS_HINT in first.output()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == key

        assert httpx2.get(first.url + "/ui").status_code == 200  # the dashboard, which logs in with the key
        with admin(first, key) as http:
            made = http.post("/admin/keys", json={"name": "team-a"})
            assert made.status_code == 201, made.text
            assert http.get("/admin/keys").status_code == 200
        with admin(first, secrets.token_hex(32)) as http:
            assert http.get("/admin/keys").status_code == 401
    finally:
        output = stopped(first)
    assert output.count(key) == 1
    before = path.stat()

    second = served(env, tmp_path / "second", workers)
    try:
        with admin(second, key) as http:  # the same key, from the file
            listed = http.get("/admin/keys")
            assert listed.status_code == 200 and [k["name"] for k in listed.json()["data"]] == ["team-a"]
    finally:
        output = stopped(second)
    assert key not in output
    assert "created an admin key" not in output
    assert f"admin key: in {path.absolute()} (cat it to log in at {second.url}/ui)" in output
    assert KEYS_HINT in output
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
        before.st_ino,
        before.st_mtime_ns,
        0o600,
    )
    assert path.read_text().strip() == key


def test_an_admin_key_file_already_there_is_used_and_never_replaced(ferryman_mock: MockControl, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    key = secrets.token_hex(24)  # the operator's own, in the file before the first run
    path = data / "admin.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    process = served(first_run_env(data, ferryman_mock.base_url), tmp_path / "work")
    try:
        with admin(process, key) as http:
            assert http.get("/admin/keys").status_code == 200
    finally:
        output = stopped(process)
    assert key not in output and "created an admin key" not in output
    assert f"admin key: in {path.absolute()}" in output
    assert path.read_text() == key + "\n"


def test_a_configured_admin_key_makes_no_file(ferryman_mock: MockControl, tmp_path: Path):
    data = tmp_path / "data"
    env = first_run_env(data, ferryman_mock.base_url)
    env["FERRYMAN_ADMIN_KEY"] = secrets.token_hex(24)
    process = served(env, tmp_path / "work")
    try:
        with admin(process, env["FERRYMAN_ADMIN_KEY"]) as http:
            assert http.get("/admin/keys").status_code == 200
    finally:
        output = stopped(process)
    assert not (data / "admin.key").exists()
    assert "admin key" not in output and env["FERRYMAN_ADMIN_KEY"] not in output


@pytest.mark.parametrize("workers", [1, 2])
def test_a_busy_port_is_one_line_and_exit_2_before_anything_else(tmp_path: Path, workers: int):
    """No upstream and no admin key: the run that would start the embedded mock, make a demo key and
    an admin key. On a busy port it does none of it, and prints no address."""
    data = tmp_path / "data"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port), "--workers", str(workers), env=first_run_env(data), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"ferryman serve: port {port} on 127.0.0.1 is in use (choose another with --port)"
    ], done.stderr
    assert done.stdout == ""
    assert "on http://" not in done.stderr
    assert not (data / "admin.key").exists()
    assert not data.exists() or not list(data.glob("*.db"))  # no store opened either
