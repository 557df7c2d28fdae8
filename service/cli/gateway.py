"""``genjobs gateway``: the HTTP gateway as its own process, a plain NATS client.

Stateless: every job fact comes from the service API, every event from the stream, so any
number of gateways can run behind a load balancer and a browser may land on any of them.
``genjobs serve --http`` runs the same application inside a replica (:func:`replica_http`).

Stop (SIGTERM, SIGINT): stop listening, end the open SSE responses (clients reconnect, to
another gateway if there is one), drain the connection. Exit 0; 2 on bad configuration or an
address in use; 3 when NATS cannot be reached or the connection is closed for good.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time
from typing import Any

import nats

from service.cli.common import (
    DEFAULT_CLIENT_URL,
    EXIT_NO_NATS,
    EXIT_OK,
    EXIT_USAGE,
    READY_MARK,
    CliError,
    connect,
    on_signal,
    redact_url,
    run_async,
    settings_from,
    setup_logging,
)
from service.client.reader import LiveHub
from service.config import Settings
from service.http.app import HUB_KEY, GatewayServer, build_app
from service.http.config import HttpSettings
from service.http.health import ConnectionWatch

log = logging.getLogger("genjobs.gateway")


def http_settings_from(listen: str | None, **extra: Any) -> HttpSettings:
    """Raises: CliError (exit 2) when a GENJOBS_* HTTP variable or the address is wrong."""
    try:
        return HttpSettings.from_env(listen=listen, **extra)
    except (TypeError, ValueError) as e:
        raise CliError(f"bad configuration: {e}", EXIT_USAGE) from e


async def start_server(server: GatewayServer) -> str:
    """Raises: CliError (exit 2) when the address cannot be listened on."""
    try:
        return await server.start()
    except OSError as e:
        raise CliError(f"cannot listen on {server.hs.listen}: {e}", EXIT_USAGE) from e


class WatchedConnection:
    """Connection callbacks that feed the gateway: the outage clock and the hub's re-reads."""

    def __init__(self) -> None:
        self.watch: ConnectionWatch | None = None
        self.hub: LiveHub | None = None
        self.stop = asyncio.Event()
        self.lost = False
        self.started = False

    async def disconnected(self) -> None:
        if self.watch is not None:
            self.watch.disconnected()
        if self.started and not self.stop.is_set():
            log.warning("disconnected from NATS; reconnecting")

    async def reconnected(self) -> None:
        if self.watch is not None:
            self.watch.reconnected()
        if self.hub is not None:
            self.hub.on_reconnected()
        log.info("reconnected to NATS")

    async def closed(self) -> None:
        if self.started and not self.stop.is_set():
            self.lost = True
            log.error("the NATS connection was closed; stopping")
            self.stop.set()

    async def error(self, e: Exception) -> None:
        log.warning("nats: %s", e)


async def _gateway(settings: Settings, hs: HttpSettings, connect_wait: float) -> int:
    url = settings.nats_url or DEFAULT_CLIENT_URL
    cbs = WatchedConnection()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, cbs.stop, sig)
    nc = await connect(
        url,
        name=f"genjobs-gateway-{hs.node_id}",
        wait=connect_wait,
        forever=True,
        error_cb=cbs.error,
        disconnected_cb=cbs.disconnected,
        reconnected_cb=cbs.reconnected,
        closed_cb=cbs.closed,
    )
    cbs.started = True
    try:
        cbs.watch = ConnectionWatch(nc)
        app = build_app(nc, settings, hs, watch=cbs.watch)
        cbs.hub = app[HUB_KEY]
        server = GatewayServer(app, hs)
        http_url = await start_server(server)
        try:
            print(
                f"{READY_MARK} gateway {hs.node_id} on {http_url} "
                f"(NATS {redact_url(url)}, prefix {settings.prefix}; stop with Ctrl-C or SIGTERM)",
                flush=True,
            )
            await cbs.stop.wait()
            log.info("stopping: closing the SSE responses, draining NATS")
        finally:
            await server.stop()
    finally:
        if not nc.is_closed:
            cbs.stop.set()
            try:
                await asyncio.wait_for(nc.drain(), timeout=settings.shutdown_grace)
            except (TimeoutError, nats.errors.Error) as e:
                log.warning("draining the NATS connection failed: %s", e)
    return EXIT_NO_NATS if cbs.lost else EXIT_OK


def gateway(args: argparse.Namespace) -> int:
    setup_logging(args.log_level)
    settings = settings_from(args)
    hs = http_settings_from(args.http)
    started = time.monotonic()
    code = run_async(lambda: _gateway(settings, hs, args.connect_wait), not args.no_uvloop)
    log.info("stopped after %.0fs", time.monotonic() - started)
    return code
