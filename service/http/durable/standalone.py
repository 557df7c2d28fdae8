"""The Durable Streams sub-application on a server of its own: for tests, the conformance run
and benchmarks where no full gateway is needed. Same routes, same mount (``/v1/stream``)."""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from service.config import Settings

from . import build_durable_app


async def start_site(
    nc: NATS, settings: Settings, *, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve Durable Streams on ``host:port`` (0: any free port); returns the runner (the
    caller's to ``cleanup()``) and the base URL (streams are at ``<url>/v1/stream/<name>``)."""
    root = web.Application()
    root.add_subapp("/v1/stream", build_durable_app(nc, settings))
    runner = web.AppRunner(root, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}"
