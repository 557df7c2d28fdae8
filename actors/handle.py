"""The handle on a running job's actor: the only way code outside the actor reaches it.

Everything here queues a message or sets a signal; nothing assigns the actor's state. The
registry hands these out (``Registry.get``), the producer API builds on it
(``service.client.producer.JobHandle``), and the server side (abort, resume, ingest, the
shutdown) calls its methods instead of touching the actor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from actors.inbox import Inbox, InboxClosed
from actors.messages import (
    Command,
    Emit,
    Finish,
    Flush,
    Ingest,
    RecordUsage,
    Release,
    Snapshot,
    UpdateMeta,
)
from actors.termination import Abort, Ending
from schemas.api import AbortResult, CompletionResult, ResumeSnapshot
from schemas.job import JobRecord, JobStatus


@dataclass
class ActorStats:
    """An actor's counters (``ActorHandle.stats``)."""

    published: int = 0
    produced: int = 0
    merged: int = 0


class Actor(Protocol):
    """What the handle reaches of its actor (``actors.stream_actor.StreamActor``): named here
    so that the handle does not import the actor, which imports the handle."""

    remote: bool
    on_end: Callable[[Any], None] | None
    """Called with the actor once it has ended (the actor's own type: hence ``Any`` here)."""

    @property
    def rec(self) -> JobRecord: ...
    @property
    def job_id(self) -> str: ...
    @property
    def aborted(self) -> asyncio.Event: ...
    @property
    def ended(self) -> asyncio.Event: ...
    @property
    def accepting(self) -> bool: ...
    @property
    def inbox(self) -> Inbox[Command]: ...
    @property
    def ingested(self) -> int: ...
    @property
    def last_seq(self) -> int: ...
    @property
    def stats(self) -> ActorStats: ...
    def snapshot(self) -> ResumeSnapshot: ...
    def request(self, cmd: Command) -> None: ...
    def signal_abort(self) -> None: ...
    def bind_producer(self, task: asyncio.Task[Any]) -> None: ...


