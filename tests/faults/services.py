"""Redis and PostgreSQL servers of the fault tests' own, on free loopback ports, to kill and restart.

The machine's own services (6379, 5432) are never touched: only their binaries are used.

- :class:`RedisServer`: ``redis-server`` as a child process, no persistence (``--save ''
  --appendonly no``), so :meth:`RedisServer.restart` after :meth:`RedisServer.kill` (SIGKILL)
  brings it back *empty* on the same port.
- :class:`PostgresServer`: ``initdb`` into a private directory once, then ``pg_ctl start`` on a
  free port (loopback only, trust authentication, its socket in that directory, not in
  ``/var/run/postgresql``); :meth:`PostgresServer.stop` (``pg_ctl stop -m fast``, SIGKILL if that
  fails) and :meth:`PostgresServer.start` again on the same port keep the data. PostgreSQL refuses
  to run as root: as root, every PostgreSQL command runs as the ``postgres`` user (``runuser``, or
  ``su``), and the directory is theirs.

Every wait polls (``PING``, a real connection) until a deadline; nothing sleeps a fixed time.
:func:`missing_binaries` says what is not installed, for a skip (or a failure) with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from ferryman.mock.server import free_port

REDIS_SERVER = "/usr/bin/redis-server"
PG_TOOLS = ("initdb", "pg_ctl", "postgres")
PG_USER = "postgres"
POLL_S = 0.05  # between readiness probes (polling with a deadline, not ordering)


def redis_binary() -> str | None:
    if os.access(REDIS_SERVER, os.X_OK):
        return REDIS_SERVER
    return shutil.which("redis-server")


def postgres_bindir() -> Path | None:
    """A directory holding ``initdb``, ``pg_ctl`` and ``postgres``: ``$PATH`` (``/usr/local/bin``
    links them on this machine), else the newest ``/usr/lib/postgresql/*/bin``."""
    found = [shutil.which(tool) for tool in PG_TOOLS]
    if all(found):
        dirs = {Path(os.path.realpath(str(path))).parent for path in found}
        if len(dirs) == 1:
            return dirs.pop()
    candidates = sorted(
        (Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda d: _version_key(d.parent.name),
        reverse=True,
    )
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in PG_TOOLS):
            return bindir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _run_as_postgres() -> list[str]:
    """The prefix that runs a command as the ``postgres`` user (empty when we are not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", PG_USER, "--"]
    su = shutil.which("su")
    if su:
        return [su, PG_USER, "-s", "/bin/sh", "-c", 'exec "$0" "$@"']
    raise RuntimeError("running as root, and neither runuser nor su is there to run PostgreSQL as postgres")


def missing_binaries(redis: bool = True, postgres: bool = True) -> list[str]:
    """What the fault tests cannot start, in words (empty when everything is there)."""
    missing = []
    if redis and redis_binary() is None:
        missing.append(f"redis-server (not at {REDIS_SERVER} nor on PATH)")
    if postgres:
        if postgres_bindir() is None:
            missing.append("PostgreSQL's initdb/pg_ctl/postgres (not on PATH nor in /usr/lib/postgresql/*/bin)")
        elif os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
                _run_as_postgres()
            except (KeyError, RuntimeError):
                missing.append(f"a '{PG_USER}' user and runuser/su to run PostgreSQL as (it refuses root)")
    return missing


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


_LIVE: list[RedisServer | PostgresServer] = []


