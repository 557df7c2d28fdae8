"""Handoff: a stopping replica moves its remote-producer jobs to another live replica.

A rolling restart then interrupts no remote generation. Jobs whose producer runs in the
stopping process (``Replica.create_job`` + ``JobHandle``) cannot move: their code dies with the
process, so they still end with their terminal event ("interrupted: replica shutting down").

Old owner (``Replica.stop``, after it stopped taking work, before the terminal events):

1. For each running actor whose producer is remote (created by ``<prefix>.api.create``, fed by
   ``<prefix>.ingest.<job>``), pick a live replica (heartbeats; not itself; random order).
2. ``Release`` the actor to it: the actor publishes what it has queued (every batch it accepted
   is acknowledged by then), writes the record with ``owner`` = the target, ``ingestNext`` and
   ``lastSeq``/``lastIndex`` (revision-checked: the record's fence), and ends without a
   terminal event.
3. Ask the target to adopt it: ``<prefix>.rpc.<target>.adopt {"jobId"}``. A refusal or no
   responder: the next candidate (the record is rewritten, revision-checked). Nobody took it:
   the old owner writes the terminal event itself (the fenced takeover of service/server/ops.py),
   as without handoff. No answer in ``handoff_timeout``: the job stays with the target, whose
   janitor ends it if it never adopted it.

New owner (the ``adopt`` rpc): the record must name it as owner of a running job; the log's
tail (the subject fence: last seq and index) must be the record's ``lastSeq``; the log is
replayed into the aggregator (the content of snapshots and abort finals); an actor starts from
the record and the tail. The producer's next batch (a resend of one the old owner no longer
answered) reaches whichever replica the ingest queue group picks, which runs it or relays it to
the owner the record names (service/server/ingest.py): the new owner answers it;
``ingestNext`` recognises what was already stored. Its publishes are fenced on the subject's last sequence, so a stale writer could never
add to the log.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from actors.handle import ActorHandle
from actors.registry import Registry
from actors.termination import Fail
from schemas.errors import Conflict, GenjobsError, JobEnded, NotFound, OwnershipLost, Unavailable
from schemas.events import HDR_KIND, EventKind
from schemas.job import JobRecord
from service.config import Settings
from service.nats.store import Store
from service.server.liveness import Liveness
from service.server.resume import replay
from service.server.takeover import Takeover

StartActor = Callable[..., ActorHandle]
"""``Replica.start_actor(rec, rev, agg=...)``: run an adopted job's actor on this replica."""

log = logging.getLogger("genjobs.handoff")
_enc = msgspec.json.Encoder()


