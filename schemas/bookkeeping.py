"""The small records genjobs keeps beside the job record (docs/protocol.md, KV buckets and the
cleanup and presence subjects): each is encoded from, and decoded into, its Struct."""

from __future__ import annotations

from msgspec import Struct


class UserIndexEntry(Struct, frozen=True, kw_only=True, rename="camel"):
    """The value of ``genjobs-users/<user>.<job>`` (or ``<tenant>.<user>.<job>``)."""

    created_at: int


class CleanupOrder(Struct, frozen=True, kw_only=True, rename="camel"):
    """A message on ``genjobs.cleanup.<job>``: purge the job's log up to ``upToSeq`` at ``due``."""

    job_id: str
    created_at: int
    up_to_seq: int
    due: float
    """Unix seconds."""


class Heartbeat(Struct, frozen=True, kw_only=True):
    """The value of ``genjobs-replicas/<replica>``: when the replica last said it is alive."""

    at: float
    """Unix seconds."""


class PresenceAnnouncement(Struct, frozen=True, kw_only=True):
    """``genjobs.presence.<job>``: a reader hub's count of readers of the job, valid for
    ``ttl`` seconds."""

    hub: str
    count: int
    ttl: float
