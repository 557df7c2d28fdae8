"""The messages an actor's inbox carries, and the small helpers that answer their futures.

``Command`` is a tagged union: the actor matches on the message's type, exhaustively (mypy checks
that every variant is handled), and every field of a variant is used by it. Handles
(``actors.handle``) build these and queue them; only the actor reads them. Each control message
carries the future its sender awaits; when an actor ends, every queued future is failed so no
caller hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.termination import Complete, Ending, Fail
from schemas.api import AbortResult, CompletionResult, ResumeSnapshot
from schemas.job import JobRecord


@dataclass(slots=True)
class Emit:
    """One producer event (no future: backpressure is the inbox bound)."""

    event: dict[str, Any]
    kind: str


@dataclass(slots=True)
class Flush:
    """Answered with the last sequence once every event emitted before it is durable."""

    fut: asyncio.Future[int]


@dataclass(slots=True)
class Snapshot:
    fut: asyncio.Future[ResumeSnapshot]


@dataclass(slots=True)
class UpdateMeta:
    fields: dict[str, Any]
    fut: asyncio.Future[None]


@dataclass(slots=True)
class RecordUsage:
    usage: dict[str, Any]
    fut: asyncio.Future[None]


@dataclass(slots=True)
class Finish:
    """End the job (``actors.termination``): the first one wins, later ones are answered from
    the ended job (an abort: ``usageAlreadyClaimed``; anything else: ``JobEnded``)."""

    ending: Ending
    fut: asyncio.Future[AbortResult | CompletionResult]


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    """The actor's answer to an ``Ingest`` batch (the gateway turns it into the reply)."""

    next_index: int
    seq: int | None
    aborted: bool
    ended: bool = False
    """The job had ended before this batch: nothing of it was taken."""


@dataclass(slots=True)
class Ingest:
    """A remote producer's batch (docs/protocol.md, remote producers) at producer indices
    ``first_index``...: ``events`` (event, kind), then ``usage`` records, then an optional
    ``ending`` (``Complete`` or ``Fail``). The outcome is sent once every item is durable; items
    at indices the actor already took are acknowledged, not repeated."""

    first_index: int | None
    """None: at the actor's next index (a terminal-only batch needs no position)."""
    events: list[tuple[dict[str, Any], str]]
    usage: list[dict[str, Any]]
    ending: Complete | Fail | None
    metadata: dict[str, Any] | None
    fut: asyncio.Future[IngestOutcome]

    @property
    def span(self) -> int:
        return len(self.events) + len(self.usage) + (0 if self.ending is None else 1)

    def items_from(self, index: int) -> list[Emit | dict[str, Any] | Complete | Fail]:
        """The batch's items at producer indices ``index``... in order (events, usage
        records, ending): those before ``index`` the actor has taken already."""
        first = index if self.first_index is None else self.first_index
        items: list[Emit | dict[str, Any] | Complete | Fail] = [Emit(e, k) for e, k in self.events]
        items.extend(self.usage)
        if self.ending is not None:
            items.append(self.ending)
        return items[index - first :]


@dataclass(slots=True)
class Release:
    """Hand the job to replica ``owner`` (service/server/handoff.py): publish what is queued,
    write the record with the new owner (revision-checked), then end this actor without a
    terminal event. ``fut`` gets the record and its revision as written."""

    owner: str
    fut: asyncio.Future[tuple[JobRecord, int]]


Command = Emit | Flush | Snapshot | UpdateMeta | RecordUsage | Finish | Ingest | Release


def resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def reject(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)


def answer_when(
    done: asyncio.Future[Any],
    reply: asyncio.Future[IngestOutcome],
    outcome: Callable[[int | None], IngestOutcome],
) -> None:
    """Answer an ingest batch once ``done`` (a durability barrier's seq, or the terminal
    write's ``CompletionResult``) settles: ``outcome(seq)`` as it is then, or its error."""

    def settle(f: asyncio.Future[Any]) -> None:
        if f.cancelled():
            return
        err = f.exception()
        if err is not None:
            reject(reply, err)
            return
        value = f.result()
        resolve(reply, outcome(value.seq if isinstance(value, CompletionResult) else value))

    done.add_done_callback(settle)
