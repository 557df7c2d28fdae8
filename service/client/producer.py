"""The in-process producer API: what a generation loop holds while it streams a job.

    async with await replica.create_job(user_id="u1", conversation_id="c1") as job:
        async for token in llm.stream(prompt):
            if job.aborted.is_set():
                break
            await job.emit(message_delta(step_id, token))
        await job.complete(final_event)

Leaving the ``async with`` block by an exception fails the job with that error (and re-raises);
leaving it without ``complete``/``fail`` fails it too, so no job is left running by accident.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from types import TracebackType
from typing import Any

from actors.inbox import InboxClosed
from actors.stream_actor import Emit, Finish, Flush, RecordUsage, Snapshot, StreamActor, UpdateMeta
from schemas.errors import BadRequest, JobEnded
from schemas.events import classify, is_terminal
from schemas.job import JobRecord

log = logging.getLogger("genjobs.producer")


class EmitResult(enum.Enum):
    ACCEPTED = "accepted"
    ENDED = "ended"
    """The job has ended or is being aborted: the event was not taken (a no-op that says so)."""


class JobHandle:
    """A producer's handle on the actor of its job. Holds no state of the job itself."""

    def __init__(self, actor: StreamActor) -> None:
        self._actor = actor

    @property
    def job_id(self) -> str:
        return self._actor.job_id

    @property
    def record(self) -> JobRecord:
        return self._actor.rec

    @property
    def aborted(self) -> asyncio.Event:
        """Set the moment anyone, on any replica, aborts the job."""
        return self._actor.aborted

    @property
    def ended(self) -> bool:
        return self._actor.ended.is_set()

    async def wait_aborted(self) -> None:
        await self._actor.aborted.wait()

    def cancel_on_abort(self, task: asyncio.Task[Any] | None = None) -> None:
        """Have ``task`` (default: the current task) cancelled when the job is aborted."""
        task = task or asyncio.current_task()
        if task is None:
            raise RuntimeError("cancel_on_abort needs a task")
        self._actor.bind_producer(task)

    async def emit(self, event: dict[str, Any]) -> EmitResult:
        """Append one LibreChat event. Waits while the actor's inbox is full (backpressure).

        Raises:
            BadRequest: not an event genjobs carries, or a terminal event (use complete/fail).
        """
        try:
            kind = classify(event)
        except ValueError as e:
            raise BadRequest(str(e)) from e
        if is_terminal(kind):
            raise BadRequest("terminal events go through complete() or fail()")
        actor = self._actor
        if not actor.accepting:
            return EmitResult.ENDED
        try:
            await actor.inbox.put_event(Emit(event, kind.value))
        except InboxClosed:
            return EmitResult.ENDED
        return EmitResult.ACCEPTED

    async def _ask(self, cmd: Any) -> Any:
        self._actor.request(cmd)
        return await cmd.fut

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def flush(self) -> int:
        """Wait until every event emitted so far is durable; returns the last sequence.

        Raises:
            JobEnded: the job ended before they were stored.
        """
        seq: int = await self._ask(Flush(self._future()))
        return seq

    async def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = await self._ask(Snapshot(self._future()))
        return snap

    async def update_metadata(self, **fields: Any) -> None:
        """Persist metadata (camelCase names of docs/protocol.md, job records: responseMessageId, sender, ...).

        Raises:
            BadRequest: an unknown field.  JobEnded: the job has ended.
        """
        from schemas.job import METADATA_FIELDS

        unknown = set(fields) - set(METADATA_FIELDS) - {"syncSent"}
        if unknown:
            raise BadRequest(f"unknown metadata fields: {sorted(unknown)}")
        await self._ask(UpdateMeta(fields, self._future()))

    async def record_usage(self, usage: dict[str, Any]) -> None:
        """Record the usage of one model call (OpenAI or Anthropic shape); durable on return.

        Raises:
            JobEnded: the job has ended.
        """
        if not isinstance(usage, dict):
            raise BadRequest("usage must be an object")
        await self._ask(RecordUsage(dict(usage), self._future()))

    async def complete(self, final_event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the final event; returns ``{seq, collectedUsage, ...}`` — the job's usage,
        reported here once.

        Raises:
            JobEnded: the job had already ended (e.g. it was aborted).
        """
        result: dict[str, Any] = await self._ask(
            Finish("complete", self._future(), final_event=final_event)
        )
        return result

    async def fail(self, message: str) -> dict[str, Any]:
        """End the job with an error event that late readers still receive.

        Raises:
            JobEnded: the job had already ended.
        """
        result: dict[str, Any] = await self._ask(Finish("error", self._future(), message=message))
        return result

    async def wait_ended(self) -> None:
        await self._actor.ended.wait()

    async def __aenter__(self) -> JobHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._actor.ended.is_set() or (
            not self._actor.accepting and self._actor.aborted.is_set()
        ):
            # Already finished, or aborted: the actor writes the abort final on its own.
            if exc_type is asyncio.CancelledError and self._actor.aborted.is_set():
                await self._actor.ended.wait()
            return
        message = (
            f"producer failed: {exc_type.__name__}: {exc}"
            if exc_type is not None
            else "producer finished without complete()"
        )
        try:
            await self.fail(message)
        except JobEnded:
            # It ended concurrently (an abort won the race); its terminal event exists.
            log.debug("job %s ended before the producer's exit could fail it", self.job_id)
