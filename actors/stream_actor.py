"""StreamActor: the single owner of one running job's state on its owner replica.

One task reads one inbox and is the only code that assigns to the job's state: status, next
index, aggregator, usage, abort signal. Events are published one at a time (the subject fence
needs the previous sequence), coalesced while a publish is in flight (``actors.outbox``). The
aggregator advances only when a publish is acknowledged, so a snapshot's content is exactly
that of the events up to its ``seq``. How the job ends is ``actors.termination``'s decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, assert_never

import msgspec

from actors.fences import read_tail, write_record
from actors.handle import ActorHandle, ActorStats
from actors.inbox import Inbox, InboxClosed
from actors.messages import (
    Command,
    Emit,
    Finish,
    Flush,
    Ingest,
    IngestOutcome,
    RecordUsage,
    Release,
    Snapshot,
    UpdateMeta,
    answer_when,
    reject,
    resolve,
)
from actors.outbox import Out, Outbox
from actors.port import ActorPort
from actors.snapshot import snapshot_of
from actors.termination import Abort, Complete, Fail, claim_ended, terminate
from schemas.api import AbortResult, CompletionResult, ResumeSnapshot
from schemas.content.aggregator import ContentAggregator
from schemas.errors import BadRequest, GenjobsError, JobEnded, OwnershipLost, StoreFailed
from schemas.job import JobRecord, JobStatus, apply_metadata, now_ms, track_user_message

log = logging.getLogger("genjobs.actor")

_encode = msgspec.json.Encoder().encode


@dataclass
class StreamActor:
    rec: JobRecord
    rev: int
    port: ActorPort
    inbox_size: int = 1024
    snapshot_interval: float = 2.0
    completed_ttl: float = 300.0
    max_events: int = 200_000
    """Per-job cap; the last slot is kept for the terminal event so a capped job still ends."""
    on_end: Callable[[StreamActor], None] | None = None
    remote: bool = False
    """Its producer is remote (``api.create`` + ingest): the job can move to another replica
    when this one stops (service/server/handoff.py); an in-process producer cannot."""
    # state -------------------------------------------------------------------------------
    inbox: Inbox[Command] = field(init=False)
    aborted: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    """Set the moment an abort is requested: the producer's signal to stop generating."""
    ended: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    accepting: bool = field(init=False, default=True)
    stats: ActorStats = field(init=False, default_factory=ActorStats)

    def __post_init__(self) -> None:
        self.inbox = Inbox(self.inbox_size)
        self.agg = ContentAggregator()
        self.handle = ActorHandle(self)
        self._outbox = Outbox()
        self._next_index = self.rec.last_index + 1
        self._last_seq = self.rec.last_seq
        self._barriers: list[tuple[int, asyncio.Future[int]]] = []
        self._finish: Finish | None = None
        self._late: list[Finish] = []
        self._finished_here = False  # this actor stored the terminal event and the record
        self._dirty = False
        self._snapshot_due = time.monotonic() + self.snapshot_interval
        self._producer_tasks: set[asyncio.Task[Any]] = set()
        self._acked = 0  # producer events whose (possibly merged) message is acknowledged
        self._ingested = self.rec.ingest_next  # next index a remote producer's batch starts at
        self._release: Release | None = None
        self.released = False
        """Ended by a handoff: the job runs on, on another replica (no terminal event here)."""

    @property
    def job_id(self) -> str:
        return self.rec.stream_id

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def status(self) -> JobStatus:
        return self.rec.status

    @property
    def ingested(self) -> int:
        """The next producer index a remote producer's batch must start at."""
        return self._ingested

    # --- called from outside the actor task (through the handle); only queue or signal ------

    def signal_abort(self) -> None:
        """Immediate part of an abort: stop accepting and wake/cancel the producer."""
        self.accepting = False
        self.aborted.set()
        for t in list(self._producer_tasks):
            t.cancel()

    def bind_producer(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` when the job is aborted (for producers that prefer cancellation)."""
        self._producer_tasks.add(task)
        task.add_done_callback(self._producer_tasks.discard)

    def request(self, cmd: Command) -> None:
        """Queue a control command.

        Raises:
            JobEnded: the actor no longer takes commands.
        """
        try:
            self.inbox.put_control(cmd)
        except InboxClosed as e:
            raise JobEnded(self.job_id, self.rec.status.value) from e

    # --- the actor task -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._main()
        except OwnershipLost as e:
            log.warning("job %s: %s; this replica stops writing it", self.job_id, e)
            self.signal_abort()  # the producer must stop: its events can no longer be stored
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("job %s: actor failed", self.job_id)
            self.signal_abort()
            await self._fail_after_crash(e)
        finally:
            self._close()

    async def _main(self) -> None:
        while True:
            if not self._outbox and self._finish is None and self._release is None:
                timeout = self._idle_timeout()
                if await self.inbox.wait(timeout):
                    await self._absorb(self.inbox.take_all())
            while self._outbox:
                await self._publish_head()
                await self._absorb(self.inbox.take_all())
            if self._finish is not None:
                await self._do_finish(self._finish)
                return
            if self._release is not None:
                await self._do_release(self._release)
                return
            if self._dirty and time.monotonic() >= self._snapshot_due:
                await self._write_snapshot()

    def _idle_timeout(self) -> float | None:
        if not self._dirty:
            return None
        return max(0.0, self._snapshot_due - time.monotonic())

    async def _absorb(self, cmds: list[Command]) -> None:
        for c in cmds:
            match c:
                case Emit():
                    if self._finish is None:
                        self._enqueue(c.event, c.kind)
                case Flush(fut=fut):
                    self._barriers.append((self.stats.produced, fut))
                    self._release_barriers()
                case Snapshot(fut=fut):
                    resolve(fut, self.snapshot())
                case Ingest():
                    await self._ingest(c)
                case Finish():
                    if self._finish is None and self._release is None:
                        self._finish = c
                        self.accepting = False
                    else:
                        self._late.append(c)
                case Release():
                    if self._finish is None and self._release is None:
                        self._release = c
                        self.accepting = False
                    else:
                        reject(c.fut, JobEnded(self.job_id, "finishing"))
                case UpdateMeta() | RecordUsage() if self._finish or self._release is not None:
                    reject(c.fut, JobEnded(self.job_id, "finishing"))
                case UpdateMeta():
                    await self._apply_meta(c)
                case RecordUsage(usage=usage, fut=fut):
                    self.rec.collected_usage.append(usage)
                    await self._persist()
                    resolve(fut, None)
                case _:
                    assert_never(c)

    async def _ingest(self, c: Ingest) -> None:
        if self._release is not None:
            # Being handed off: the new owner answers the producer's resend of this batch.
            reject(c.fut, JobEnded(self.job_id, "handed off"))
            return
        if self._finish is not None or self.rec.status.terminal:
            outcome = IngestOutcome(self._ingested, None, self.aborted.is_set(), ended=True)
            resolve(c.fut, outcome)
            return
        first = self._ingested if c.first_index is None else c.first_index
        if first > self._ingested:
            gap = f"gap: expected firstIndex {self._ingested}, got {first}"
            reject(c.fut, BadRequest(gap))
            return
        if c.metadata:
            apply_metadata(self.rec, c.metadata)
            await self._persist()
        fresh = c.items_from(self._ingested)
        terminal: Finish | None = None
        usage_added = False
        for item in fresh:
            match item:
                case Emit(event=event, kind=kind):
                    self._enqueue(event, kind)
                case Complete() | Fail():
                    terminal = Finish(item, asyncio.get_running_loop().create_future())
                case _:
                    self.rec.collected_usage.append(item)
                    usage_added = True
        self._ingested += len(fresh)
        if usage_added:
            await self._persist()
        if terminal is not None:
            self._finish = terminal
            self.accepting = False
            self._reply_when(terminal.fut, c.fut)
            return
        barrier: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reply_when(barrier, c.fut)
        self._barriers.append((self.stats.produced, barrier))
        self._release_barriers()

    def _reply_when(self, done: asyncio.Future[Any], reply: asyncio.Future[IngestOutcome]) -> None:
        """Answer an ingest batch once ``done`` (durability or the terminal write) settles."""
        answer_when(
            done, reply, lambda seq: IngestOutcome(self._ingested, seq, self.aborted.is_set())
        )

    def _enqueue(self, event: dict[str, Any], kind: str) -> None:
        self.stats.produced += 1
        if self._outbox.add(event, kind):
            self.stats.merged += 1

    async def _publish_head(self) -> None:
        out = self._outbox.head()
        index = self._next_index
        if index >= self.max_events - 1:
            raise StoreFailed(
                f"job {self.job_id} reached the per-job cap of {self.max_events} events"
            )
        payload = _encode(out.event)
        prev = self._last_seq
        seq = await self.port.publish_event(self.job_id, payload, out.kind, index, prev)
        self._outbox.pop()
        self._next_index = index + 1
        self._last_seq = seq
        self.port.delivered(self.job_id, seq, prev, out.kind, index, payload)
        self.stats.published += 1
        await self._apply_published(out)
        self._acked += out.count
        self._release_barriers()

    def _release_barriers(self) -> None:
        if not self._barriers:
            return
        keep = []
        for target, fut in self._barriers:
            if self._acked >= target:
                resolve(fut, self._last_seq)
            else:
                keep.append((target, fut))
        self._barriers = keep

    async def _apply_published(self, out: Out) -> None:
        self._dirty = True
        ev = out.event
        if out.kind == "step":
            name = ev.get("event")
            if isinstance(name, str):
                self.agg.apply(name, ev.get("data"))
        elif out.kind == "created" and track_user_message(self.rec, ev.get("message")):
            await self._persist()

    async def _apply_meta(self, c: UpdateMeta) -> None:
        apply_metadata(self.rec, c.fields)
        await self._persist()
        self._dirty = True
        resolve(c.fut, None)

    async def _persist(self, *, ttl: float | None = None) -> None:
        self.rec.last_seq = self._last_seq
        self.rec.last_index = self._next_index - 1
        self.rec.ingest_next = self._ingested
        self.rev = await write_record(self.port, self.rec, self.rev, ttl=ttl)

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> ResumeSnapshot:
        """Resume state as of ``seq`` (the last acknowledged event)."""
        return snapshot_of(self.rec, self.agg, seq=self._last_seq, index=self._next_index - 1)

    async def _write_snapshot(self, *, ttl: float | None = None) -> None:
        # Derived data (the events are stored): a failed write is retried at the next interval
        # and never ends the job; readers then resume from an older snapshot, still exactly.
        self._snapshot_due = time.monotonic() + self.snapshot_interval
        try:
            await self.port.put_snapshot(self.job_id, self.snapshot(), ttl=ttl)
        except Exception as e:
            log.warning("job %s: snapshot not written (retried later): %r", self.job_id, e)
            return
        self._dirty = False

    # --- handoff --------------------------------------------------------------------------

    async def _do_release(self, c: Release) -> None:
        """Everything queued is published and acknowledged (``_main`` drained it): write the
        record naming the new owner, fenced by its revision, and stop without a terminal event.
        The new owner continues from the log's tail (the subject fence) and this record."""
        await self._write_snapshot()
        previous, self.rec.owner = self.rec.owner, c.owner
        try:
            await self._persist()
        except BaseException:
            self.rec.owner = previous  # still ours: a failure path ends it as before
            raise
        self.released = True
        resolve(c.fut, (self.rec, self.rev))

    # --- terminal (decided by actors.termination) -------------------------------------------

    async def _do_finish(self, f: Finish) -> None:
        end = terminate(self.rec, f.ending, self.agg.content_filtered())
        payload, prev, index = end.payload, self._last_seq, self._next_index
        seq = await self.port.publish_event(self.job_id, payload, end.kind.value, index, prev)
        self._next_index += 1
        self._last_seq = seq
        self.port.delivered(self.job_id, seq, prev, end.kind.value, index, payload)
        self.rec = end.record(self.rec, seq=seq, index=index, now=now_ms())
        await self._persist(ttl=self.completed_ttl)
        self._finished_here = True
        self.ended.set()
        await self._write_snapshot(ttl=self.completed_ttl)
        await self.port.job_finished(self.rec)
        self._release_barriers()
        resolve(f.fut, end.result(self.rec, seq))
        for late in self._late:
            self._answer_late(late)

    def _answer_late(self, f: Finish) -> None:
        """A second end after this actor ended the job: an abort learns the usage was claimed
        (``actors.termination.claim_ended``); anything else that the job has ended."""
        changed, result = claim_ended(self.rec)
        if isinstance(f.ending, Abort) and changed is None:
            resolve(f.fut, result)
        else:  # not an abort, or a claim to store: the caller goes through the record
            reject(f.fut, JobEnded(self.job_id, self.rec.status.value))

    async def _fail_after_crash(self, err: Exception) -> None:
        """One job's failure ends that job with a terminal error, never the replica."""
        if self.rec.status.terminal:
            return
        ending = Fail.after_crash(err)
        try:
            async with asyncio.timeout(10):
                self._outbox.clear()
                for attempt in range(3):
                    # The cursor may be stale (an ambiguous publish may have landed): re-read
                    # the subject's tail so the terminal event is fenced on what is really there.
                    # The port rides out an outage here (service/nats/outage.py), so a job that
                    # failed because NATS was away writes its own terminal error once it is back.
                    if await self._resync_tail():
                        return
                    fut: asyncio.Future[AbortResult | CompletionResult]
                    fut = asyncio.get_running_loop().create_future()
                    try:
                        await self._do_finish(Finish(ending, fut))
                        return
                    except OwnershipLost:
                        # A given-up publish of ours can still land after the tail was read
                        # (its copies were on the wire): read the tail again, which tells our
                        # own event from another writer's.
                        if attempt == 2:
                            raise
        except (GenjobsError, TimeoutError) as e2:
            # The janitor sweeps running records owned here without an actor, and retries.
            log.error("job %s: could not write its terminal error: %s", self.job_id, e2)

    async def _resync_tail(self) -> bool:
        """Move the cursor to the subject's stored tail; True if the log has already ended.

        Raises:
            OwnershipLost: the tail was written by another writer.
        """
        tail = await read_tail(self.port, self.job_id)
        if tail is None:
            return False
        if tail.terminal:
            return True
        self._last_seq = tail.seq
        if tail.index is not None:
            self._next_index = tail.index + 1
        return False

    def _close(self) -> None:
        self.accepting = False
        self.ended.set()
        leftover = self.inbox.close()
        err = JobEnded(self.job_id, self.rec.status.value)
        for c in leftover:
            if isinstance(c, Finish) and self._finished_here:
                self._answer_late(c)
            elif not isinstance(c, Emit):
                reject(c.fut, err)
        for f in [*self._late, *([self._finish] if self._finish else [])]:
            if not f.fut.done():
                reject(f.fut, err)
        for _, fut in self._barriers:
            reject(fut, err)
        self._barriers.clear()
        if self._release is not None:
            reject(self._release.fut, err)
        if self.on_end is not None:
            self.on_end(self)


__all__ = ["ActorStats", "StreamActor"]
