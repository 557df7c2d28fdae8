"""``genjobs serve``: one replica and its micro service, with the shutdown sequence as code.

Start: an embedded nats-server when no ``GENJOBS_NATS_URL`` is given, then connect (retrying
while a fresh cluster elects its leaders), start the :class:`~service.server.replica.Replica` and its
:class:`~service.server.api.ServiceApi`, print ``READY_MARK``. Stop (SIGTERM, SIGINT, or the connection
closed for good, or NATS unreachable for ``GENJOBS_NATS_LOST_EXIT`` seconds): stop taking
requests, end the running jobs with their terminal events, flush the publish acks, drain the
connection, stop the embedded server, all within ``shutdown_grace``. Exit 0; 3 when NATS was
lost; 1 when some job could not get its terminal event (they are logged).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

import nats
from nats.aio.client import Client as NATS

from service.cli.common import (
    EXIT_FAILED,
    EXIT_NO_NATS,
    EXIT_OK,
    EXIT_PROVISION,
    READY_MARK,
    CliError,
    connect,
    on_signal,
    redact_url,
    run_async,
    settings_from,
    setup_logging,
)
from service.config import Settings
from service.http.config import HttpSettings

log = logging.getLogger("genjobs.serve")


async def _start_replica(
    settings: Settings, connect_wait: float, stop: asyncio.Event, **callbacks: Any
) -> tuple[NATS, Any]:
    """Connect and start a replica, retrying until ``connect_wait`` while JetStream is not ready.

    A cluster that has just formed (or a stream that has just been created with 3 replicas) may
    answer "no responders" until its leaders are elected; a supervisor would restart us anyway,
    so retrying here only makes the log quieter and the start faster. Each attempt uses a fresh
    connection, so nothing a failed attempt subscribed to survives it.

    Raises:
        CliError: exit 3 when NATS or JetStream is not usable in time, 4 on a provisioning mismatch.
    """
    from service.nats.provision import ProvisionMismatch
    from service.server.replica import Replica

    assert settings.nats_url is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + connect_wait
    while True:
        nc = await connect(
            settings.nats_url,
            name=f"genjobs-{settings.replica_id}",
            wait=max(1.0, deadline - loop.time()),
            forever=True,
            **callbacks,
        )
        replica = Replica(settings, nc=nc)
        try:
            await replica.start()
            return nc, replica
        except ProvisionMismatch as e:
            await nc.close()
            raise CliError(
                f"{e}\nfix it with `nats stream edit`, or remove the old stream/bucket",
                EXIT_PROVISION,
            ) from e
        except (TimeoutError, nats.errors.Error) as e:
            await nc.close()
            reason = str(e) or type(e).__name__
            if stop.is_set() or loop.time() + 1.0 >= deadline:
                raise CliError(f"JetStream is not usable: {reason}", EXIT_NO_NATS) from e
            log.warning("JetStream is not ready yet (%s); retrying", reason)
            await asyncio.sleep(1.0)


async def _serve(settings: Settings, connect_wait: float, hs: HttpSettings | None = None) -> int:
    from service.server.api import ServiceApi
    from service.server.connection import close_connection

    assert settings.nats_url is not None
    stop = asyncio.Event()
    http = _ReplicaHttp()
    conn = _ConnectionEvents(stop, http)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, stop, sig)
    nc, replica = await _start_replica(
        settings,
        connect_wait,
        stop,
        error_cb=conn.on_error,
        disconnected_cb=conn.on_disconnect,
        reconnected_cb=conn.on_reconnect,
        closed_cb=conn.on_closed,
    )
    conn.starting = False
    api: ServiceApi | None = None
    given_up = asyncio.create_task(_when_nats_lost(replica, stop), name="nats-lost")
    try:
        api = ServiceApi(replica)
        await api.start()
        if hs is not None:
            await http.start(nc, replica, settings, hs)
        if not stop.is_set():
            print(
                f"{READY_MARK} replica {settings.replica_id} on {redact_url(settings.nats_url)} "
                f"(prefix {settings.prefix}; stop with Ctrl-C or SIGTERM)",
                flush=True,
            )
            await stop.wait()
        log.info("stopping: no new work; running jobs get their terminal event")
    finally:
        # The shutdown sequence, bounded as a whole by the grace period: stop taking requests,
        # end the jobs, flush, drain. The HTTP gateway stops after the jobs, so its SSE
        # clients get their jobs' terminal events.
        stop.set()
        given_up.cancel()
        await asyncio.wait([given_up])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.shutdown_grace
        if api is not None:
            await api.stop(grace=settings.shutdown_grace / 2)
        await replica.stop(grace=max(0.5, deadline - loop.time()))
        await http.stop()
        await close_connection(nc, max(0.1, deadline - loop.time()))
    return _exit_code(replica, lost=conn.lost)


class _ConnectionEvents:
    """The NATS connection's callbacks for ``serve``: log, tell the in-replica gateway, and
    stop the replica when the connection is closed for good after the start."""

    def __init__(self, stop: asyncio.Event, http: _ReplicaHttp) -> None:
        self.stop = stop
        self.http = http
        self.starting = True
        self.lost = False

    async def on_error(self, e: Exception) -> None:
        log.warning("nats: %s", e)

    async def on_disconnect(self) -> None:
        self.http.disconnected()
        if not self.stop.is_set() and not self.starting:
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnect(self) -> None:
        self.http.reconnected()
        log.info("reconnected to NATS")

    async def on_closed(self) -> None:
        if not self.stop.is_set() and not self.starting:
            self.lost = True
            log.error("the NATS connection was closed; stopping")
            self.stop.set()


def _exit_code(replica: Any, *, lost: bool) -> int:
    """The exit status of a stopped replica: no NATS, jobs left without a terminal event, ok."""
    health = replica.health()
    if lost or replica.nats_lost.is_set() or (health["nats"] != "connected" and replica.unfinished):
        log.error(
            "stopped without NATS (%s): exit %d%s",
            health["nats"],
            EXIT_NO_NATS,
            f"; {len(replica.unfinished)} job(s) without their terminal event"
            if replica.unfinished
            else "",
        )
        return EXIT_NO_NATS
    if replica.unfinished:
        log.error(
            "stopped; %d job(s) without their terminal event: exit %d",
            len(replica.unfinished),
            EXIT_FAILED,
        )
        return EXIT_FAILED
    log.info("stopped")
    return EXIT_OK


async def _when_nats_lost(replica: Any, stop: asyncio.Event) -> None:
    """Stop the replica once it reports NATS lost for good (it has logged why)."""
    await replica.nats_lost.wait()
    stop.set()


class _ReplicaHttp:
    """The gateway inside a replica (``serve --http``): same connection, the replica's outage
    state in /readyz, its publish acks in /metrics."""

    def __init__(self) -> None:
        self.server: Any = None
        self.watch: Any = None
        self.hub: Any = None

    async def start(self, nc: NATS, replica: Any, settings: Settings, hs: HttpSettings) -> None:
        """Raises: CliError (exit 2) when the address cannot be listened on."""
        from service.cli.gateway import start_server
        from service.http.app import HUB_KEY, METRICS_KEY, GatewayServer, build_app
        from service.http.health import ConnectionWatch, replica_readiness

        self.watch = ConnectionWatch(nc)
        app = build_app(
            nc,
            settings,
            hs,
            watch=self.watch,
            readiness=replica_readiness(replica.health),
        )
        self.hub = app[HUB_KEY]
        replica.store.publisher.on_ack = app[METRICS_KEY].ack_observer
        self.server = GatewayServer(app, hs)
        url = await start_server(self.server)
        print(f"genjobs: http on {url}", flush=True)

    def disconnected(self) -> None:
        if self.watch is not None:
            self.watch.disconnected()

    def reconnected(self) -> None:
        if self.watch is not None:
            self.watch.reconnected()
        if self.hub is not None:
            self.hub.on_reconnected()

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.stop()


def serve(args: argparse.Namespace) -> int:
    from service.nats.embedded import EmbeddedServer, EmbeddedServerError

    setup_logging(args.log_level)
    settings = settings_from(args)
    hs = None
    if getattr(args, "http", None):
        from service.cli.gateway import http_settings_from

        hs = http_settings_from(args.http, node_id=settings.replica_id)
    embedded: EmbeddedServer | None = None
    # Until the event loop takes the signals over, SIGTERM unwinds like Ctrl-C, so the embedded
    # nats-server is never left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not settings.nats_url:
            embedded = EmbeddedServer(args.data_dir, port=args.port)
            try:
                url = embedded.start()
            except EmbeddedServerError as e:
                raise CliError(f"cannot start nats-server: {e}", EXIT_NO_NATS) from e
            log.info("embedded nats-server on %s (data in %s)", url, args.data_dir)
            settings = settings.with_(nats_url=url)
        return run_async(lambda: _serve(settings, args.connect_wait, hs), not args.no_uvloop)
    finally:
        if embedded is not None:
            embedded.stop()
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
