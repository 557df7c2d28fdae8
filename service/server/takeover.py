"""Where a job is ended in a dead owner's place, and where a record is repaired from its log.

The end itself (event, record change, usage, reply) is decided by ``actors.termination``, the
same as the owner's actor; this module does the I/O around it, in an order that keeps the rules:

1. **Claim** the record (revision-checked: ``owner`` becomes this replica). Of several replicas
   racing to end the same job (janitors, an abort), exactly one wins the claim; the others see
   a running job owned by a live replica and ask it (an abort joins the end in progress, below).
   A zombie owner is locked out of the record from here on.
2. **Read the log's tail.** If the log already ends with a terminal event (its owner died between
   the event and the record), the record is **repaired** from that event; nothing is written to
   the log.
3. **Replay** the log (the abort final's content, the exact final snapshot), decide the end,
   **publish** the terminal event fenced on the tail (if a zombie owner appended meanwhile, the
   fence refuses it: read the tail again), then write the record, the snapshot and the
   bookkeeping.

An abort is a user's intent and wins over "owner lost": while the end is in progress here and
its event is not yet on its way, an abort arriving (locally or on ``<prefix>.rpc.<me>.abort``)
turns it into an abort; its caller gets the ``AbortResult`` with the usage. Only an abort that
arrives during the terminal publish itself (well under a millisecond on a healthy NATS) finds
the job ended with ``owner lost``; it then gets the usage, which "owner lost" never claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from actors.registry import Registry
from actors.snapshot import snapshot_of
from actors.termination import Abort, Fail, repaired, terminate
from schemas.api import AbortResult, CompletionResult
from schemas.errors import Conflict, OwnershipLost
from schemas.events import HDR_INDEX, HDR_KIND, TERMINAL_KINDS
from schemas.job import JobRecord, now_ms
from service.config import Settings
from service.nats.store import Store
from service.server.resume import replay

log = logging.getLogger("genjobs.takeover")

Result = AbortResult | CompletionResult


@dataclass
class _InProgress:
    ending: Fail | Abort
    done: asyncio.Future[Result | None]
    fixed: bool = False
    """The terminal event is on its way: the ending can no longer change."""
    joined: list[Abort] = field(default_factory=list)


class Takeover:
    def __init__(self, store: Store, settings: Settings, registry: Registry) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self._busy: dict[str, _InProgress] = {}

    def busy(self, job_id: str) -> bool:
        """This replica is ending ``job_id`` in its owner's place right now."""
        return job_id in self._busy

    def pending_ending(self, job_id: str) -> Fail | Abort | None:
        """The ending of the end in progress here for ``job_id`` (None: none in progress)."""
        progress = self._busy.get(job_id)
        return None if progress is None else progress.ending

    async def fail_orphan(self, rec: JobRecord, rev: int, reason: str = "owner lost") -> bool:
        """Give a dead owner's job its terminal error. False if it had ended meanwhile, or
        someone else is ending it."""
        ending = Fail.owner_lost() if reason == "owner lost" else Fail(reason)
        try:
            return await self.end(rec, rev, ending) is not None
        except (Conflict, OwnershipLost) as e:
            log.info("job %s: takeover skipped (%s)", rec.stream_id, e)
            return False

    async def end(self, rec: JobRecord, rev: int, ending: Fail | Abort) -> Result | None:
        """End the running job ``rec`` (at revision ``rev``) in its owner's place.

        Returns the result for the caller whose ending was used; None when the log had ended
        already (the record is repaired) or another caller's end was used: read the record.

        Raises:
            Conflict: the record moved (another replica claimed it, or it ended): read again.
        """
        job_id = rec.stream_id
        progress = self._busy.get(job_id)
        if progress is not None:
            return await self._join(progress, ending)
        progress = _InProgress(ending, asyncio.get_running_loop().create_future())
        self._busy[job_id] = progress
        self.registry.ending.add(job_id)  # not an orphan of this replica while it is ended here
        result: Result | None = None
        try:
            result = await self._end(rec, rev, progress)
            return result
        finally:
            del self._busy[job_id]
            self.registry.ending.discard(job_id)
            if not progress.done.done():
                progress.done.set_result(result)

    async def _join(self, progress: _InProgress, ending: Fail | Abort) -> Result | None:
        """An end is in progress here: an abort takes it over if its event is not yet sent."""
        mine = isinstance(ending, Abort) and not progress.fixed
        if mine and not isinstance(progress.ending, Abort):
            assert isinstance(ending, Abort)
            progress.ending = ending
            return await asyncio.shield(progress.done)
        await asyncio.shield(progress.done)
        return None

    async def _end(self, rec: JobRecord, rev: int, progress: _InProgress) -> Result | None:
        job_id = rec.stream_id
        rec = msgspec.structs.replace(
            rec,
            owner=self.s.replica_id,
            lease_until=int((time.time() + self.s.lease_ttl) * 1000),
        )
        rev = await self.store.update_record(rec, rev)  # the claim; raises Conflict
        for _ in range(5):
            tail = await self.store.subject_last(job_id)
            last_seq, headers = (0, {}) if tail is None else tail
            if headers.get(HDR_KIND) in TERMINAL_KINDS:
                await self._repair(rec, rev, last_seq, headers)
                return None
            index = int(headers.get(HDR_INDEX, "-1")) + 1
            agg = await replay(
                self.store, self.s, job_id, after_seq=rec.first_seq, up_to_seq=last_seq
            )
            end = terminate(rec, progress.ending, agg.content_filtered())
            progress.fixed = True
            try:
                seq = await self.store.publish_event(
                    job_id, end.payload, end.kind.value, index, last_seq, writer=self._writer
                )
            except OwnershipLost:
                progress.fixed = False  # a zombie owner appended: nothing of ours is stored
                continue
            final = end.record(rec, seq=seq, index=index, now=now_ms())
            await self.store.update_record(final, rev, ttl=self.s.completed_ttl)
            await self._finished(final, snapshot_of(final, agg, seq=seq, index=index))
            log.warning("job %s: ended by %s (%s)", job_id, self.s.replica_id, end.ending)
            return end.result(final, seq)
        raise Conflict(f"job {job_id}: its log kept moving during the takeover", job_id=job_id)

    @property
    def _writer(self) -> str:
        return f"takeover:{self.s.replica_id}"

    async def _repair(self, rec: JobRecord, rev: int, seq: int, headers: dict[str, Any]) -> None:
        """The record from the log's terminal event at ``seq`` (``actors.termination``)."""
        data = await self.store.event_data(rec.stream_id, seq)
        event = msgspec.json.decode(data) if data else {}
        index = int(headers.get(HDR_INDEX, rec.last_index))
        fixed = repaired(rec, headers.get(HDR_KIND), event, seq=seq, index=index, now=now_ms())
        if fixed is None:
            return
        await self.store.update_record(fixed, rev, ttl=self.s.completed_ttl)
        agg = await replay(
            self.store, self.s, rec.stream_id, after_seq=rec.first_seq, up_to_seq=seq
        )
        await self._finished(fixed, snapshot_of(fixed, agg, seq=seq, index=index))
        log.warning(
            "job %s: record repaired from its terminal event (%s)", rec.stream_id, fixed.status
        )

    async def _finished(self, rec: JobRecord, snap: Any) -> None:
        # The snapshot is derived data: a failed write leaves resume to replay the log.
        try:
            await self.store.put_snapshot(rec.stream_id, snap, ttl=self.s.completed_ttl)
        except Exception as e:
            log.warning("job %s: final snapshot not written: %r", rec.stream_id, e)
        await self.store.job_finished(rec)
