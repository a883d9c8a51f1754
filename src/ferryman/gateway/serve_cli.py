"""``ferryman serve``: the gateway in the foreground (or ``--workers N`` processes).

With no upstream configured and no ``OPENAI_API_KEY`` the upstream is Ferryman's own mock, run
in-process, and a first key is created to try it with. With no admin key configured, the first run
makes one in the data directory (``admin.key``) and shows it once, so the dashboard works out of
the box; later runs say where it is. The address is bound before anything is printed or made, so
the banner never names a port this process does not hold. Exit codes: 0 stopped (after the
drain), 2 bad settings or an address that cannot be listened on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ferryman.config import Settings, load
from ferryman.gateway.cli import RedisOption, StoreOption, _bad, _run, _settings, err

EMBEDDED_MOCK_KEY_ENV = "FERRYMAN_EMBEDDED_MOCK_KEY"  # the embedded mock's key, by reference (any key will do)
ADMIN_KEY_FILE = "admin.key"  # in the data directory: the admin key made on the first run
ADMIN_KEY_ENV = "FERRYMAN_GATEWAY__ADMIN_KEY"  # gateway.admin_key, as this process and its workers load it


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8080).", min=0, max=65535)] = None,
    store: StoreOption = None,
    redis: RedisOption = None,
    workers: Annotated[int | None, typer.Option(help="Processes to run (each shares the store).", min=1)] = None,
) -> None:
    """Run the OpenAI-compatible gateway: virtual keys, budgets, limits, audit, metrics, dashboard.

    Upstreams come from settings (ferryman.toml / FERRYMAN_*); with none, OPENAI_BASE_URL and
    OPENAI_API_KEY as in the SDK. The admin API and the dashboard (/ui) take the admin key:
    FERRYMAN_ADMIN_KEY, else one made on the first run in the data directory's admin.key.
    Several instances share one state with --store postgresql://… --redis redis://….
    """
    from ferryman.gateway.app import Gateway
    from ferryman.gateway.server import APP_FROM_ENV, BindError, bind, serve_workers, uvicorn_config
    from ferryman.gateway.server import serve as run_server
    from ferryman.logs import configure_json_logging

    shared = bool(store and store.startswith("postgresql") and redis)
    settings = _settings(store, redis, shared=shared)
    g = settings.gateway
    host = host or g.host
    port = port if port is not None else g.port
    workers = workers or g.workers
    configure_json_logging("INFO")
    config = uvicorn_config(APP_FROM_ENV, host, port, settings=g, workers=workers)  # binds; with workers, runs them
    try:
        sock = bind(config)
    except BindError as error:
        typer.echo(f"ferryman serve: {error}", err=True)
        raise typer.Exit(2) from None
    port = sock.getsockname()[1]  # --port 0: the port the system chose
    mock = _embedded_mock(settings)
    admin = _admin_key(settings)
    if mock is not None or admin is not None:  # the settings again, with the mock and the admin key (as the workers')
        settings = _settings(store, redis, shared=shared)
    try:
        gateway = Gateway(settings)
    except Exception as error:
        raise _bad(str(error)) from None
    base = _url(host, port)
    if mock is not None:
        _demo_key(gateway, base)
    if workers > 1:  # each worker process builds its own gateway from the environment (app_from_env)
        _pass_to_workers(settings, store, redis)
    where = escape(_destinations(settings, mock, workers))  # an IPv6 base URL's [::1] is not markup
    err.print(f"ferryman gateway on [bold]{escape(base)}/v1[/bold]  {where}", soft_wrap=True)  # one line in a log
    _admin_banner(gateway, admin, base)
    if workers > 1:
        gateway.store.close()
        serve_workers(config, sock)
        return
    run_server(gateway, host, port, sock)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _embedded_mock(settings: Settings) -> Any:
    """No upstream configured and no OPENAI_API_KEY: serve the mock as the upstream, in-process,
    so ``ferryman serve`` runs anywhere with no key and no bill.

    The mock runs once, in this process; its base URL and key reference go into the environment
    as ``FERRYMAN_DEPLOYMENTS``, so that settings loaded from then on (here, and in every worker
    of ``--workers N``: :func:`ferryman.gateway.server.app_from_env`) name it as the deployment."""
    import json
    import os

    if settings.deployments_configured or os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return None
    from ferryman.mock.server import BackgroundServer

    mock = BackgroundServer().start()
    os.environ.setdefault(EMBEDDED_MOCK_KEY_ENV, "ferryman-embedded-mock")
    deployment = {"name": "default", "base_url": mock.base_url, "api_keys": [f"env:{EMBEDDED_MOCK_KEY_ENV}"]}
    os.environ["FERRYMAN_DEPLOYMENTS"] = json.dumps([deployment])
    err.print(
        f"[yellow]note:[/yellow] no OPENAI_API_KEY: the upstream is Ferryman's mock ({mock.base_url}); "
        "set OPENAI_API_KEY (or deployments in ferryman.toml) for the real API",
        soft_wrap=True,
    )
    return mock


@dataclass(frozen=True)
class AdminKeyFile:
    path: Path
    created: str | None  # the new key, on the one run that made the file; None when it was there


def _admin_key(settings: Settings) -> AdminKeyFile | None:
    """No admin key configured (``gateway.admin_key`` not set, ``FERRYMAN_ADMIN_KEY`` unset or empty):
    the data directory's ``admin.key``, made now with a random key if it is not there, and named to
    this process and its workers as ``file:PATH`` (in the environment, as ``FERRYMAN_DEPLOYMENTS``
    names the embedded mock). Made whole and 0600 by :func:`ferryman.files.create_private`: of two
    first runs at once one makes it and both use it, and a key that is there is never replaced."""
    import os
    import secrets

    from ferryman.config import default_data_dir
    from ferryman.files import create_private, private_dir
    from ferryman.secrets import resolve_optional

    g = settings.gateway
    if "admin_key" in g.model_fields_set or resolve_optional(g.admin_key) is not None:
        return None
    path = Path(default_data_dir(), ADMIN_KEY_FILE).absolute()
    created = None
    try:
        # The default data directory is Ferryman's own (tightened to 0700); FERRYMAN_DATA_DIR's keeps its mode.
        private_dir(path.parent, tighten=not os.environ.get("FERRYMAN_DATA_DIR"))
        if not path.exists():
            key = secrets.token_hex(32)
            created = key if create_private(path, key + "\n") else None  # whole, 0600, never replaced
    except OSError as error:
        raise _bad(f"cannot make the admin key file {path}: {error.strerror or error}") from None
    os.environ[ADMIN_KEY_ENV] = f"file:{path}"
    return AdminKeyFile(path, created)


def _admin_banner(gateway: Any, admin: AdminKeyFile | None, base: str) -> None:
    """How to log in at /ui: the admin key itself only on the run that made it, else where it is."""
    if admin is None:
        if gateway.admin_secret() is None:
            reference = escape(gateway.settings.gateway.admin_key)
            err.print(
                f"[yellow]note:[/yellow] gateway.admin_key ({reference}) is not set: the admin API and /ui are off"
            )
        return
    where = escape(str(admin.path))
    if admin.created is not None:
        err.print(f"created an admin key in {where}, shown only this once:", soft_wrap=True)
        err.print(f"  {admin.created}", soft_wrap=True)
        err.print(f"  log in with it at {escape(base)}/ui (the admin API takes it as a Bearer token)", soft_wrap=True)
    else:
        err.print(f"admin key: in {where} (cat it to log in at {escape(base)}/ui)", soft_wrap=True)
    err.print("caller keys: ferryman keys create --name NAME", soft_wrap=True)


def _destinations(settings: Settings, mock: Any, workers: int) -> str:
    """Where calls will go, for the banner: the same in every worker (see ``_pass_to_workers``)."""
    mark = ", Ferryman's embedded mock" if mock is not None else ""
    upstreams = ", ".join(f"{d.name} ({d.base_url}{mark})" for d in settings.deployments)
    return f"upstreams: {upstreams}" + (f"  workers: {workers}" if workers > 1 else "")


def _pass_to_workers(settings: Settings, store: str | None, redis: str | None) -> None:
    """Put the command line's settings in the environment the worker processes inherit, and make
    sure the settings they will load send calls where this process says (else exit 2)."""
    import os

    for name, value in (("STORE__URL", store), ("STORE__REDIS_URL", redis)):
        if value:
            os.environ["FERRYMAN_" + name] = value
    if settings.store.shared:
        os.environ["FERRYMAN_STORE__SHARED"] = "true"
    try:
        theirs = load()  # what app_from_env builds
    except Exception as error:
        raise _bad(f"settings of the worker processes: {error}") from None
    if [d.model_dump() for d in theirs.deployments] != [d.model_dump() for d in settings.deployments]:
        raise _bad(
            "the worker processes would not get this process's upstreams: "
            + ", ".join(f"{d.name} ({d.base_url})" for d in theirs.deployments)
        )


def _demo_key(gateway: Any, base: str) -> None:
    """With the mock upstream and no keys yet, one key to try it with (printed once)."""
    if _run(gateway.keys.all()):
        return
    secret, record = _run(gateway.keys.create("demo"))
    err.print(f"created a first key, [bold]{record.id}[/bold] (demo), shown only this once:")
    err.print(f"  export OPENAI_BASE_URL={escape(base)}/v1")
    err.print(f"  export OPENAI_API_KEY={secret}")
