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

import msgspec

from actors.handle import ActorHandle
from actors.termination import Complete, Fail
from schemas.errors import BadRequest, JobEnded
from schemas.events import classify, is_terminal
from schemas.job import METADATA_FIELDS

log = logging.getLogger("genjobs.producer")


class EmitResult(enum.Enum):
    ACCEPTED = "accepted"
    ENDED = "ended"
    """The job has ended or is being aborted: the event was not taken (a no-op that says so)."""


class JobHandle(ActorHandle):
    """A producer's handle on the actor of its job. Holds no state of the job itself.

    Results are returned as the JSON objects of docs/protocol.md (``CompletionResult``,
    ``ResumeSnapshot``), the same the wire carries.
    """

    __slots__ = ()

    @classmethod
    def of(cls, handle: ActorHandle) -> JobHandle:
        """The producer API on the actor behind ``handle``."""
        return cls(handle._actor)

    async def wait_aborted(self) -> None:
        await self.aborted.wait()

    def cancel_on_abort(self, task: asyncio.Task[Any] | None = None) -> None:
        """Have ``task`` (default: the current task) cancelled when the job is aborted."""
        task = task or asyncio.current_task()
        if task is None:
            raise RuntimeError("cancel_on_abort needs a task")
        self.bind_producer(task)

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
        if await self.put_event(event, kind.value):
            return EmitResult.ACCEPTED
        return EmitResult.ENDED

    async def snapshot(self) -> dict[str, Any]:  # type: ignore[override]
        """The resume snapshot (docs/protocol.md) as of the last stored event."""
        snap: dict[str, Any] = msgspec.to_builtins(await super().snapshot())
        return snap

    async def update_metadata(self, **fields: Any) -> None:
        """Persist metadata (camelCase names of docs/protocol.md, job records: responseMessageId, sender, ...).

        Raises:
            BadRequest: an unknown field.  JobEnded: the job has ended.
        """
        unknown = set(fields) - set(METADATA_FIELDS) - {"syncSent"}
        if unknown:
            raise BadRequest(f"unknown metadata fields: {sorted(unknown)}")
        await self.update_meta(fields)

    async def record_usage(self, usage: dict[str, Any]) -> None:
        """Record the usage of one model call (OpenAI or Anthropic shape); durable on return.

        Raises:
            JobEnded: the job has ended.
        """
        if not isinstance(usage, dict):
            raise BadRequest("usage must be an object")
        await self.add_usage(dict(usage))

    async def complete(self, final_event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Publish the final event; returns ``{seq, collectedUsage, ...}`` — the job's usage,
        reported here once.

        Raises:
            JobEnded: the job had already ended (e.g. it was aborted).
        """
        result: dict[str, Any] = msgspec.to_builtins(await self.finish(Complete(final_event)))
        return result

    async def fail(self, message: str) -> dict[str, Any]:
        """End the job with an error event that late readers still receive.

        Raises:
            JobEnded: the job had already ended.
        """
        result: dict[str, Any] = msgspec.to_builtins(await self.finish(Fail(message)))
        return result

    async def __aenter__(self) -> JobHandle:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.ended or (not self.accepting and self.aborted.is_set()):
            # Already finished, or aborted: the actor writes the abort final on its own.
            if exc_type is asyncio.CancelledError and self.aborted.is_set():
                await self.wait_ended()
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
