"""The messages an actor's inbox carries, and the small helpers that answer their futures.

Handles build these and queue them; only the actor reads them. Each control message carries
the future its sender awaits; when an actor ends, every queued future is failed so no caller
hangs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from schemas.job import JobRecord, record_to_dict


@dataclass(slots=True)
class Emit:
    event: dict[str, Any]
    kind: str


@dataclass(slots=True)
class Flush:
    fut: asyncio.Future[int]


@dataclass(slots=True)
class Snapshot:
    fut: asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class UpdateMeta:
    fields: dict[str, Any]
    fut: asyncio.Future[None]


@dataclass(slots=True)
class RecordUsage:
    usage: dict[str, Any]
    fut: asyncio.Future[None]


FinishKind = Literal["complete", "error", "abort"]


@dataclass(slots=True)
class Finish:
    kind: FinishKind
    fut: asyncio.Future[dict[str, Any]]
    final_event: dict[str, Any] | None = None
    message: str | None = None
    by: str = ""


@dataclass(slots=True)
class Ingest:
    """A remote producer's batch (docs/protocol.md, remote producers): items at producer indices ``first_index``...

    Items are ``("event", (event, kind))``, ``("usage", record)``, ``("complete", final)`` or
    ``("error", message)``. The reply (``{ok, nextIndex, seq?, aborted?}``) is sent once every
    item is durable; items at indices the actor already took are acknowledged, not repeated.
    """

    first_index: int
    items: list[tuple[str, Any]]
    metadata: dict[str, Any] | None
    fut: asyncio.Future[dict[str, Any]]


Command = Emit | Flush | Snapshot | UpdateMeta | RecordUsage | Finish | Ingest


def already_claimed_result(rec: JobRecord) -> dict[str, Any]:
    """AbortResult for a job that has ended and whose usage was claimed before."""
    return {
        "success": False,
        "jobData": record_to_dict(rec),
        "content": [],
        "finalEvent": None,
        "text": "",
        "collectedUsage": [],
        "usageAlreadyClaimed": True,
    }


def resolve(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def reject(fut: asyncio.Future[Any], err: BaseException) -> None:
    if not fut.done():
        fut.set_exception(err)