class ActorHandle:
    """A handle on one actor. Holds no state of the job itself."""

    __slots__ = ("_actor",)

    def __init__(self, actor: Actor) -> None:
        self._actor = actor

    # --- reads (the actor's current values; never assign through them) ----------------------

    @property
    def job_id(self) -> str:
        return self._actor.job_id

    @property
    def record(self) -> JobRecord:
        """The job's record as the actor holds it now (read-only for callers)."""
        return self._actor.rec

    @property
    def status(self) -> JobStatus:
        return self._actor.rec.status

    @property
    def aborted(self) -> asyncio.Event:
        """Set the moment anyone, on any replica, aborts the job."""
        return self._actor.aborted

    @property
    def ended(self) -> bool:
        return self._actor.ended.is_set()

    @property
    def accepting(self) -> bool:
        """Whether the actor still takes producer events (not ending, not aborted)."""
        return self._actor.accepting

    @property
    def closed(self) -> bool:
        """The actor takes no more messages (its end callbacks have run)."""
        return self._actor.inbox.closed

    @property
    def ingested(self) -> int:
        """The next producer index a remote producer's batch must start at."""
        return self._actor.ingested

    @property
    def last_seq(self) -> int:
        """Stream sequence of the job's last stored event (its terminal one once ended)."""
        return self._actor.last_seq

    @property
    def stats(self) -> ActorStats:
        return self._actor.stats

    def current_snapshot(self) -> ResumeSnapshot:
        """Resume state as of the last acknowledged event (in memory, no queueing)."""
        return self._actor.snapshot()

    async def wait_ended(self) -> None:
        await self._actor.ended.wait()

    # --- requests ------------------------------------------------------------------------------

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def abort(self, by: str) -> AbortResult:
        """Abort: the producer is signalled at once, then the actor writes the abort final.

        Returns the ``AbortResult`` with the usage for the first abort, ``usageAlreadyClaimed``
        for an abort that arrives while (or after) the job ends.

        Raises:
            JobEnded: the actor had already gone (read the record instead).
            OwnershipLost: another replica took the job over meanwhile.
        """
        self._actor.signal_abort()
        result = await self.finish(Abort(by))
        if isinstance(result, AbortResult):
            return result
        raise AssertionError("an abort is answered with an AbortResult")

    async def finish(self, ending: Ending) -> AbortResult | CompletionResult:
        """End the job (``actors.termination``).

        Raises:
            JobEnded: the job had already ended (or the actor is gone).
        """
        return await self.request_finish(ending)

    def request_finish(self, ending: Ending) -> asyncio.Future[AbortResult | CompletionResult]:
        """Queue the end and return the future that answers it (no task needed).

        Raises:
            JobEnded: the actor takes no more messages.
        """
        fut: asyncio.Future[AbortResult | CompletionResult] = self._future()
        self._actor.request(Finish(ending, fut))
        return fut

    async def put_event(self, event: dict[str, Any], kind: str) -> bool:
        """Queue a producer event, waiting while the inbox is full; False if the job ended."""
        if not self._actor.accepting:
            return False
        try:
            await self._actor.inbox.put_event(Emit(event, kind))
        except InboxClosed:
            return False
        return True

    async def flush(self) -> int:
        """Wait until every event queued so far is durable; returns the last sequence.

        Raises:
            JobEnded: the job ended before they were stored.
        """
        fut: asyncio.Future[int] = self._future()
        self._actor.request(Flush(fut))
        return await fut

    async def add_usage(self, usage: dict[str, Any]) -> None:
        """Record one model call's usage; durable on return. Raises: JobEnded."""
        fut: asyncio.Future[None] = self._future()
        self._actor.request(RecordUsage(usage, fut))
        await fut

    def bind_producer(self, task: asyncio.Task[Any]) -> None:
        """Cancel ``task`` when the job is aborted."""
        self._actor.bind_producer(task)

    @property
    def remote(self) -> bool:
        """Its producer is remote (``api.create`` + ingest), so the job may be handed off."""
        return self._actor.remote

    def mark_remote(self) -> None:
        self._actor.remote = True

    def release(self, owner: str) -> asyncio.Future[tuple[JobRecord, int]]:
        """Hand the job to replica ``owner`` (service/server/handoff.py): the future gets the
        record naming it and its revision once everything queued is stored; the actor then
        ends without a terminal event.

        Raises:
            JobEnded: the actor takes no more messages.
        """
        fut: asyncio.Future[tuple[JobRecord, int]] = self._future()
        self._actor.request(Release(owner, fut))
        return fut

    def stop_producer(self) -> None:
        """The producer's signal to stop generating (the replica's shutdown)."""
        self._actor.signal_abort()

    async def snapshot(self) -> ResumeSnapshot:
        fut: asyncio.Future[ResumeSnapshot] = self._future()
        self._actor.request(Snapshot(fut))
        return await fut

    async def update_meta(self, fields: dict[str, Any]) -> None:
        """Raises: JobEnded."""
        fut: asyncio.Future[None] = self._future()
        self._actor.request(UpdateMeta(fields, fut))
        await fut

    def ingest(self, cmd: Ingest) -> None:
        """Queue a remote producer's batch (in the caller's order); ``cmd.fut`` answers it.

        Raises:
            JobEnded: the actor takes no more messages.
        """
        self._actor.request(cmd)

    def on_end(self, callback: Callable[[ActorHandle], None]) -> None:
        """Run ``callback(handle)`` when the actor ends (after the earlier callbacks); at once
        if it has ended already."""
        if self.closed:
            callback(self)
            return
        previous = self._actor.on_end

        def ended(a: Any) -> None:
            if previous is not None:
                previous(a)
            callback(self)

        self._actor.on_end = ended
