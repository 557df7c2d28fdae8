"""``/metrics``: Prometheus metrics of one gateway (or replica), labelled with its node id.

Each app has its own registry (tests run several gateways in one process). Jobs by status come
from the service API (``counts``) at scrape time; replica-only figures (events stored, publish
acks) are fed by the replica's publisher when the gateway runs inside ``genjobs serve``.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

ACK_BUCKETS: Final = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class Metrics:
    def __init__(self, node: str) -> None:
        self.node = node
        r = self.registry = CollectorRegistry(auto_describe=True)
        n = ["node"]
        self._sse_open = Gauge(
            "genjobs_http_sse_connections", "SSE responses open now", n, registry=r
        )
        self._sse_total = Counter("genjobs_http_sse_opened", "SSE responses opened", n, registry=r)
        self._events = Counter(
            "genjobs_http_sse_events", "events written to SSE clients", n, registry=r
        )
        self._resumes = Counter(
            "genjobs_http_resumes",
            "SSE responses that continue a stream: by Last-Event-ID, ?after= or ?resume=true",
            [*n, "kind"],
            registry=r,
        )
        self._slow = Counter(
            "genjobs_http_sse_slow_disconnects",
            "SSE clients disconnected because they did not keep up",
            n,
            registry=r,
        )
        self._aborts = Counter(
            "genjobs_http_aborts", "abort requests, by result", [*n, "result"], registry=r
        )
        self._requests = Counter(
            "genjobs_http_requests",
            "HTTP requests by route and status",
            [*n, "route", "status"],
            registry=r,
        )
        self._jobs = Gauge(
            "genjobs_jobs", "jobs by status (service API counts)", [*n, "status"], registry=r
        )
        self._connected = Gauge(
            "genjobs_nats_connected", "1 while the NATS connection is up", n, registry=r
        )
        self._outage = Gauge(
            "genjobs_nats_outage_seconds",
            "seconds since the NATS connection was lost (0 while connected)",
            n,
            registry=r,
        )
        self._stored = Counter(
            "genjobs_events_stored", "events this replica stored (publish acked)", n, registry=r
        )
        self._ack = Histogram(
            "genjobs_publish_ack_seconds",
            "publish to JetStream ack, per event this replica stored",
            n,
            buckets=ACK_BUCKETS,
            registry=r,
        )
        self._outage_retries = Gauge(
            "genjobs_publish_outage_retries",
            "publish attempts this replica retried because the stream was unavailable",
            n,
            registry=r,
        )
        self.sse_open = self._sse_open.labels(node)
        self.sse_total = self._sse_total.labels(node)
        self.events = self._events.labels(node)
        self.sse_slow = self._slow.labels(node)
        self.nats_connected = self._connected.labels(node)
        self.nats_outage = self._outage.labels(node)
        self.events_stored = self._stored.labels(node)
        self.publish_ack = self._ack.labels(node)
        self.outage_retries = self._outage_retries.labels(node)

    def resume(self, kind: str) -> None:
        self._resumes.labels(self.node, kind).inc()

    def abort(self, result: str) -> None:
        self._aborts.labels(self.node, result).inc()

    def request(self, route: str, status: int) -> None:
        self._requests.labels(self.node, route, str(status)).inc()

    def jobs(self, counts: dict[str, int]) -> None:
        for status, value in counts.items():
            self._jobs.labels(self.node, status).set(value)

    def ack_observer(self, seconds: float) -> None:
        """Publisher hook: one event stored after ``seconds``."""
        self.events_stored.inc()
        self.publish_ack.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
