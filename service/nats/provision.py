"""Idempotent creation of the event stream, the cleanup queue and the KV buckets (docs/protocol.md, The event stream).

Provisioning never runs silently on settings the code did not ask for: if a stream or bucket
exists with different settings, :class:`ProvisionMismatch` lists every difference and the
replica refuses to start (fix it with ``nats stream edit`` or delete the old one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RePublish,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import NotFoundError

from service.config import Settings


class ProvisionMismatch(RuntimeError):
    """An existing stream or bucket has settings other than the ones genjobs needs."""

    def __init__(self, name: str, diffs: dict[str, tuple[Any, Any]]) -> None:
        self.name = name
        self.diffs = diffs
        lines = ", ".join(f"{k}: have {have!r}, want {want!r}" for k, (have, want) in diffs.items())
        super().__init__(f"stream {name} exists with different settings ({lines})")


# Fields compared between the wanted and the existing config. Others (description, metadata,
# server-filled defaults) may differ without harm.
_COMPARED = (
    "subjects",
    "retention",
    "storage",
    "num_replicas",
    "discard",
    "discard_new_per_subject",
    "max_msgs_per_subject",
    "max_age",
    "max_bytes",
    "max_consumers",
    "allow_direct",
    "allow_msg_ttl",
    "allow_atomic",
    "allow_rollup_hdrs",
    "deny_delete",
)


def events_stream_config(s: Settings) -> StreamConfig:
    """The event log: one subject per job, a per-job cap that refuses rather than drops."""
    return StreamConfig(
        name=s.stream_name,
        description="genjobs: one subject per job, one message per LibreChat event",
        subjects=[f"{s.prefix}.events.*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=s.stream_replicas,
        # Per-job cap: the publish beyond it is refused and the job fails loudly; nothing
        # already written is ever discarded to make room.
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=s.max_events_per_job,
        max_age=s.stream_max_age,
        max_bytes=s.stream_max_bytes,
        # nats-server 2.15 caps a stream at 1,000 consumers unless this is positive.
        max_consumers=s.max_consumers,
        allow_direct=True,
        allow_rollup_hdrs=False,
        # Writes are fenced with Nats-Expected-Last-Subject-Sequence, not Msg-Id, so the
        # server keeps no per-event dedupe state; a short window is enough for anything else.
        duplicate_window=1.0,
        # Live fan-out without a consumer per reader: every stored event is re-published on a
        # core subject with Nats-Sequence and Nats-Last-Sequence, which lets readers detect gaps.
        republish=RePublish(
            src=f"{s.prefix}.events.*", dest=f"{s.prefix}.live.{{{{wildcard(1)}}}}"
        ),
    )


def cleanup_stream_config(s: Settings) -> StreamConfig:
    """Work queue of finished jobs whose event logs are to be purged after ``completed_ttl``."""
    return StreamConfig(
        name=f"{s.stream_name.removesuffix('_EVENTS')}_CLEANUP",
        description="genjobs: finished jobs awaiting removal of their event log",
        subjects=[f"{s.prefix}.cleanup.*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=s.stream_replicas,
        discard=DiscardPolicy.OLD,
        max_age=s.stream_max_age,
        max_consumers=16,
        allow_direct=True,
    )


def ds_stream_config(s: Settings) -> StreamConfig:
    """Durable Streams over HTTP: one subject per stream incarnation, one message per append.

    No age or size limit: a Durable Stream lives until it is deleted or its own TTL expires
    (enforced by the gateway). Republished like the event log, for live readers' wake-ups.
    """
    return StreamConfig(
        name=s.ds_stream_name,
        description="genjobs: Durable Streams, one subject per stream incarnation",
        subjects=[f"{s.prefix}.ds.*"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=s.stream_replicas,
        discard=DiscardPolicy.NEW,
        max_age=0.0,
        max_bytes=s.stream_max_bytes,
        allow_direct=True,
        allow_rollup_hdrs=False,
        # Concurrent appends to one stream commit together as one atomic batch.
        allow_atomic=True,
        # Appends are fenced with Nats-Expected-Last-Subject-Sequence, not Msg-Id.
        duplicate_window=1.0,
        republish=RePublish(src=f"{s.prefix}.ds.*", dest=f"{s.prefix}.dslive.{{{{wildcard(1)}}}}"),
    )


@dataclass(frozen=True)
class BucketSpec:
    name: str
    ttl: float | None
    history: int = 1


def bucket_specs(s: Settings) -> list[BucketSpec]:
    return [
        # Records live as long as their job runs; finished ones carry a per-message TTL.
        BucketSpec(s.jobs_bucket, None),
        BucketSpec(s.users_bucket, None),
        BucketSpec(s.snapshots_bucket, None),
        # Replica heartbeats: a dead replica's key simply ages out.
        BucketSpec(s.replicas_bucket, max(30.0, s.lease_ttl * 5)),
    ]


def _kv_stream_name(bucket: str) -> str:
    return f"KV_{bucket}"


def _diff(want: StreamConfig, have: StreamConfig) -> dict[str, tuple[Any, Any]]:
    diffs: dict[str, tuple[Any, Any]] = {}
    for f in _COMPARED:
        w, h = getattr(want, f), getattr(have, f)
        if w is None:
            continue
        if f == "max_age":
            w, h = float(w or 0), float(h or 0)
        if f in ("max_bytes", "max_consumers") and (w in (-1, 0) and h in (-1, 0, None)):
            continue
        if f == "max_consumers" and h == -1 and w > 0:
            # nats-server reports -1 even when a positive limit is stored (docs/nats-py.md).
            continue
        if bool(w) is w and not w and not h:
            continue
        if f == "subjects":
            w, h = sorted(w or []), sorted(h or [])
        if w != h:
            diffs[f] = (h, w)
    want_rp, have_rp = want.republish, have.republish
    if want_rp is not None and (
        have_rp is None or (have_rp.src, have_rp.dest) != (want_rp.src, want_rp.dest)
    ):
        diffs["republish"] = (
            None if have_rp is None else f"{have_rp.src} -> {have_rp.dest}",
            f"{want_rp.src} -> {want_rp.dest}",
        )
    return diffs


async def ensure_stream(js: JetStreamContext, want: StreamConfig) -> None:
    """Create ``want`` if absent; verify it if present.

    Raises:
        ProvisionMismatch: the stream exists with other settings.
    """
    assert want.name is not None
    try:
        info = await js.stream_info(want.name)
    except NotFoundError:
        await js.add_stream(want)
        return
    diffs = _diff(want, info.config)
    if diffs:
        raise ProvisionMismatch(want.name, diffs)


async def ensure_bucket(js: JetStreamContext, spec: BucketSpec, replicas: int) -> None:
    """Create a KV bucket with direct get and per-message TTL allowed, or verify it.

    Raises:
        ProvisionMismatch: the bucket exists with other settings.
    """
    stream = _kv_stream_name(spec.name)
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_key_value(
            KeyValueConfig(
                bucket=spec.name,
                history=spec.history,
                ttl=spec.ttl,
                replicas=replicas,
                storage=StorageType.FILE,
                direct=True,
            )
        )
        return
    want = StreamConfig(
        name=stream,
        subjects=[f"$KV.{spec.name}.>"],
        num_replicas=replicas,
        max_msgs_per_subject=spec.history,
        max_age=spec.ttl or 0.0,
        allow_direct=True,
        allow_msg_ttl=True,
        discard=DiscardPolicy.NEW,
        allow_rollup_hdrs=True,
        deny_delete=True,
    )
    diffs = _diff(want, info.config)
    if diffs:
        raise ProvisionMismatch(stream, diffs)


def ds_bucket_spec(s: Settings) -> BucketSpec:
    return BucketSpec(s.ds_bucket, None)


async def provision_durable(js: JetStreamContext, s: Settings) -> None:
    """The Durable Streams stream and bucket (the HTTP gateway's), idempotently.

    Raises:
        ProvisionMismatch: one of them exists with settings genjobs did not ask for.
    """
    await ensure_stream(js, ds_stream_config(s))
    await ensure_bucket(js, ds_bucket_spec(s), s.stream_replicas)


async def provision(js: JetStreamContext, s: Settings) -> None:
    """Everything a replica needs, idempotently. Safe to call from many replicas at once.

    Raises:
        ProvisionMismatch: something exists with settings genjobs did not ask for.
    """
    await ensure_stream(js, events_stream_config(s))
    await ensure_stream(js, cleanup_stream_config(s))
    for spec in bucket_specs(s):
        await ensure_bucket(js, spec, s.stream_replicas)
