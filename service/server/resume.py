"""Where the resume snapshot is built: ``resume`` and ``status`` from any replica.

A snapshot is valid at its ``seq``: its content is exactly that of the events up to ``seq``, so a
reader continuing at ``seq + 1`` gets neither a gap nor a duplicate. Sources, cheapest first:

1. the owner's actor, in memory (here, or asked on ``<prefix>.rpc.<owner>.snapshot``);
2. the snapshot stored in KV ``genjobs-snapshots`` if it is as recent as the log (the owner writes
   one every ``snapshot_interval`` and one at the end; a takeover writes one at the end);
3. otherwise the log itself: the job's events replayed up to the log's last sequence
   (:func:`replay`; its cost grows with the job, so only when the owner is gone or a stored
   snapshot is behind). So status and resume are exact also after a takeover.
"""

from __future__ import annotations

import msgspec

from actors.registry import Registry
from actors.snapshot import snapshot_of
from schemas.api import ResumeSnapshot, StatusReply
from schemas.content.aggregator import ContentAggregator
from schemas.events import HDR_INDEX, HDR_KIND, EventKind
from schemas.job import JobRecord, JobStatus
from service.config import Settings
from service.nats.directget import direct_get_batch
from service.nats.store import Store
from service.server.owner_link import OwnerLink
from service.server.reads import load_authorized


async def replay(
    store: Store, settings: Settings, job_id: str, *, after_seq: int = 0, up_to_seq: int
) -> ContentAggregator:
    """Aggregate a job's step events with ``after_seq < seq <= up_to_seq`` from its log."""
    agg = ContentAggregator()
    subject = settings.events_subject(job_id)
    seq = after_seq + 1
    while seq <= up_to_seq:
        msgs, pending = await direct_get_batch(
            store.nc, settings.stream_name, subject, seq, timeout=settings.request_timeout
        )
        for m in msgs:
            if m.seq > up_to_seq:
                return agg
            if m.header(HDR_KIND) == EventKind.STEP:
                ev = msgspec.json.decode(m.data)
                if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                    agg.apply(ev["event"], ev.get("data"))
            seq = m.seq + 1
        if not msgs or pending == 0:
            break
    return agg


async def snapshot_from_log(store: Store, settings: Settings, rec: JobRecord) -> ResumeSnapshot:
    """The exact snapshot at the log's last sequence (one Direct Get, then the replay)."""
    tail = await store.subject_last(rec.stream_id)
    if tail is None:
        return snapshot_of(rec, ContentAggregator(), seq=0, index=-1)
    seq, headers = tail
    agg = await replay(store, settings, rec.stream_id, after_seq=rec.first_seq, up_to_seq=seq)
    return snapshot_of(rec, agg, seq=seq, index=int(headers.get(HDR_INDEX, "-1")))


class Resumes:
    def __init__(
        self, store: Store, settings: Settings, registry: Registry, owner: OwnerLink
    ) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self.owner = owner

    async def resume(
        self, job_id: str, user_id: str, tenant_id: str | None = None
    ) -> ResumeSnapshot:
        """Resume snapshot valid at its ``seq``: continue reading at ``seq + 1``.

        Raises:
            NotFound, Forbidden.
        """
        rec, _ = await load_authorized(self.store, job_id, user_id, tenant_id)
        return await self.snapshot(rec)

    async def snapshot(self, rec: JobRecord) -> ResumeSnapshot:
        if rec.status is JobStatus.RUNNING:
            handle = self.registry.get(rec.stream_id)
            if handle is not None:
                return handle.current_snapshot()
            live = await self.owner.snapshot(rec.owner, rec.stream_id)
            if isinstance(live, ResumeSnapshot):
                return live
        snap = await self.store.get_snapshot(rec.stream_id)
        if snap is not None and snap.created_at not in (None, rec.created_at):
            snap = None  # an older generation of a reused id
        if snap is None or snap.seq < rec.last_seq or rec.status is JobStatus.RUNNING:
            # The owner is gone (or the stored one lags the record): compare with the log.
            tail = await self.store.subject_last_seq(rec.stream_id)
            if snap is None or snap.seq < tail:
                snap = await snapshot_from_log(self.store, self.s, rec)
        return msgspec.structs.replace(
            snap,
            status=rec.status.value,
            created_at=rec.created_at,
            user_message=snap.user_message or rec.user_message,
            response_message_id=snap.response_message_id or rec.response_message_id,
            conversation_id=snap.conversation_id or rec.conversation_id,
            sender=snap.sender or rec.sender,
        )

    async def status(self, job_id: str, user_id: str, tenant_id: str | None = None) -> StatusReply:
        """LibreChat's stream info: exactly as of ``seq``.

        Raises:
            NotFound, Forbidden.
        """
        rec, _ = await load_authorized(self.store, job_id, user_id, tenant_id)
        snap = await self.snapshot(rec)
        return StatusReply(
            active=rec.status is JobStatus.RUNNING,
            status=rec.status.value,
            aggregated_content=snap.aggregated_content,
            created_at=rec.created_at,
            seq=snap.seq,
        )