@atexit.register
def _last_resort() -> None:
    """A session that died before its fixtures' teardown still leaves no server behind."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.close()


class RedisServer:
    """``redis-server`` on ``127.0.0.1:port``, without persistence: a restart starts empty."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = binary
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = directory / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        _LIVE.append(self)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, deadline_s: float = 20.0) -> None:
        if self.running():
            return
        command = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--daemonize", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float = 20.0) -> None:
        import redis

        deadline = time.monotonic() + deadline_s
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}:\n{_tail(self.log)}")
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                time.sleep(POLL_S)
        finally:
            client.close()
        raise TimeoutError(f"redis-server on port {self.port} did not answer PING in {deadline_s}s:\n{_tail(self.log)}")

    def kill(self) -> None:
        """SIGKILL: no shutdown, nothing saved (there is no persistence anyway)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self, deadline_s: float = 20.0) -> None:
        """Killed (if it runs) and started again on the same port: empty."""
        self.kill()
        self.start(deadline_s)

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def close(self) -> None:
        self.kill()
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)


class PostgresServer:
    """A PostgreSQL cluster of its own in a private directory, on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl/postgres are not installed")
        self.bindir = bindir
        self.as_postgres = _run_as_postgres()
        # Not under pytest's tmp dir: that is root's and 0700, and PostgreSQL runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="ferryman-faults-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = port or free_port()
        self._initialised = False
        if self.as_postgres:
            entry = pwd.getpwnam(PG_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        _LIVE.append(self)

    # -- URLs ----------------------------------------------------------------------------------

    def url(self, dbname: str = "postgres") -> str:
        """For SQLAlchemy (and ``ferryman serve --store``, which also takes ``postgresql://``)."""
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    def libpq_url(self, dbname: str = "postgres") -> str:
        """For psycopg itself (and ``tests.gateway.processes.fresh_postgres_database``)."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{dbname}"

    # -- running it ----------------------------------------------------------------------------

    def _tool(self, name: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_postgres, str(self.bindir / name), *args],
            cwd=self.root,  # readable by postgres (root's home is not)
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def initdb(self) -> None:
        if self._initialised:
            return
        done = self._tool(
            "initdb",
            "-D", str(self.data),
            "-U", PG_USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        self._initialised = True

    def start(self, deadline_s: float = 60.0) -> None:
        """Start (initdb first, once) on this server's port, and wait until it takes connections."""
        self.initdb()
        if self.running():
            self.wait_ready(deadline_s)
            return
        options = " ".join(
            [
                f"-p {self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={shlex.quote(str(self.root))}",
                "-c max_connections=300",  # several gateways, each with a pool of up to 30
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
            ]
        )
        # pg_ctl's own wait is off: readiness is polled below, against the deadline.
        done = self._tool("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-W", "-o", options)
        if done.returncode != 0:
            failed = f"pg_ctl start failed ({done.returncode}):\n{done.stdout}{done.stderr}"
            raise RuntimeError(f"{failed}\n{_tail(self.log)}")
        self.wait_ready(deadline_s)

    def wait_ready(self, deadline_s: float = 60.0) -> None:
        """Poll with a real connection (``SELECT 1``) until one succeeds, or the deadline."""
        import psycopg

        deadline = time.monotonic() + deadline_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(self.libpq_url(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.Error as error:
                last = error
            time.sleep(POLL_S)
        raise TimeoutError(
            f"PostgreSQL on port {self.port} took no connection in {deadline_s}s ({last}):\n{_tail(self.log)}"
        )

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (from ``postmaster.pid``)."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, not ours to signal (we are not root)
            return pid
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def stop(self, deadline_s: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (connections are cut, the data stays); SIGKILL if it does not
        stop in time. Waits until the port refuses connections."""
        if not self.running():
            return
        done = self._tool("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-W", timeout=deadline_s)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and self.running():
            time.sleep(POLL_S)
        if self.running():
            self.kill()
        if done.returncode != 0 and self.running():
            raise RuntimeError(f"pg_ctl stop failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def kill(self, deadline_s: float = 30.0) -> None:
        """SIGKILL the postmaster and its backends (its process group)."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(pid)
            if group == pid and group != os.getpgrp():  # pg_ctl gives the postmaster a session of its own
                os.killpg(group, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline and self.running():
            time.sleep(POLL_S)

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def close(self) -> None:
        """Stopped (immediately) and its directory removed."""
        if self.running():
            self._tool("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-W", timeout=30)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.running():
                time.sleep(POLL_S)
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
