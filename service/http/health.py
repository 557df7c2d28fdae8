"""``/healthz``, ``/readyz`` and ``/metrics`` of a gateway or a replica.

``/healthz`` says the process answers. ``/readyz`` says it can do its work, so that an
orchestrator routes to it: the NATS connection is up, JetStream answers for the event stream,
and a replica answers the service API (which reads the jobs bucket); a replica adds its own
checks (``readiness``), e.g. "NATS lost for longer than the outage budget". Each check is
bounded by ``ready_timeout``; the body lists every check with its result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from schemas.errors import GenjobsError, NotFound
from service.client import api as upstream
from service.config import Settings

from .config import HttpSettings
from .metrics import CONTENT_TYPE_LATEST, Metrics

log = logging.getLogger("genjobs.http.health")

PROBE_JOB = "readyz-probe"
"""A job id nobody creates: the API answering ``not_found`` for it proves a replica is up and
reads the jobs bucket."""


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


Readiness = Callable[[], Awaitable[list[Check]]]
"""Extra checks of the process the gateway runs in (a replica's outage state)."""


def replica_readiness(health: Callable[[], Mapping[str, Any]]) -> Readiness:
    """The ``outage`` check of a gateway inside a replica, read from the replica's own
    ``health()`` (``service.server.replica.Replica.health``), which decides that a replica that
    lost NATS longer than its outage budget is not ready."""

    async def check() -> list[Check]:
        h = health()
        ok = not h["overBudget"]
        if h["natsDownFor"] == 0:
            detail = "connected"
        else:
            detail = (
                f"NATS {h['nats']} for {h['natsDownFor']:.1f}s "
                f"(outage budget {h['natsOutageBudget']:g}s)"
            )
        return [Check("outage", ok, detail)]

    return check


class ConnectionWatch:
    """When the NATS connection went away: fed by the connection owner's callbacks."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._lost_at: float | None = None if nc.is_connected else time.monotonic()

    def disconnected(self) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()

    def reconnected(self) -> None:
        self._lost_at = None

    def outage(self) -> float:
        """Seconds since the connection was lost; 0 while connected."""
        if self.nc.is_connected:
            self._lost_at = None
            return 0.0
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        return time.monotonic() - self._lost_at


class HealthRoutes:
    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        hs: HttpSettings,
        metrics: Metrics,
        watch: ConnectionWatch,
        readiness: Readiness | None = None,
        counts_every: float = 5.0,
    ) -> None:
        self.nc = nc
        self.s = settings
        self.hs = hs
        self.metrics = metrics
        self.watch = watch
        self.readiness = readiness
        self._counts_every = counts_every
        self._counts_at = 0.0

    def add_to(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_route)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": self.hs.node_id})

    async def checks(self) -> list[Check]:
        out = [Check("nats", self.nc.is_connected, "" if self.nc.is_connected else "disconnected")]
        if self.nc.is_connected:
            out.append(await self._bounded("jetstream", self._jetstream()))
            out.append(await self._bounded("api", self._api()))
        if self.readiness is not None:
            out.extend(await self.readiness())
        return out

    async def _bounded(self, name: str, check: Awaitable[str]) -> Check:
        try:
            async with asyncio.timeout(self.hs.ready_timeout):
                return Check(name, True, await check)
        except TimeoutError:
            return Check(name, False, f"no answer within {self.hs.ready_timeout:g}s")
        except (NatsError, GenjobsError) as e:
            return Check(name, False, str(e) or type(e).__name__)

    async def _jetstream(self) -> str:
        info = await self.nc.jetstream().stream_info(self.s.stream_name)
        return f"stream {self.s.stream_name}: {info.state.messages} messages"

    async def _api(self) -> str:
        try:
            await upstream.call(
                self.nc,
                self.s,
                "status",
                {"jobId": PROBE_JOB, "userId": PROBE_JOB},
                timeout=self.hs.ready_timeout,
            )
        except NotFound:
            return "a replica answers"
        return "a replica answers"

    async def readyz(self, request: web.Request) -> web.Response:
        checks = await self.checks()
        ready = all(c.ok for c in checks)
        body = {
            "ready": ready,
            "node": self.hs.node_id,
            "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
        }
        if not ready:
            log.info(
                "not ready: %s", "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)
            )
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_route(self, request: web.Request) -> web.Response:
        m = self.metrics
        m.nats_connected.set(1 if self.nc.is_connected else 0)
        m.nats_outage.set(self.watch.outage())
        await self._refresh_counts()
        return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _refresh_counts(self) -> None:
        """Jobs by status from the API, at most every ``counts_every`` seconds (it scans the
        jobs bucket); when no replica answers the last figures stay."""
        now = time.monotonic()
        if now - self._counts_at < self._counts_every or not self.nc.is_connected:
            return
        self._counts_at = now
        try:
            counts: Any = await upstream.call(
                self.nc, self.s, "counts", {}, timeout=self.hs.ready_timeout
            )
        except GenjobsError as e:
            log.info("metrics: job counts unavailable: %s", e)
            return
        if isinstance(counts, dict):
            self.metrics.jobs({str(k): int(v) for k, v in counts.items()})
