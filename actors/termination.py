"""How a job ends: the one place that builds a terminal event, changes the record to a terminal
status and decides who gets the usage. Pure: no I/O, no clock of its own (``now`` is passed).

Every path that ends a job goes through :func:`terminate`: the owner's actor (the producer's
``complete``/``fail``, an abort from any replica, a replace, the replica's shutdown, the per-job
cap or the outage budget, a crash of the actor) and a replica taking over a dead owner's job
(owner lost, or a user's abort). The caller stores :attr:`Termination.event` (fenced: at most one
terminal event per job), then writes :meth:`Termination.record` and answers with
:meth:`Termination.result`. A job that has already ended goes through :func:`claim_ended`
(another abort: usage at most once) or :func:`repaired` (its record disagrees with its log).

The usage rule, decided here once (:func:`_claim`): the call that ends the job hands out the
collected usage and marks it claimed, except when nobody asked for the end (owner lost): then
the usage stays unclaimed for the first abort that comes later. Every later caller gets
``usageAlreadyClaimed: true`` and no usage.

The status rule is :func:`schemas.job.transition` (the table ``TRANSITIONS``); nothing here
assigns a status without it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final, Literal

import msgspec

from schemas.api import AbortResult, CompletionResult
from schemas.content.aggregator import parse_text_parts as parse_text
from schemas.errors import StoreFailed
from schemas.events import EventKind, abort_final_event, error_event
from schemas.job import JobRecord, JobStatus, transition

__all__ = [
    "Abort",
    "Complete",
    "Ending",
    "Fail",
    "Reason",
    "Termination",
    "claim_ended",
    "parse_text",
    "repaired",
    "terminate",
]

OWNER_LOST_MESSAGE: Final = "owner lost"
SHUTDOWN_MESSAGE: Final = "interrupted: replica shutting down"


class Reason(enum.StrEnum):
    """Why a job ends (logged, and ``usageClaimedBy`` for the ones that claim usage)."""

    COMPLETE = "complete"
    ERROR = "error"
    """The producer failed, or the actor crashed."""
    ABORT = "abort"
    """A user's abort, from any path (``by`` says which: ``api``, ``abort-subject``)."""
    REPLACED = "replaced"
    """A create with ``replace`` aborted the running generation."""
    OWNER_LOST = "owner lost"
    """Its owner died; another replica writes the end in its place."""
    SHUTDOWN = "shutdown"
    BUDGET = "budget exceeded"
    """The per-job event cap, or a NATS outage longer than the outage budget."""


@dataclass(frozen=True, slots=True)
class Complete:
    final_event: dict[str, Any] | None = None
    """The producer's final event (``final: true`` is added when missing)."""

    @property
    def reason(self) -> Reason:
        return Reason.COMPLETE


@dataclass(frozen=True, slots=True)
class Fail:
    message: str
    reason: Literal[Reason.ERROR, Reason.OWNER_LOST, Reason.SHUTDOWN, Reason.BUDGET] = Reason.ERROR

    @classmethod
    def owner_lost(cls) -> Fail:
        return cls(OWNER_LOST_MESSAGE, Reason.OWNER_LOST)

    @classmethod
    def shutdown(cls) -> Fail:
        return cls(SHUTDOWN_MESSAGE, Reason.SHUTDOWN)

    @classmethod
    def after_crash(cls, err: Exception) -> Fail:
        """The end of a job whose actor failed: the outage budget or event cap spent
        (``StoreFailed``), else an internal error."""
        if isinstance(err, StoreFailed):
            return cls(str(err), Reason.BUDGET)
        return cls(f"internal error: {err}")


@dataclass(frozen=True, slots=True)
class Abort:
    by: str
    """What the user did: ``api``, ``abort-subject`` or ``replace`` (``abortedBy``)."""

    @property
    def reason(self) -> Reason:
        return Reason.REPLACED if self.by == "replace" else Reason.ABORT


Ending = Complete | Fail | Abort
"""Why and how a job ends: a tagged union, matched exhaustively."""


def status_of(ending: Ending) -> JobStatus:
    match ending:
        case Complete():
            return JobStatus.COMPLETE
        case Fail():
            return JobStatus.ERROR
        case Abort():
            return JobStatus.ABORTED


_CLAIMED_BY: Final[dict[Reason, str]] = {
    Reason.COMPLETE: "complete",
    Reason.ABORT: "abort",
    Reason.REPLACED: "abort",
    Reason.ERROR: "error",
    Reason.SHUTDOWN: "error",
    Reason.BUDGET: "error",
}


def _claim(rec: JobRecord, reason: Reason) -> tuple[list[dict[str, Any]], str | None]:
    """THE usage rule: (usage this call hands out, ``usageClaimedBy`` to store or None)."""
    claimed_by = _CLAIMED_BY.get(reason)  # owner lost: nobody asked, nobody is answered
    if rec.usage_claimed or claimed_by is None:
        return [], None
    return list(rec.collected_usage), claimed_by


