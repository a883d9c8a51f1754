"""``ferryman serve``: the gateway in the foreground (or ``--workers N`` processes).

With no upstream configured and no ``OPENAI_API_KEY`` the upstream is Ferryman's own mock, run
in-process, and a first key is created to try it with. Exit codes: 0 stopped, 2 bad settings.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from ferryman.config import Settings, load
from ferryman.gateway.cli import RedisOption, StoreOption, _bad, _run, _settings, err

EMBEDDED_MOCK_KEY_ENV = "FERRYMAN_EMBEDDED_MOCK_KEY"  # the embedded mock's key, by reference (any key will do)
WORKER_HEALTHCHECK_S = 60  # --workers: seconds a worker may take to answer uvicorn's health check


def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on (default 8080).", min=0, max=65535)] = None,
    store: StoreOption = None,
    redis: RedisOption = None,
    workers: Annotated[int | None, typer.Option(help="Processes to run (each shares the store).", min=1)] = None,
) -> None:
    """Run the OpenAI-compatible gateway: virtual keys, budgets, limits, audit, metrics, dashboard.

    Upstreams come from settings (ferryman.toml / FERRYMAN_*); with none, OPENAI_BASE_URL and
    OPENAI_API_KEY as in the SDK. The admin API and the dashboard (/ui) need FERRYMAN_ADMIN_KEY.
    Several instances share one state with --store postgresql://… --redis redis://….
    """
    from ferryman.gateway.app import Gateway
    from ferryman.gateway.server import serve as run_server
    from ferryman.logs import configure_json_logging

    shared = bool(store and store.startswith("postgresql") and redis)
    settings = _settings(store, redis, shared=shared)
    g = settings.gateway
    host = host or g.host
    port = port if port is not None else g.port
    workers = workers or g.workers
    configure_json_logging("INFO")
    mock = _embedded_mock(settings)
    if mock is not None:  # the settings again, now with the mock as their deployment (as the workers' are)
        settings = _settings(store, redis, shared=shared)
    try:
        gateway = Gateway(settings)
    except Exception as error:
        raise _bad(str(error)) from None
    if mock is not None:
        _demo_key(gateway, host, port)
    if workers > 1:  # each worker process builds its own gateway from the environment (app_from_env)
        _pass_to_workers(settings, store, redis)
    where = escape(_destinations(settings, mock, workers))  # an IPv6 base URL's [::1] is not markup
    err.print(f"ferryman gateway on [bold]http://{host}:{port}/v1[/bold]  {where}")
    if gateway.admin_secret() is None:
        err.print("[yellow]note:[/yellow] FERRYMAN_ADMIN_KEY is not set: the admin API and /ui are off")
    if workers > 1:
        import uvicorn

        gateway.store.close()
        uvicorn.run(
            "ferryman.gateway.server:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            http="ferryman.gateway.edge:LimitedHttpTools",  # limits from each worker's settings
            access_log=False,
            log_level="warning",
            timeout_graceful_shutdown=int(g.drain_s),
            # uvicorn kills a worker that does not answer its health check within this, and a new
            # worker answers only once it has imported Ferryman: uvicorn's 5 s would kill and
            # respawn every worker forever on a busy machine. A hung worker is replaced after it.
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )
        return
    run_server(gateway, host, port)


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
        "set OPENAI_API_KEY (or deployments in ferryman.toml) for the real API"
    )
    return mock


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


def _demo_key(gateway: Any, host: str, port: int) -> None:
    """With the mock upstream and no keys yet, one key to try it with (printed once)."""
    if _run(gateway.keys.all()):
        return
    secret, record = _run(gateway.keys.create("demo"))
    err.print(f"created a first key, [bold]{record.id}[/bold] (demo), shown only this once:")
    err.print(f"  export OPENAI_BASE_URL=http://{host}:{port}/v1")
    err.print(f"  export OPENAI_API_KEY={secret}")
