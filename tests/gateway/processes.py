"""Real ``ferryman serve`` processes, for the tests that need more than one gateway or a kill -9.

:func:`start_gateway` runs ``python -m ferryman.cli serve`` in a subprocess in front of an upstream
(the session's mock), with a clean environment: settings only from the variables set here, the
admin key :data:`ADMIN_KEY`, one audit checkpoint key for every process (``env:`` reference), and
its output in a log file (never a pipe that could fill and stall it). :meth:`GatewayProcess.wait_ready`
polls ``/readyz`` with a deadline; :meth:`GatewayProcess.stop` terminates it, :meth:`GatewayProcess.kill`
sends SIGKILL. :func:`fresh_postgres_database` makes (and drops) a database of its own for a test,
migrated before any gateway starts so that two starting at once do not race on the schema.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import psycopg

from ferryman.mock.server import free_port
from tests.gateway.conftest import ADMIN_KEY
from tests.leak_guard import assert_no_secrets
from tests.pipeline.conftest import UPSTREAM_KEY

CHECKPOINT_SECRET = "ferryman-test-audit-checkpoint-secret-0123456789"
# Variables the subprocess gets; everything else named FERRYMAN_* or OPENAI_* is left out.
SECRET_ENV = {
    "FERRYMAN_ADMIN_KEY": ADMIN_KEY,
    "FERRYMAN_TEST_UPSTREAM_KEY": UPSTREAM_KEY,
    "FERRYMAN_TEST_CHECKPOINT": CHECKPOINT_SECRET,
}
CHECKPOINT_REF = "env:FERRYMAN_TEST_CHECKPOINT"
UPSTREAM_KEY_REF = "env:FERRYMAN_TEST_UPSTREAM_KEY"


def gateway_env(upstream_base_url: str, data_dir: Path, **settings: str) -> dict[str, str]:
    """The environment of a gateway subprocess: one mock deployment, the secrets above, and
    ``FERRYMAN_<NAME>`` for each keyword (``STORE__REDIS_PREFIX="…"``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRYMAN_", "OPENAI_"))}
    deployment = json.dumps([{"name": "mock", "base_url": upstream_base_url, "api_keys": [UPSTREAM_KEY_REF]}])
    env.update(SECRET_ENV)
    env.update(
        FERRYMAN_DEPLOYMENTS=deployment,
        FERRYMAN_DATA_DIR=str(data_dir),
        FERRYMAN_AUDIT__CHECKPOINT_KEY=CHECKPOINT_REF,
        PYTHONUNBUFFERED="1",
    )
    env.update({f"FERRYMAN_{name}": value for name, value in settings.items()})
    return env


def first_run_env(data_dir: Path, upstream_base_url: str | None = None) -> dict[str, str]:
    """The environment of a ``ferryman serve`` that has no admin key configured (no ``FERRYMAN_ADMIN_KEY``):
    in front of ``upstream_base_url`` as :func:`gateway_env` puts it, or with none the way a first run on a
    new machine is: no ``FERRYMAN_*`` or ``OPENAI_*`` at all (the embedded mock), no proxies, wide lines."""
    if upstream_base_url is not None:
        env = gateway_env(upstream_base_url, data_dir)
        del env["FERRYMAN_ADMIN_KEY"]
    else:
        proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FERRYMAN_", "OPENAI_")) and k.lower() not in proxies
        }
        env.update(FERRYMAN_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
        # but the embedded mock acts on the suite's date (tests/conftest.py), whatever today is
        env["FERRYMAN_MOCK_TODAY"] = os.environ["FERRYMAN_MOCK_TODAY"]
    env["COLUMNS"] = "1000"  # no wrapped banner lines
    return env


@dataclass
class GatewayProcess:
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    admin: httpx2.Client = field(init=False)

    def __post_init__(self) -> None:
        self.admin = httpx2.Client(
            base_url=self.url, headers={"authorization": f"Bearer {ADMIN_KEY}"}, timeout=httpx2.Timeout(10)
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, deadline_s: float = 30.0) -> None:
        """Poll ``/readyz`` until it answers 200 (database and Redis reachable)."""
        deadline = time.monotonic() + deadline_s
        with httpx2.Client(timeout=1.0) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.output()[-3000:]}")
                try:
                    if http.get(self.url + "/readyz").status_code == 200:
                        return
                except httpx2.TransportError:
                    pass
                time.sleep(0.05)  # polling with a deadline, not ordering
        raise TimeoutError(f"the gateway on port {self.port} was not ready in {deadline_s}s:\n{self.output()[-3000:]}")

    def create_key(self, name: str, **limits: Any) -> tuple[str, str]:
        """A virtual key through the admin API: ``(secret, key id)``."""
        reply = self.admin.post("/admin/keys", json={"name": name, **limits})
        assert reply.status_code == 201, reply.text
        body = reply.json()
        return body["key"], body["id"]

    def kill(self) -> None:
        """SIGKILL: no shutdown, no drain, no flush."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        self.admin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def assert_no_secrets_logged(self) -> None:
        assert_no_secrets(self.output(), f"the output of the gateway on port {self.port}")


def start_gateway(env: dict[str, str], workdir: Path, *serve_args: str) -> GatewayProcess:
    """Start ``ferryman serve`` on a free port (not waiting for it: see ``wait_ready``)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"gateway-{port}.log"
    command = [sys.executable, "-m", "ferryman.cli", "serve", "--port", str(port), *serve_args]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    return GatewayProcess(port, process, log)


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """A new, migrated database ``ferryman_t_<random>`` on the server of ``server_url``; dropped after."""
    from ferryman.store.database import make_engine, migrate

    name = f"ferryman_t_{uuid.uuid4().hex[:12]}"
    base, _, _ = server_url.rpartition("/")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{base}/{name}"
    try:
        engine = make_engine(url)
        try:
            migrate(engine)
        finally:
            engine.dispose()
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_redis_prefix(redis_url: str, prefix: str) -> None:
    """Delete every Redis key a test's gateways wrote (they all start with its prefix)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def run_cli(*args: str, env: dict[str, str], cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m ferryman.cli ARGS`` with the gateway's environment."""
    return subprocess.run(
        [sys.executable, "-m", "ferryman.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