@dataclass(frozen=True, slots=True)
class Termination:
    """A decided end: what to store, what the record becomes, what the caller gets."""

    ending: Ending
    event: dict[str, Any]
    kind: EventKind
    """``final`` or ``error``: the ``Genjobs-Kind`` of the terminal event."""
    status: JobStatus
    content: list[Any]
    usage: list[dict[str, Any]]
    claimed_by: str | None

    @property
    def payload(self) -> bytes:
        return msgspec.json.encode(self.event)

    def record(self, rec: JobRecord, *, seq: int, index: int, now: int) -> JobRecord:
        """The record once the terminal event is stored at ``seq`` / ``index`` (a new value)."""
        changes: dict[str, Any] = {
            "status": transition(rec.status, self.status),
            "completed_at": now,
            "last_seq": seq,
            "last_index": index,
        }
        match self.ending:
            case Fail(message=message):
                changes["error"] = message
            case Abort(by=by):
                changes["aborted_by"] = by or None
            case Complete():
                pass
        if self.claimed_by is not None:
            changes["usage_claimed"] = True
            changes["usage_claimed_by"] = self.claimed_by
        return msgspec.structs.replace(rec, **changes)

    def result(self, rec: JobRecord, seq: int) -> AbortResult | CompletionResult:
        """The reply to whoever asked for this end; ``rec`` is the stored terminal record."""
        if isinstance(self.ending, Abort):
            return AbortResult(
                success=True,
                job_data=rec,
                content=self.content,
                final_event=self.event,
                text=parse_text(self.content),
                collected_usage=self.usage,
                usage_already_claimed=self.claimed_by is None and bool(rec.collected_usage),
            )
        return CompletionResult(
            success=True,
            status=self.status.value,
            seq=seq,
            collected_usage=self.usage,
            final_event=self.event,
        )


def terminal_event(rec: JobRecord, ending: Ending, content: list[Any]) -> dict[str, Any]:
    """THE terminal event of a job (LibreChat's shapes, ``schemas.events``)."""
    match ending:
        case Complete(final_event=final):
            event = dict(final) if final else {"final": True}
            event.setdefault("final", True)
            return event
        case Fail(message=message):
            return error_event(message or "error")
        case Abort():
            return abort_final_event(
                user_message=rec.user_message,
                response_message_id=rec.response_message_id,
                content=content,
                conversation_id=rec.conversation_id,
                sender=rec.sender,
            )


def terminate(rec: JobRecord, ending: Ending, content: list[Any]) -> Termination:
    """Decide the end of the running job ``rec`` (``content``: its aggregate so far).

    Raises:
        IllegalTransition: ``rec`` has already ended (use :func:`claim_ended`).
    """
    status = status_of(ending)
    transition(rec.status, status)  # raises before anything is built
    usage, claimed_by = _claim(rec, ending.reason)
    return Termination(
        ending=ending,
        event=terminal_event(rec, ending, content),
        kind=EventKind.ERROR if status is JobStatus.ERROR else EventKind.FINAL,
        status=status,
        content=content if isinstance(ending, Abort) else [],
        usage=usage,
        claimed_by=claimed_by,
    )


def claim_ended(rec: JobRecord) -> tuple[JobRecord | None, AbortResult]:
    """An abort of a job that has ended: (the record to store if this call claims the usage,
    else None; the reply). Never a second claim."""
    usage, claimed_by = _claim(rec, Reason.ABORT)
    changed = None
    if claimed_by is not None:
        changed = msgspec.structs.replace(rec, usage_claimed=True, usage_claimed_by=claimed_by)
    return changed, AbortResult(
        success=False,
        job_data=changed or rec,
        content=[],
        final_event=None,
        text="",
        collected_usage=usage,
        usage_already_claimed=claimed_by is None,
    )


def status_from_log(kind: str | None, event: Any) -> JobStatus | None:
    """The status a stored terminal event says (None: the event is not terminal)."""
    if kind == EventKind.ERROR:
        return JobStatus.ERROR
    if kind != EventKind.FINAL:
        return None
    if isinstance(event, dict) and event.get("aborted"):
        return JobStatus.ABORTED
    return JobStatus.COMPLETE


def repaired(
    rec: JobRecord, kind: str | None, event: Any, *, seq: int, index: int, now: int
) -> JobRecord | None:
    """The record as the log says it is, when the log holds the terminal event at ``seq`` and
    the record still says ``running`` (its writer died in between); None if nothing to do.
    Usage stays as it is: nobody was answered, so the next abort claims it."""
    status = status_from_log(kind, event)
    if status is None or rec.status.terminal:
        return None
    changes: dict[str, Any] = {
        "status": transition(rec.status, status),
        "completed_at": rec.completed_at or now,
        "last_seq": seq,
        "last_index": index,
    }
    if status is JobStatus.ERROR:
        changes["error"] = str(event.get("error")) if isinstance(event, dict) else "error"
    return msgspec.structs.replace(rec, **changes)
