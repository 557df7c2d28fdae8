"""The Durable Streams sub-application on a server of its own: for tests, the conformance run
and benchmarks where no full gateway is needed. Same routes, same mount (``/v1/stream``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS

from service.config import Settings

from .app import build_app


async def start_site(
    nc: NATS,
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    middlewares: Sequence[Any] = (),
) -> tuple[web.AppRunner, str]:
    """Serve Durable Streams on ``host:port`` (0: any free port); returns the runner (the
    caller's to ``cleanup()``) and the base URL (streams are at ``<url>/v1/stream/<name>``).
    ``middlewares`` go into the sub-application (an authentication middleware, say)."""
    root = web.Application()
    root.add_subapp("/v1/stream", build_app(nc, settings, middlewares=middlewares))
    runner = web.AppRunner(root, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}"
