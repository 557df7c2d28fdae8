"""Configuration: one immutable Settings object, read from ``GENJOBS_*`` and overridable by flags.

Every component takes the Settings it needs instead of reading the environment itself, so a
test can run two replicas with different settings in one process.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

NATS_LOST_MARGIN = 15.0
"""Seconds past the outage budget before a replica without NATS gives up: the jobs' own budget
runs out first, so their failure is what gets logged, then the replica's."""


def _new_replica_id() -> str:
    return "r" + uuid.uuid4().hex[:12]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Runtime knobs. Durations are seconds; sizes are bytes or counts."""

    nats_url: str | None = None
    """Where NATS is. ``None`` means: start an embedded nats-server with ``nats.conf``."""
    prefix: str = "genjobs"
    """Subject prefix; stream and bucket names derive from it (``GENJOBS_EVENTS``, ``genjobs-jobs``)."""
    replica_id: str = field(default_factory=_new_replica_id)
    stream_replicas: int = 1
    """JetStream replicas for the stream and buckets: 1 on one server, 3 on a cluster."""
    completed_ttl: float = 300.0
    """How long a finished job stays readable (full replay, record, snapshot) before removal."""
    lease_ttl: float = 6.0
    """A replica whose heartbeat is older than this is dead; its running jobs fail ("owner lost")."""
    heartbeat_interval: float = 1.5
    sweep_interval: float = 30.0
    """Full scan for running jobs of unknown owners (covers replicas that died while nobody watched)."""
    max_events_per_job: int = 200_000
    """Per-job cap enforced by the stream (discard new per subject): the job fails, history stays."""
    stream_max_age: float = 7 * 24 * 3600.0
    """Safety net only; normal cleanup is explicit after ``completed_ttl``."""
    stream_max_bytes: int = -1
    max_consumers: int = 100_000
    inbox_size: int = 1024
    """Bounded actor inbox: a producer faster than JetStream waits here (backpressure)."""
    publish_timeout: float = 5.0
    """Wait for one publish ack; past it the publish is retried (ambiguous: the fence resolves it)."""
    publish_retries: int = 5
    """Retries a failing publish gets at least, even when the outage budget is spent sooner."""
    publish_outage_budget: float = 30.0
    """How long a job rides out an unavailable event stream (leader election, lost quorum,
    reconnect): its publish keeps retrying and its producers wait (backpressure); past this,
    counted from the first failed attempt, the job fails with a terminal error. Readers' replay
    requests ride out the same budget before they raise."""
    snapshot_interval: float = 2.0
    """How often a running job writes its resume snapshot to KV (fallback when the owner is gone)."""
    reader_queue: int = 10_000
    """Events buffered per reader before it is dropped as too slow (it resumes by seq)."""
    session_inactive: float = 3600.0
    """Durable reader sessions unused this long are removed by the server."""
    session_ack_wait: float = 30.0
    shutdown_grace: float = 10.0
    handoff_timeout: float = 5.0
    """A stopping replica hands each running remote-producer job to another live replica and
    waits this long for it to adopt the job (service/server/handoff.py); 0 turns handoff off
    (those jobs then end with "interrupted", like jobs of in-process producers)."""
    request_timeout: float = 5.0
    nats_lost_exit: float = 0.0
    """``genjobs serve`` exits 3 after NATS has been unreachable this long (0: the outage budget
    plus ``NATS_LOST_MARGIN``, so jobs get their full budget first)."""
    max_request_bytes: int = 1024 * 1024
    long_poll_timeout: float = 20.0
    """Durable Streams: how long a long-poll waits for data before answering 204, and the
    keep-alive interval of an SSE reader (docs/http.md)."""

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    # Derived names -------------------------------------------------------------------------
    @property
    def stream_name(self) -> str:
        return f"{self.prefix.upper().replace('-', '_')}_EVENTS"

    @property
    def jobs_bucket(self) -> str:
        return f"{self.prefix}-jobs"

    @property
    def users_bucket(self) -> str:
        return f"{self.prefix}-users"

    @property
    def replicas_bucket(self) -> str:
        return f"{self.prefix}-replicas"

    @property
    def snapshots_bucket(self) -> str:
        return f"{self.prefix}-snapshots"

    @property
    def ds_stream_name(self) -> str:
        """Durable Streams data: one subject per stream incarnation (docs/http.md)."""
        return f"{self.prefix.upper().replace('-', '_')}_DS"

    @property
    def ds_bucket(self) -> str:
        """Durable Streams metadata: stream records, state snapshots, last access."""
        return f"{self.prefix}-ds"

    def ds_subject(self, incarnation: str) -> str:
        return f"{self.prefix}.ds.{incarnation}"

    def ds_live_subject(self, incarnation: str) -> str:
        return f"{self.prefix}.dslive.{incarnation}"

    def events_subject(self, job_id: str) -> str:
        return f"{self.prefix}.events.{job_id}"

    def live_subject(self, job_id: str) -> str:
        return f"{self.prefix}.live.{job_id}"

    def abort_subject(self, job_id: str) -> str:
        return f"{self.prefix}.abort.{job_id}"

    def ingest_subject(self, job_id: str) -> str:
        return f"{self.prefix}.ingest.{job_id}"

    def rpc_subject(self, replica_id: str, op: str) -> str:
        return f"{self.prefix}.rpc.{replica_id}.{op}"

    @property
    def nats_lost_after(self) -> float:
        """Seconds without NATS after which a replica gives up (``nats_lost_exit``)."""
        if self.nats_lost_exit > 0:
            return self.nats_lost_exit
        return self.publish_outage_budget + NATS_LOST_MARGIN

    def presence_subject(self, job_id: str) -> str:
        return f"{self.prefix}.presence.{job_id}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``GENJOBS_<FIELD>`` variables; explicit overrides win.

        Raises:
            ValueError: a variable does not parse as its field's type.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("GENJOBS_" + f.name.upper())
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name)) if f.name != "nats_url" else str
            try:
                values[f.name] = kind(raw)
            except ValueError as e:
                raise ValueError(f"GENJOBS_{f.name.upper()}={raw!r}: {e}") from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
