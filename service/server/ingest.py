"""Remote producers (docs/protocol.md, remote producers): batches on ``<prefix>.ingest.<job_id>``.

Every replica subscribes in one queue group, so each batch reaches exactly one replica, which
answers it whatever the job's state (docs/protocol.md, "Every request gets one answer"):

* the job runs here: the batch is decoded and queued to the job's actor inside the
  subscription callback; a task waits for durability and answers;
* it runs on another live replica: relayed to that owner's own subject
  (``<prefix>.rpc.<owner>.ingest.<job_id>``, which it alone serves), whose answer is passed
  back;
* it ended: ``{ok: false, aborted: true}`` after an abort, the same acknowledgement again for a
  resent terminal batch, ``conflict`` for anything else;
* it is unknown: ``not_found``; its owner is gone: ``unavailable`` while the owner may still
  be alive (its heartbeat is younger than the lease), ``conflict`` once it is known dead;
* the id is not a valid id: ``invalid_id``.

A producer that pipelines batches may see them arrive at the owner out of order (one relayed,
the next delivered directly): a batch that starts beyond the next expected index waits, up to
``request_timeout``, for the batches before it, so the actor still takes them in order. A job
that ended here keeps a small tombstone (bounded, for ``completed_ttl``) with its exact last
acknowledgement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Final

import msgspec
from nats.aio.msg import Msg

from actors.handle import ActorHandle
from actors.messages import Ingest, IngestOutcome
from actors.termination import Complete, Fail
from schemas.api import IngestBatch, IngestReply, OwnerRequest, decode_ingest, encode
from schemas.errors import (
    BadRequest,
    Conflict,
    GenjobsError,
    JobEnded,
    NotFound,
    TooLarge,
    Unavailable,
)
from schemas.events import classify
from schemas.ids import check_id
from schemas.job import JobStatus
from service.server.ingest_state import Ended, Order, OwnerCache, Tombstones
from service.server.replica import Replica
from service.server.replies import relay, send, send_error

log = logging.getLogger("genjobs.ingest")

MAX_EVENT_DEPTH: Final = 64
"""Deeper event payloads are refused: msgspec's recursion limit (~1,000 levels) would otherwise
be hit later inside the actor, failing the job instead of the request."""

Spawn = Callable[[Coroutine[Any, Any, None], str], None]
"""Runs a coroutine in the service's TaskGroup; raises Unavailable when shutting down."""


