"""Remote producers (docs/protocol.md, remote producers): batches on ``<prefix>.ingest.<job_id>``, answered by the owner.

Every replica subscribes (no queue group) and only the job's owner answers, like the abort
subject. A batch is decoded and queued to the job's actor inside the subscription callback, so
batches reach the actor in the order they were sent even when a producer pipelines them; only
the wait for durability runs in a task of the service's TaskGroup. A job that ended while this
replica owned it keeps a small tombstone (bounded, for ``completed_ttl``), so a producer still
sending learns ``aborted: true`` (or ``conflict`` for a job that completed) instead of waiting
for a reply nobody sends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from nats.aio.msg import Msg

from actors.handle import ActorHandle
from actors.messages import Ingest, IngestOutcome
from actors.termination import Complete, Fail
from schemas.api import IngestReply, decode_ingest, encode
from schemas.errors import BadRequest, GenjobsError, JobEnded, TooLarge, Unavailable
from schemas.events import classify
from schemas.job import JobStatus
from service.server.replica import Replica
from service.server.replies import send, send_error

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


@dataclass(slots=True)
class _Ended:
    """What a former owner still knows about a job it served, to answer a late ingest."""

    status: JobStatus
    aborted: bool
    next_index: int
    expires: float


class IngestGateway:
    """The ingest subscription's handler for one replica (owned by its ``ServiceApi``)."""

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
        self._max_tombstones = max_tombstones
        self._watched: dict[str, int] = {}  # running job -> next ingest index acknowledged
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        self._prefix = f"{self.s.prefix}.ingest."

    @property
    def subject(self) -> str:
        return self._prefix + "*"

    async def on_msg(self, msg: Msg) -> None:
        """``<prefix>.ingest.<job_id>``: the owner answers, every other replica stays silent.

        Decoding and queueing happen here, in the subscription's order; a task waits for the
        batch to be durable and answers.
        """
        job_id = msg.subject[len(self._prefix) :]
        actor = self.replica.registry.get(job_id)
        if actor is None:
            ended = self._tombstone(job_id)
            if ended is not None:
                await self._answer_ended(msg, job_id, ended.status, ended.aborted, ended.next_index)
            return
        await self._slots.acquire()
        handed_off = False
        try:
            try:
                cmd = self._command(msg.data)
                actor.ingest(cmd)
            except JobEnded:
                next_index = self._watched.get(job_id, 0)
                await self._answer_ended(
                    msg, job_id, actor.status, actor.aborted.is_set(), next_index
                )
                return
            self.watch(actor)
            self._spawn(self._await_stored(msg, actor, cmd), f"ingest:{job_id}")
            handed_off = True
        except GenjobsError as e:
            await self._error(msg, e)
        except Exception:
            log.exception("ingest %s: unexpected error", job_id)
            await self._error(msg, Unavailable("internal error"))
        finally:
            if not handed_off:
                self._slots.release()

    def _command(self, data: bytes) -> Ingest:
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
        return Ingest(batch.first_index, events, usage, ending, metadata or None, fut)

    async def _await_stored(self, msg: Msg, actor: ActorHandle, cmd: Ingest) -> None:
        job_id = actor.job_id
        try:
            try:
                async with asyncio.timeout(self._deadline):
                    result = await cmd.fut
            except JobEnded:
                next_index = self._watched.get(job_id, 0)
                await self._answer_ended(
                    msg, job_id, actor.status, actor.aborted.is_set(), next_index
                )
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
                await self._answer_ended(msg, job_id, actor.status, result.aborted, next_index)
                return
            reply = IngestReply(
                ok=True, next_index=next_index, seq=result.seq, aborted=result.aborted
            )
            await send(self.replica.nc, msg, encode(reply))
        finally:
            self._slots.release()

    async def _answer_ended(
        self, msg: Msg, job_id: str, status: JobStatus, aborted: bool, next_index: int
    ) -> None:
        """Aborted (or being aborted): ``{ok: false, aborted: true}``, the producer stops.
        Completed or failed: ``conflict``, nothing more is accepted."""
        if aborted or status is JobStatus.ABORTED:
            reply = IngestReply(ok=False, next_index=next_index, aborted=True)
            await send(self.replica.nc, msg, encode(reply))
        else:
            await self._error(msg, JobEnded(job_id, status.value))

    async def _error(self, msg: Msg, error: GenjobsError) -> None:
        await send_error(self.replica.nc, msg, error)

    # --- ended jobs -------------------------------------------------------------------------

    def watch(self, actor: ActorHandle) -> None:
        """Keep a tombstone when ``actor`` ends."""
        job_id = actor.job_id
        if job_id in self._watched:
            return
        self._watched[job_id] = 0
        actor.on_end(self._remember)

    def _remember(self, actor: ActorHandle) -> None:
        next_index = self._watched.pop(actor.job_id, 0)
        now = time.monotonic()
        self._ended[actor.job_id] = _Ended(
            status=actor.status,
            aborted=actor.aborted.is_set() or actor.status is JobStatus.ABORTED,
            next_index=next_index,
            expires=now + self.s.completed_ttl,
        )
        self._ended.move_to_end(actor.job_id)
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if len(self._ended) <= self._max_tombstones and oldest.expires > now:
                break
            self._ended.popitem(last=False)

    def _tombstone(self, job_id: str) -> _Ended | None:
        ended = self._ended.get(job_id)
        if ended is not None and ended.expires <= time.monotonic():
            del self._ended[job_id]
            return None
        return ended
