"""StreamActor: the single owner of one running job's state on its owner replica.

One task reads one inbox and is the only code that assigns to the job's state: status, next
index, aggregator, usage, abort signal. Events are published one at a time (the subject fence
needs the previous sequence); while a publish is in flight, later text/reasoning deltas are
coalesced into the next message, so light load gives one event per token and heavy load fewer,
larger messages with the same aggregate.

The aggregator advances only when a publish is acknowledged, so a snapshot's content is exactly
the content of the events up to its ``seq``: a reader continuing at ``seq + 1`` gets neither a
gap nor a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from actors.inbox import Inbox, InboxClosed
from actors.messages import (
    Command,
    Emit,
    Finish,
    Flush,
    Ingest,
    RecordUsage,
    Snapshot,
    UpdateMeta,
    already_claimed_result,
    reject,
    resolve,
)
from actors.port import ActorPort
from actors.termination import build_abort_final, parse_text
from schemas.content.aggregator import ContentAggregator
from schemas.content.coalesce import PlainRun, try_merge
from schemas.errors import GenjobsError, JobEnded, OwnershipLost, StoreFailed
from schemas.job import METADATA_FIELDS, JobRecord, JobStatus, record_to_dict

log = logging.getLogger("genjobs.actor")

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True)
class _Out:
    """An event waiting to be published; ``count`` producer events were merged into it."""

    event: dict[str, Any]
    kind: str
    count: int = 1
    owned: bool = False  # True once we copied the producer's dict (before mutating it)
    run: PlainRun | None = None  # merges kept as strings; ``event`` is built when published
    checked: bool = False  # whether a run was tried for ``event`` already


def _settle(out: _Out) -> None:
    """Build the event of a pending run of plain deltas (its own object once merged)."""
    run, out.run = out.run, None
    if run is not None and len(run.pieces) > 1:
        out.event = run.event()
        out.owned = True


@dataclass
class ActorStats:
    published: int = 0
    produced: int = 0
    merged: int = 0


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
        self._pending: deque[_Out] = deque()
        self._next_index = self.rec.last_index + 1
        self._last_seq = self.rec.last_seq
        self._barriers: list[tuple[int, asyncio.Future[int]]] = []
        self._finish: Finish | None = None
        self._late: list[Finish] = []
        self._dirty = False
        self._snapshot_due = time.monotonic() + self.snapshot_interval
        self._producer_tasks: set[asyncio.Task[Any]] = set()
        self._result: dict[str, Any] | None = None
        self._acked = 0  # producer events whose (possibly merged) message is acknowledged
        self._ingested = 0  # next producer index a remote producer's batch must start at

    @property
    def job_id(self) -> str:
        return self.rec.stream_id

    @property
    def last_seq(self) -> int:
        return self._last_seq

    @property
    def status(self) -> JobStatus:
        return self.rec.status

    # --- called from outside the actor task (handles); they only queue or signal ------------

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

    # --- the actor task -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._main()
        except OwnershipLost as e:
            log.warning("job %s: %s; this replica stops writing it", self.job_id, e)
            self._result = {"ownershipLost": True}
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
            if not self._pending and self._finish is None:
                timeout = self._idle_timeout()
                if await self.inbox.wait(timeout):
                    await self._absorb(self.inbox.take_all())
            while self._pending:
                await self._publish_head()
                await self._absorb(self.inbox.take_all())
            if self._finish is not None:
                await self._do_finish(self._finish)
                return
            if self._dirty and time.monotonic() >= self._snapshot_due:
                await self._write_snapshot()

    def _idle_timeout(self) -> float | None:
        if not self._dirty:
            return None
        return max(0.0, self._snapshot_due - time.monotonic())

    async def _absorb(self, cmds: list[Command]) -> None:
        for c in cmds:
            if isinstance(c, Emit):
                if self._finish is None:
                    self._enqueue(c)
            elif isinstance(c, Flush):
                self._barriers.append((self.stats.produced, c.fut))
                self._release_barriers()
            elif isinstance(c, Snapshot):
                resolve(c.fut, self.snapshot())
            elif isinstance(c, Ingest):
                await self._ingest(c)
            elif isinstance(c, Finish):
                if self._finish is None:
                    self._finish = c
                    self.accepting = False
                else:
                    self._late.append(c)
            elif self._finish is not None:
                reject(c.fut, JobEnded(self.job_id, "finishing"))
            elif isinstance(c, UpdateMeta):
                await self._apply_meta(c)
            elif isinstance(c, RecordUsage):
                self.rec.collected_usage.append(c.usage)
                await self._persist()
                resolve(c.fut, None)

    async def _ingest(self, c: Ingest) -> None:
        if self._finish is not None or self.rec.status.terminal:
            resolve(
                c.fut,
                {
                    "ok": False,
                    "nextIndex": self._ingested,
                    "aborted": self.aborted.is_set(),
                    "ended": True,
                },
            )
            return
        if c.first_index > self._ingested:
            from schemas.errors import BadRequest

            reject(
                c.fut, BadRequest(f"gap: expected firstIndex {self._ingested}, got {c.first_index}")
            )
            return
        if c.metadata:
            self._set_meta(c.metadata)
            await self._persist()
        fresh = c.items[self._ingested - c.first_index :]
        terminal: Finish | None = None
        usage_added = False
        for what, value in fresh:
            if what == "event":
                self._enqueue(Emit(value[0], value[1]))
            elif what == "usage":
                self.rec.collected_usage.append(value)
                usage_added = True
            else:
                fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                if what == "complete":
                    terminal = Finish("complete", fut, final_event=value)
                else:
                    terminal = Finish("error", fut, message=value)
        self._ingested += len(fresh)
        if usage_added:
            await self._persist()
        if terminal is not None:
            self._finish = terminal
            self.accepting = False
            self._reply_when(terminal.fut, c.fut, lambda r: r.get("seq"))
            return
        barrier: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._reply_when(barrier, c.fut, lambda seq: seq)
        self._barriers.append((self.stats.produced, barrier))
        self._release_barriers()

    def _reply_when(
        self,
        done: asyncio.Future[Any],
        reply: asyncio.Future[dict[str, Any]],
        seq_of: Callable[[Any], int | None],
    ) -> None:
        """Answer an ingest batch once ``done`` (durability or the terminal write) settles."""

        def settle(f: asyncio.Future[Any]) -> None:
            if f.cancelled():
                return
            err = f.exception()
            if err is not None:
                reject(reply, err)
                return
            resolve(
                reply,
                {
                    "ok": True,
                    "nextIndex": self._ingested,
                    "seq": seq_of(f.result()),
                    "aborted": self.aborted.is_set(),
                },
            )

        done.add_done_callback(settle)

    def _enqueue(self, e: Emit) -> None:
        self.stats.produced += 1
        if self._pending:
            tail = self._pending[-1]
            if tail.kind == "step" and e.kind == "step" and self._merge(tail, e.event):
                tail.count += 1
                self.stats.merged += 1
                return
        self._pending.append(_Out(e.event, e.kind))

    @staticmethod
    def _merge(tail: _Out, event: dict[str, Any]) -> bool:
        """Fold ``event`` into the pending ``tail`` (see actors/coalesce.py)."""
        if not tail.checked:
            tail.checked = True
            tail.run = PlainRun.start(tail.event)
        if tail.run is not None:
            if tail.run.add(event):
                return True
            _settle(tail)  # not a plain continuation: the general rules decide
        if not tail.owned:
            tail.event = _decode(_encode(tail.event))
            tail.owned = True
        return try_merge(tail.event, event)

    async def _publish_head(self) -> None:
        out = self._pending[0]
        _settle(out)
        index = self._next_index
        if index >= self.max_events - 1:
            raise StoreFailed(
                f"job {self.job_id} reached the per-job cap of {self.max_events} events"
            )
        payload = _encode(out.event)
        prev = self._last_seq
        seq = await self.port.publish_event(self.job_id, payload, out.kind, index, prev)
        self._pending.popleft()
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

    async def _apply_published(self, out: _Out) -> None:
        self._dirty = True
        ev = out.event
        if out.kind == "step":
            name = ev.get("event")
            if isinstance(name, str):
                self.agg.apply(name, ev.get("data"))
        elif out.kind == "created":
            msg = ev.get("message")
            if isinstance(msg, dict):
                self.rec.user_message = {
                    k: msg[k]
                    for k in ("messageId", "parentMessageId", "conversationId", "text")
                    if k in msg
                }
                if self.rec.conversation_id is None and isinstance(msg.get("conversationId"), str):
                    self.rec.conversation_id = msg["conversationId"]
                await self._persist()

    def _set_meta(self, fields: dict[str, Any]) -> None:
        for key, value in fields.items():
            attr = METADATA_FIELDS.get(key)
            if attr is not None:
                setattr(self.rec, attr, value)
            elif key == "syncSent":
                self.rec.sync_sent = bool(value)

    async def _apply_meta(self, c: UpdateMeta) -> None:
        self._set_meta(c.fields)
        await self._persist()
        self._dirty = True
        resolve(c.fut, None)

    async def _persist(self, *, ttl: float | None = None) -> None:
        self.rec.last_seq = self._last_seq
        self.rec.last_index = self._next_index - 1
        try:
            self.rev = await self.port.update_record(self.rec, self.rev, ttl=ttl)
        except GenjobsError as e:
            if e.code != "conflict":
                raise
            loaded = await self.port.load_record(self.job_id)
            if (
                loaded is None
                or loaded[0].status.terminal
                or loaded[0].owner != self.port.replica_id
            ):
                raise OwnershipLost(self.job_id, "record changed by another replica") from e
            # Still ours (e.g. a retried write that landed): adopt the revision and retry once.
            self.rev = loaded[1]
            self.rev = await self.port.update_record(self.rec, self.rev, ttl=ttl)

    # --- snapshot -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Resume state as of ``seq`` (the last acknowledged event)."""
        r = self.rec
        snap: dict[str, Any] = {
            "runSteps": self.agg.run_steps(),
            "aggregatedContent": self.agg.content_filtered(),
            "status": r.status.value,
            "createdAt": r.created_at,
            "seq": self._last_seq,
            "index": self._next_index - 1,
        }
        for key, value in (
            ("userMessage", r.user_message),
            ("responseMessageId", r.response_message_id),
            ("conversationId", r.conversation_id),
            ("sender", r.sender),
        ):
            if value is not None:
                snap[key] = value
        return snap

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

    # --- terminal -------------------------------------------------------------------------

    async def _do_finish(self, f: Finish) -> None:
        r = self.rec
        if f.kind == "complete":
            event = dict(f.final_event or {"final": True})
            event.setdefault("final", True)
            kind, status = "final", JobStatus.COMPLETE
        elif f.kind == "error":
            event = {"error": f.message or "error"}
            kind, status = "error", JobStatus.ERROR
        else:
            event = build_abort_final(record_to_dict(r), self.agg.content_filtered())
            kind, status = "final", JobStatus.ABORTED
        payload, prev, index = _encode(event), self._last_seq, self._next_index
        seq = await self.port.publish_event(self.job_id, payload, kind, index, prev)
        self._next_index += 1
        self._last_seq = seq
        self.port.delivered(self.job_id, seq, prev, kind, index, payload)
        r.status = status
        r.completed_at = now_ms()
        if f.kind == "error":
            r.error = f.message
        if f.kind == "abort":
            r.aborted_by = f.by or None
        usage = list(r.collected_usage)
        r.usage_claimed = True
        r.usage_claimed_by = f.kind
        await self._persist(ttl=self.completed_ttl)
        self.ended.set()
        await self._write_snapshot(ttl=self.completed_ttl)
        await self.port.job_finished(r)
        self._release_barriers()
        result: dict[str, Any] = {
            "success": True,
            "status": status.value,
            "seq": seq,
            "collectedUsage": usage,
            "finalEvent": event,
        }
        if f.kind == "abort":
            content = self.agg.content_filtered()
            result = {
                "success": True,
                "jobData": record_to_dict(r),
                "content": content,
                "finalEvent": event,
                "text": parse_text(content),
                "collectedUsage": usage,
                "usageAlreadyClaimed": False,
                "seq": seq,
            }
        self._result = result
        resolve(f.fut, result)
        for late in self._late:
            self._answer_late(late)

    def _answer_late(self, f: Finish) -> None:
        if f.kind == "abort":
            resolve(f.fut, already_claimed_result(self.rec))
        else:
            reject(f.fut, JobEnded(self.job_id, self.rec.status.value))

    async def _fail_after_crash(self, err: Exception) -> None:
        """One job's failure ends that job with a terminal error, never the replica."""
        if self.rec.status.terminal:
            return
        try:
            async with asyncio.timeout(10):
                self._pending.clear()
                for attempt in range(3):
                    # The cursor may be stale (an ambiguous publish may have landed): re-read
                    # the subject's tail so the terminal event is fenced on what is really there.
                    tail = await self.port.subject_last(self.job_id)
                    if tail is not None:
                        seq, headers = tail
                        if headers.get("Genjobs-Writer") != self.port.replica_id:
                            raise OwnershipLost(self.job_id, "another writer appended")
                        if headers.get("Genjobs-Kind") in ("final", "error"):
                            return
                        self._last_seq = seq
                        index = int(headers.get("Genjobs-Index", self._next_index - 1))
                        self._next_index = index + 1
                    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                    message = str(err) if isinstance(err, StoreFailed) else f"internal error: {err}"
                    try:
                        await self._do_finish(Finish("error", fut, message=message))
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

    def _close(self) -> None:
        self.accepting = False
        self.ended.set()
        leftover = self.inbox.close()
        err = JobEnded(self.job_id, self.rec.status.value)
        for c in leftover:
            if isinstance(c, Finish):
                if self._result is not None and c.kind == "abort":
                    resolve(c.fut, already_claimed_result(self.rec))
                else:
                    reject(c.fut, err)
            elif not isinstance(c, Emit):
                reject(c.fut, err)
        for f in [*self._late, *([self._finish] if self._finish else [])]:
            if not f.fut.done():
                reject(f.fut, err)
        for _, fut in self._barriers:
            reject(fut, err)
        self._barriers.clear()
        if self.on_end is not None:
            self.on_end(self)

    # --- queueing helpers used by handles ------------------------------------------------------

    def request(self, cmd: Command) -> None:
        """Queue a control command.

        Raises:
            JobEnded: the actor no longer takes commands.
        """
        try:
            self.inbox.put_control(cmd)
        except InboxClosed as e:
            raise JobEnded(self.job_id, self.rec.status.value) from e


__all__ = [
    "Emit",
    "Finish",
    "Flush",
    "RecordUsage",
    "Snapshot",
    "StreamActor",
    "UpdateMeta",
    "already_claimed_result",
]