class Handoff:
    """Both sides of the handoff for one replica (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        store: Store,
        liveness: Liveness,
        takeover: Takeover,
        start_actor: StartActor,
    ) -> None:
        self.s = settings
        self.me = settings.replica_id
        self.registry = registry
        self.store = store
        self.liveness = liveness
        self.takeover = takeover
        self._start_actor = start_actor
        self.handed_off = 0
        self.adopted = 0
        self.fallbacks = 0

    # --- old owner --------------------------------------------------------------------------

    async def hand_off_all(self, timeout: float) -> int:
        """Hand every running remote-producer job to another replica, within ``timeout``
        seconds in all (a share of the stop's grace); how many moved. A job still running here
        when the time is up gets its terminal event from ``Replica.stop``, as without handoff."""
        if self.s.handoff_timeout <= 0:
            return 0
        actors = [a for a in self.registry.actors() if a.remote and a.accepting]
        if not actors:
            return 0
        tasks = [asyncio.ensure_future(self._hand_off(a)) for a in actors]
        _done, late = await asyncio.wait(tasks, timeout=timeout)
        for t in late:
            t.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        moved = 0
        for actor, result in zip(actors, results, strict=True):
            if isinstance(result, asyncio.CancelledError):
                log.warning("job %s: handoff not done within the grace period", actor.job_id)
            elif isinstance(result, BaseException):
                log.error("job %s: handoff failed", actor.job_id, exc_info=result)
            elif result:
                moved += 1
        log.info(
            "handoff: %d of %d remote-producer jobs moved to other replicas", moved, len(actors)
        )
        return moved

    def _candidates(self) -> list[str]:
        me = self.me
        live = [r for r in self.liveness.live_replicas() if r != me]
        random.shuffle(live)
        return live

    async def _hand_off(self, actor: ActorHandle) -> bool:
        """True once another replica runs the job (or was given it and did not answer)."""
        candidates = self._candidates()
        if not candidates:
            return False  # alone: the job gets its terminal event here
        try:
            fut = actor.release(candidates[0])
        except JobEnded:
            return False
        try:
            rec, rev = await fut
        except GenjobsError as e:
            # The actor could not write the record: it ended the job itself (or still runs and
            # gets its terminal event from Replica.stop).
            log.warning("job %s: not released for handoff: %r", actor.job_id, e)
            return False
        for i, target in enumerate(candidates):
            if i:
                rec.owner = target
                try:
                    rev = await self.store.update_record(rec, rev)
                except Conflict:
                    log.info("job %s: record changed during handoff; left as it is", rec.stream_id)
                    return True
            answer = await self._ask_adopt(target, rec.stream_id)
            if answer is None:
                log.warning(
                    "job %s: %s did not answer the handoff in %.1fs; its janitor ends the job "
                    "if it did not adopt it",
                    rec.stream_id,
                    target,
                    self.s.handoff_timeout,
                )
                self.handed_off += 1
                return True
            if answer.get("adopted"):
                log.info("job %s: handed off to %s at seq %s", rec.stream_id, target, rec.last_seq)
                self.handed_off += 1
                return True
            log.info("job %s: %s refused the handoff: %s", rec.stream_id, target, answer)
        await self._end_here(rec, rev)
        return False

    async def _ask_adopt(self, target: str, job_id: str) -> dict[str, Any] | None:
        """The target's answer, ``{"refused": ...}`` when nobody listens, None on a timeout."""
        try:
            msg = await self.store.nc.request(
                self.s.rpc_subject(target, "adopt"),
                _enc.encode({"jobId": job_id}),
                timeout=self.s.handoff_timeout,
            )
        except nats.errors.NoRespondersError:
            return {"refused": "no responders"}
        except (nats.errors.TimeoutError, TimeoutError):
            return None
        answer = msgspec.json.decode(msg.data)
        return answer if isinstance(answer, dict) else {"refused": answer}

    async def _end_here(self, rec: JobRecord, rev: int) -> None:
        """No replica adopted the job: take it back and give it its terminal event."""
        self.fallbacks += 1
        rec.owner = self.me
        try:
            rev = await self.store.update_record(rec, rev)
        except Conflict:
            log.info("job %s: record changed during handoff; left as it is", rec.stream_id)
            return
        await self.takeover.end(rec, rev, Fail.shutdown())

    # --- new owner --------------------------------------------------------------------------

    async def adopt(self, job_id: str) -> dict[str, Any]:
        """The ``adopt`` rpc: run a job another replica handed to this one.

        Raises:
            Unavailable: this replica is stopping (or handoff is off).
            NotFound, Conflict, JobEnded: the job is not this replica's to adopt.
        """
        registry = self.registry
        if registry.closing or self.s.handoff_timeout <= 0:
            raise Unavailable("not adopting jobs (stopping, or handoff off)")
        if registry.get(job_id) is not None:
            return {"adopted": True}  # a repeated request
        if job_id in registry:
            raise Conflict(f"job {job_id} is being created here", job_id=job_id)
        registry.reserved.add(job_id)  # the janitor leaves it alone while we build the actor
        try:
            return await self._adopt(job_id)
        finally:
            registry.reserved.discard(job_id)

    async def _adopt(self, job_id: str) -> dict[str, Any]:
        store = self.store
        loaded = await store.load_record(job_id)
        if loaded is None:
            raise NotFound(f"job {job_id} not found")
        rec, rev = loaded
        if rec.owner != self.me:
            raise Conflict(f"job {job_id} is owned by {rec.owner}", job_id=job_id)
        if rec.status.terminal:
            raise JobEnded(job_id, rec.status.value)
        seq, headers = await self._leader_tail(job_id)
        if headers.get(HDR_KIND) in (EventKind.FINAL, EventKind.ERROR):
            raise JobEnded(job_id, "ended in its log")
        if seq != rec.last_seq:
            # Someone wrote after the old owner's last record: not a clean handoff.
            raise OwnershipLost(
                job_id, f"log tail {seq} is not the record's lastSeq {rec.last_seq}"
            )
        await self._followers_reach(job_id, seq)
        agg = await replay(store, self.s, job_id, after_seq=rec.first_seq, up_to_seq=seq)
        self._start_actor(rec, rev, agg=agg).mark_remote()
        self.adopted += 1
        log.info("job %s: adopted at seq %d (producer index %d)", job_id, seq, rec.ingest_next)
        return {"adopted": True, "seq": seq}

    async def _leader_tail(self, job_id: str) -> tuple[int, dict[str, Any]]:
        """The subject's last (seq, headers) as the stream leader has it. A Direct Get may be
        answered by a follower that lags behind on a replicated stream; this must not be."""
        try:
            msg = await self.store.js.get_last_msg(
                self.s.stream_name, self.s.events_subject(job_id)
            )
        except nats.js.errors.NotFoundError:
            return 0, {}
        return int(msg.seq or 0), dict(msg.headers or {})

    async def _followers_reach(self, job_id: str, seq: int) -> None:
        """Wait (bounded) until Direct Get, which the replay uses and any replica of the stream
        may answer, serves the tail too: the aggregator must see every event up to ``seq``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.request_timeout
        while True:
            tail = await self.store.subject_last(job_id)
            if (0 if tail is None else tail[0]) >= seq:
                return
            if loop.time() >= deadline:
                log.warning("job %s: Direct Get still behind seq %d; replaying anyway", job_id, seq)
                return
            await asyncio.sleep(0.05)  # a follower applies the leader's writes within ms