def _too_deep(obj: dict[str, Any], limit: int) -> bool:
    """Whether ``obj`` nests containers deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[dict[str, Any] | list[Any], int]] = [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        values = item.values() if isinstance(item, dict) else item
        stack.extend((v, depth + 1) for v in values if isinstance(v, (dict, list)))
    return False


class IngestGateway:
    """The ingest subscriptions' handlers for one replica (owned by its ``ServiceApi``)."""

    def __init__(
        self,
        replica: Replica,
        spawn: Spawn,
        *,
        max_inflight: int,
        request_deadline: float,
        max_tombstones: int,
    ) -> None:
        self.replica = replica
        self.s = replica.s
        self._spawn = spawn
        self._slots = asyncio.Semaphore(max_inflight)
        self._deadline = request_deadline
        self._watched: dict[str, int] = {}  # running job -> next ingest index acknowledged
        self._order: dict[str, Order] = {}
        self._ended = Tombstones(max_tombstones)
        self._prefix = f"{self.s.prefix}.ingest."
        self._relayed_prefix = self.s.rpc_subject(replica.replica_id, "ingest.")
        self._owners = OwnerCache()
        self.relayed = 0
        """Batches this replica passed to another replica (the owner)."""

    @property
    def subject(self) -> str:
        return self._prefix + ">"

    @property
    def subjects(self) -> list[str]:
        """Public subjects (one queue group), ``>`` so that an id with dots is answered too."""
        return [self._prefix + ">", self._prefix[:-1]]

    @property
    def relay_subject(self) -> str:
        """Where other replicas relay batches of jobs this replica owns."""
        return self._relayed_prefix + "*"

    async def on_msg(self, msg: Msg) -> None:
        """``<prefix>.ingest.<job_id>``: answered here, relayed to the owner, or answered in
        the owner's place (see the module docstring)."""
        await self._handle(msg, msg.subject[len(self._prefix) :], relayed=False)

    async def on_relayed(self, msg: Msg) -> None:
        """``<prefix>.rpc.<me>.ingest.<job_id>``: relayed here by another replica; answered
        here, never relayed again."""
        await self._handle(msg, msg.subject[len(self._relayed_prefix) :], relayed=True)

    async def _handle(self, msg: Msg, job: str, *, relayed: bool) -> None:
        try:
            job_id = check_id(job, "jobId")
        except GenjobsError as e:
            await self._error(msg, e)
            return
        actor = self.replica.registry.get(job_id)
        if actor is not None:
            await self._local(msg, actor)
            return
        try:
            self._spawn(self._elsewhere(msg, job_id, relayed), f"ingest:{job_id}")
        except Unavailable as e:
            await self._error(msg, e)

    async def _local(self, msg: Msg, actor: ActorHandle) -> None:
        """Decode and queue in the subscription's order; a task waits for durability."""
        job_id = actor.job_id
        await self._slots.acquire()
        handed_off = False
        try:
            cmd, batch = self._command(msg.data)
            order = self._order_of(actor)
            if cmd.first_index is not None and cmd.first_index > order.expected:
                # Its predecessors may still be on their way through another replica. The
                # turn is registered now, so an advance before the task runs is not missed.
                turn = order.wait_for(cmd.first_index)
                self._spawn(
                    self._wait_turn(msg, actor, cmd, batch, order, turn), f"ingest:{job_id}"
                )
            else:
                queued = self._enqueue(actor, cmd, order)
                self._spawn(self._settle(msg, actor, cmd, batch, queued), f"ingest:{job_id}")
            handed_off = True
        except GenjobsError as e:
            await self._error(msg, e)
        except Exception:
            log.exception("ingest %s: unexpected error", job_id)
            await self._error(msg, Unavailable("internal error"))
        finally:
            if not handed_off:
                self._slots.release()

    def _order_of(self, actor: ActorHandle) -> Order:
        order = self._order.get(actor.job_id)
        if order is None:
            order = self._order[actor.job_id] = Order(expected=actor.ingested)
            self.watch(actor)
        return order

    async def _wait_turn(
        self,
        msg: Msg,
        actor: ActorHandle,
        cmd: Ingest,
        batch: IngestBatch,
        order: Order,
        turn: asyncio.Future[None],
    ) -> None:
        assert cmd.first_index is not None
        try:
            async with asyncio.timeout(self.s.request_timeout):
                await turn
        except TimeoutError:
            pass  # a real gap: the actor answers bad_request
        finally:
            waiting = order.waiting.get(cmd.first_index)
            if waiting is not None and turn in waiting:
                waiting.remove(turn)
                if not waiting:
                    del order.waiting[cmd.first_index]
        await self._settle(msg, actor, cmd, batch, self._enqueue(actor, cmd, order))

    @staticmethod
    def _enqueue(actor: ActorHandle, cmd: Ingest, order: Order) -> bool:
        """Hand the batch to the actor, synchronously so that order is kept; False if the
        actor no longer takes commands (the job ended)."""
        try:
            actor.ingest(cmd)
        except JobEnded:
            return False
        order.advance(cmd)
        return True

    async def _settle(
        self, msg: Msg, actor: ActorHandle, cmd: Ingest, batch: IngestBatch, queued: bool
    ) -> None:
        """Answer once the batch is stored (or as for an ended job). Owns one slot."""
        try:
            if queued:
                await self._await_stored(msg, actor, cmd, batch)
            else:
                await self._answer_ended_actor(msg, actor, batch)
        finally:
            self._slots.release()

    def _command(self, data: bytes) -> tuple[Ingest, IngestBatch]:
        """Raises: TooLarge, BadRequest."""
        if len(data) > self.s.max_request_bytes:
            raise TooLarge(f"batch of {len(data)} bytes exceeds {self.s.max_request_bytes}")
        try:
            batch = decode_ingest(data)
        except ValueError as e:
            raise BadRequest(str(e)) from e
        except RecursionError as e:
            raise BadRequest("JSON nested too deeply") from e
        if data.count(b"[") + data.count(b"{") > MAX_EVENT_DEPTH:
            for i, event in enumerate(batch.events):
                if _too_deep(event, MAX_EVENT_DEPTH):
                    raise BadRequest(f"events[{i}]: nested deeper than {MAX_EVENT_DEPTH} levels")
            if batch.complete is not None and _too_deep(batch.complete, MAX_EVENT_DEPTH):
                raise BadRequest(f"complete: nested deeper than {MAX_EVENT_DEPTH} levels")
        events = [(ev, classify(ev).value) for ev in batch.events]
        usage: list[dict[str, Any]] = [msgspec.to_builtins(u) for u in batch.usage]
        ending: Complete | Fail | None = None
        if batch.complete is not None:
            ending = Complete(batch.complete)
        elif batch.error is not None:
            ending = Fail(batch.error)
        metadata = msgspec.to_builtins(batch.metadata) if batch.metadata is not None else None
        fut: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        return Ingest(batch.first_index, events, usage, ending, metadata or None, fut), batch

    async def _await_stored(
        self, msg: Msg, actor: ActorHandle, cmd: Ingest, batch: IngestBatch
    ) -> None:
        job_id = actor.job_id
        try:
            async with asyncio.timeout(self._deadline):
                result = await cmd.fut
        except JobEnded:
            await self._answer_ended_actor(msg, actor, batch)
            return
        except GenjobsError as e:
            await self._error(msg, e)
            return
        except TimeoutError:
            log.warning("ingest %s: batch not stored within %.1fs", job_id, self._deadline)
            await self._error(msg, Unavailable("timed out storing the batch"))
            return
        except asyncio.CancelledError:
            await self._error(msg, Unavailable("shutting down"))
            raise
        except Exception:
            log.exception("ingest %s: unexpected error", job_id)
            await self._error(msg, Unavailable("internal error"))
            return
        next_index = result.next_index
        if job_id in self._watched:
            self._watched[job_id] = max(self._watched[job_id], next_index)
        if result.ended:
            await self._answer_ended_actor(msg, actor, batch, aborted=result.aborted)
            return
        reply = IngestReply(ok=True, next_index=next_index, seq=result.seq, aborted=result.aborted)
        await send(self.replica.nc, msg, encode(reply))

    async def _answer_ended_actor(
        self, msg: Msg, actor: ActorHandle, batch: IngestBatch, *, aborted: bool = False
    ) -> None:
        """A batch that reached the actor after its terminal: wait until the terminal event is
        written (the final status and seq are known then), answer as for an ended job."""
        if not aborted and not actor.aborted.is_set():
            try:
                async with asyncio.timeout(self._deadline):
                    await actor.wait_ended()
            except TimeoutError:
                await self._error(msg, Unavailable("timed out waiting for the job's end"))
                return
        ended = self._ended_of(actor)
        await self._answer_ended(msg, actor.job_id, ended, batch)

    async def _answer_ended(
        self, msg: Msg, job_id: str, ended: Ended, batch: IngestBatch | None
    ) -> None:
        """Aborted (or being aborted): ``{ok: false, aborted: true}``, the producer stops. The
        terminal batch resent: the same acknowledgement as the first time. Anything else after
        a completion or error: ``conflict``."""
        if ended.aborted or ended.status is JobStatus.ABORTED:
            reply = IngestReply(ok=False, next_index=ended.next_index, aborted=True)
            await send(self.replica.nc, msg, encode(reply))
        elif batch is not None and ended.same_terminal(batch):
            reply = IngestReply(ok=True, next_index=ended.next_index, seq=ended.seq)
            await send(self.replica.nc, msg, encode(reply))
        else:
            await self._error(msg, JobEnded(job_id, ended.status.value))

    async def _elsewhere(self, msg: Msg, job_id: str, relayed: bool) -> None:
        """A batch for a job with no actor here: a tombstone, the owner, or the record."""
        try:
            batch = self._command(msg.data)[1]
            ended = self._ended.get(job_id)
            if ended is not None:
                await self._answer_ended(msg, job_id, ended, batch)
                return
            owner = None if relayed else self._owners.get(job_id, self.replica.liveness.is_alive)
            if owner is not None:
                if await self._relay(msg, job_id, owner):
                    return
                self._owners.forget(job_id)  # gone: read the record
            loaded = await self.replica.store.load_record(job_id)
            if loaded is None:
                raise NotFound(f"job {job_id} not found", job_id=job_id)
            rec = loaded[0]
            me = self.replica.replica_id
            if not relayed and rec.owner != me and self.replica.liveness.is_alive(rec.owner):
                if rec.status is JobStatus.RUNNING:
                    self._owners.put(job_id, rec.owner)
                if await self._relay(msg, job_id, rec.owner):
                    return
                self._owners.forget(job_id)
                if rec.status is JobStatus.RUNNING:
                    raise Unavailable(
                        f"the owner of job {job_id} ({rec.owner}) does not answer; retry",
                        job_id=job_id,
                    )
            if rec.status is JobStatus.RUNNING:
                raise Conflict(
                    f"job {job_id} lost its owner ({rec.owner}); it ends with 'owner lost'",
                    job_id=job_id,
                )
            await self._answer_ended(msg, job_id, Ended.from_record(rec, batch), batch)
        except GenjobsError as e:
            await self._error(msg, e)
        except TimeoutError:
            await self._error(msg, Unavailable("timed out"))
        except Exception:
            log.exception("ingest %s: unexpected error", job_id)
            await self._error(msg, Unavailable("internal error"))

    async def _relay(self, msg: Msg, job_id: str, owner: str) -> bool:
        """Pass the batch to ``owner``; False if it does not serve its rpc subject."""
        subject = self.s.rpc_subject(owner, f"ingest.{job_id}")
        self.relayed += 1
        if not msg.reply:
            await self.replica.nc.publish(subject, msg.data, headers=msg.headers)
            return True
        return await relay(
            self.replica.nc,
            msg,
            subject,
            owner,
            self._deadline + self.s.request_timeout,
            Unavailable(f"the owner of job {job_id} ({owner}) did not answer in time"),
            (self.s.rpc_subject(owner, "snapshot"), encode(OwnerRequest(job_id=job_id))),
        )

    async def _error(self, msg: Msg, error: GenjobsError) -> None:
        await send_error(self.replica.nc, msg, error)

    # --- ended jobs -------------------------------------------------------------------------

    def watch(self, actor: ActorHandle) -> None:
        """Keep a tombstone when ``actor`` ends (chained onto its ``on_end`` callback)."""
        job_id = actor.job_id
        if job_id in self._watched:
            return
        self._watched[job_id] = 0
        actor.on_end(self._remember)

    def _ended_of(self, actor: ActorHandle) -> Ended:
        return Ended.of(actor, self.s.completed_ttl)

    def _remember(self, actor: ActorHandle) -> None:
        self._watched.pop(actor.job_id, None)
        self._order.pop(actor.job_id, None)
        self._ended.add(actor.job_id, self._ended_of(actor))
