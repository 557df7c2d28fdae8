"""The HTTP gateway: an aiohttp application over one NATS connection, and the server that runs it.

    app = build_app(nc, settings, http_settings)          # routes, hub, metrics, heartbeats
    async with GatewayServer(app, http_settings) as srv:  # listening on srv.url
        ...

Used two ways: ``genjobs gateway`` (a plain NATS client: stateless, any number behind a load
balancer) and ``genjobs serve --http`` (inside a replica, sharing its connection; the replica's
outage state feeds ``/readyz`` through ``readiness``).

aiohttp is its own asyncio server (one task per request, no ASGI layer, on uvloop): an idle SSE
connection costs it less than half of what Starlette on uvicorn needs (bench/sse_stack.py).

The Durable Streams protocol is mounted at ``/v1/stream`` when ``service.http.durable``
provides ``build_durable_app(nc, settings, http_settings) -> web.Application``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from nats.aio.client import Client as NATS

from service.client.fanout import LiveFanout
from service.client.reader import LiveHub
from service.config import Settings

from .auth import Authenticator
from .chat import ChatRoutes, encode_events
from .config import HttpSettings
from .demo import add_demo_routes
from .errors import error_middleware
from .health import ConnectionWatch, HealthRoutes, Readiness
from .metrics import Metrics
from .sse import Frames, Heartbeats

log = logging.getLogger("genjobs.http")

DURABLE_PREFIX: Final = "/v1/stream"
HUB_KEY: Final = web.AppKey("genjobs_hub", LiveHub)
METRICS_KEY: Final = web.AppKey("genjobs_metrics", Metrics)
WATCH_KEY: Final = web.AppKey("genjobs_watch", ConnectionWatch)
HEARTBEATS_KEY: Final = web.AppKey("genjobs_heartbeats", Heartbeats)
SETTINGS_KEY: Final = web.AppKey("genjobs_http_settings", HttpSettings)
FANOUT_KEY: Final = web.AppKey("genjobs_fanout", LiveFanout)
CORS_HEADERS: Final = (
    "Authorization, Content-Type, Last-Event-ID, Cache-Control, X-Requested-With, "
    "X-LibreChat-Generation-Protocol"
)


def build_app(
    nc: NATS,
    settings: Settings,
    hs: HttpSettings | None = None,
    *,
    readiness: Readiness | None = None,
    watch: ConnectionWatch | None = None,
    hub: LiveHub | None = None,
) -> web.Application:
    """The gateway's application on ``nc`` (connected; owned by the caller).

    ``hub``: the LiveHub to read with (default: a new one, closed at shutdown, which ends every
    SSE response so that clients reconnect elsewhere). ``watch``: when the connection was lost,
    fed by the connection owner's callbacks (default: inferred from ``nc``).

    Raises:
        ValueError: ``hs`` is inconsistent (see :meth:`HttpSettings.validate`).
    """
    hs = hs or HttpSettings.from_env()
    hs.validate()
    metrics = Metrics(hs.node_id)
    watch = watch or ConnectionWatch(nc)
    own_hub = hub is None
    hub = hub or LiveHub(nc, settings)
    auth = Authenticator(hs)
    heartbeats = Heartbeats(hs)
    # One live delivery per job for all its SSE connections at the live edge.
    fanout: LiveFanout[Frames] = LiveFanout(
        hub,
        encode_events,
        lambda frames, sinks: metrics.events.inc(frames.count * sinks),
        batch_bytes=max(1, hs.sse_max_buffer // 4),
    )
    app = web.Application(
        middlewares=[
            _cors_middleware(hs),
            error_middleware(metrics.request, passthrough=(DURABLE_PREFIX,)),
        ],
        client_max_size=settings.max_request_bytes,
    )
    app[HUB_KEY] = hub
    app[METRICS_KEY] = metrics
    app[WATCH_KEY] = watch
    app[HEARTBEATS_KEY] = heartbeats
    app[SETTINGS_KEY] = hs
    app[FANOUT_KEY] = fanout
    ChatRoutes(nc, settings, hs, auth, hub, metrics, heartbeats, fanout).add_to(app)
    HealthRoutes(nc, settings, hs, metrics, watch, readiness).add_to(app)
    add_demo_routes(app)
    durable = _durable_app(nc, settings, hs)
    if durable is not None:
        app.add_subapp(DURABLE_PREFIX, durable)

    async def background(app: web.Application) -> AsyncIterator[None]:
        auth.warn_if_open()
        task = asyncio.create_task(heartbeats.run(), name="sse-heartbeats")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_shutdown(app: web.Application) -> None:
        # Ends every open SSE response (HubClosed): aiohttp then waits for the handlers.
        if own_hub:
            await hub.close()
        else:
            for sse in list(heartbeats.open):
                sse.close()
        await fanout.close()

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)
    return app


def _durable_app(nc: NATS, settings: Settings, hs: HttpSettings) -> web.Application | None:
    """The Durable Streams sub-application, if that package is installed in this tree."""
    try:
        module = importlib.import_module("service.http.durable")
    except ModuleNotFoundError as e:
        if e.name not in ("service.http.durable",):
            raise
        return None
    build: Callable[..., web.Application] = module.build_durable_app
    return build(nc, settings, hs)


def _cors_middleware(hs: HttpSettings) -> Any:
    """CORS for the configured origins (``*`` allows any, without credentials). Preflights are
    answered here; the Durable Streams sub-app answers its own."""
    origins = hs.origins
    any_origin = "*" in origins

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if (
            not origins
            or origin is None
            or request.path.startswith(DURABLE_PREFIX)
            or not (any_origin or origin.rstrip("/") in origins)
        ):
            return await handler(request)
        allow: dict[str, str] = (
            {"Access-Control-Allow-Origin": "*"}
            if any_origin
            else {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Credentials": "true",
                "Vary": "Origin",
            }
        )
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(
                status=204,
                headers={
                    **allow,
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": CORS_HEADERS,
                    "Access-Control-Max-Age": "600",
                },
            )
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            e.headers.update(allow)
            raise
        if not resp.prepared:
            resp.headers.update(allow)
        return resp

    return middleware


class AccessLogger(AbstractAccessLogger):
    """Method, path (never the query: it may hold ``?token=``), status, time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


class GatewayServer:
    """Runs an app on ``hs.listen``: ``async with GatewayServer(app, hs) as srv: srv.url``."""

    def __init__(self, app: web.Application, hs: HttpSettings, *, shutdown_timeout: float = 5.0):
        self.app = app
        self.hs = hs
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self.host, self.port = hs.host_port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> str:
        """Listen; returns the URL (with the real port when ``listen`` asked for port 0).

        Raises:
            OSError: the address is in use or not ours.
        """
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=self.shutdown_timeout,
            # A client that goes away cancels its handler: its reader leaves the hub at once.
            handler_cancellation=True,
            # Also the deadline of a request head: bounds slowloris clients.
            keepalive_timeout=self.hs.idle_timeout,
            max_line_size=self.hs.max_header_bytes,
            max_field_size=self.hs.max_header_bytes,
            max_headers=self.hs.max_headers,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("genjobs.http.access"),
        )
        await runner.setup()
        self._runner = runner
        try:
            site = web.TCPSite(
                runner,
                self.host,
                self.port,
                backlog=self.hs.backlog,
                reuse_address=True,
            )
            await site.start()
        except BaseException:
            await self.stop()
            raise
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        log.info("HTTP gateway %s listening on %s", self.hs.node_id, self.url)
        return self.url

    async def stop(self) -> None:
        """Stop listening, end SSE responses (clients reconnect elsewhere), wait for handlers."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> GatewayServer:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
