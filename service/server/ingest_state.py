"""What the ingest (``service.server.ingest``) keeps between batches, with no I/O.

* :class:`Order` — where a running job's next batch starts, and the batches that arrived
  early (a pipelining producer's batches may reach the owner out of order) waiting their turn;
* :class:`Tombstones` — the exact last acknowledgement of jobs that ended here (bounded, for
  ``completed_ttl``), so a late or resent batch gets the answer it got the first time;
* :class:`OwnerCache` — the owner of a job that runs on another replica, read from the record,
  so its batches are relayed without reading the record each time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from actors.handle import ActorHandle
from actors.messages import Ingest
from schemas.api import IngestBatch
from schemas.job import JobRecord, JobStatus

OWNER_CACHE_TTL: Final = 5.0
"""How long a replica relays a job's batches to the owner it read from the record without
reading it again. A stale entry is harmless: a former owner answers from its tombstone or the
record, a gone one does not answer and the record is read again."""
OWNER_CACHE_SIZE: Final = 10_000


@dataclass(slots=True)
class Ended:
    """What a former owner still knows about a job it served, to answer a late ingest."""

    status: JobStatus
    aborted: bool
    next_index: int
    seq: int
    error: str | None
    expires: float

    @classmethod
    def of(cls, actor: ActorHandle, ttl: float) -> Ended:
        """The ended (or ending) job of ``actor``, kept for ``ttl`` seconds."""
        return cls(
            status=actor.status,
            aborted=actor.aborted.is_set() or actor.status is JobStatus.ABORTED,
            next_index=actor.ingested,
            seq=actor.last_seq,
            error=actor.record.error,
            expires=time.monotonic() + ttl,
        )

    @classmethod
    def from_record(cls, rec: JobRecord, batch: IngestBatch) -> Ended:
        """An ended job this replica has no tombstone of (its owner is gone): the record's
        status and terminal seq; the acknowledged index is where this batch ends."""
        start = 0 if batch.first_index is None else batch.first_index
        return cls(
            status=rec.status,
            aborted=rec.status is JobStatus.ABORTED,
            next_index=start + batch.span,
            seq=rec.last_seq,
            error=rec.error,
            expires=0.0,
        )

    def same_terminal(self, batch: IngestBatch) -> bool:
        """Whether ``batch`` ends the job the way it ended: its terminal batch, resent."""
        if batch.complete is not None:
            return self.status is JobStatus.COMPLETE
        if batch.error is not None:
            return self.status is JobStatus.ERROR and self.error == batch.error
        return False


@dataclass(slots=True)
class Order:
    """Where a running job's next batch starts, and the batches waiting for their turn."""

    expected: int
    waiting: dict[int, list[asyncio.Future[None]]] = field(default_factory=dict)

    def wait_for(self, index: int) -> asyncio.Future[None]:
        """A future set once the batches before ``index`` are queued."""
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if index <= self.expected:
            turn.set_result(None)
        else:
            self.waiting.setdefault(index, []).append(turn)
        return turn

    def advance(self, cmd: Ingest) -> None:
        start = self.expected if cmd.first_index is None else cmd.first_index
        self.expected = max(self.expected, start + cmd.span)
        for index in [i for i in self.waiting if i <= self.expected]:
            for fut in self.waiting.pop(index):
                if not fut.done():
                    fut.set_result(None)


class Tombstones:
    """Ended jobs by id, oldest first: at most ``limit``, each until it expires."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._ended: OrderedDict[str, Ended] = OrderedDict()

    def add(self, job_id: str, ended: Ended) -> None:
        now = time.monotonic()
        self._ended[job_id] = ended
        self._ended.move_to_end(job_id)
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if len(self._ended) <= self._limit and oldest.expires > now:
                break
            self._ended.popitem(last=False)

    def get(self, job_id: str) -> Ended | None:
        ended = self._ended.get(job_id)
        if ended is not None and ended.expires <= time.monotonic():
            del self._ended[job_id]
            return None
        return ended


class OwnerCache:
    """Job id -> its owner, for ``OWNER_CACHE_TTL`` and while the owner is alive."""

    def __init__(self) -> None:
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, job_id: str, is_alive: Callable[[str], bool]) -> str | None:
        entry = self._owners.get(job_id)
        if entry is None:
            return None
        owner, expires = entry
        if expires <= time.monotonic() or not is_alive(owner):
            del self._owners[job_id]
            return None
        return owner

    def put(self, job_id: str, owner: str) -> None:
        self._owners[job_id] = (owner, time.monotonic() + OWNER_CACHE_TTL)
        self._owners.move_to_end(job_id)
        while len(self._owners) > OWNER_CACHE_SIZE:
            self._owners.popitem(last=False)

    def forget(self, job_id: str) -> None:
        self._owners.pop(job_id, None)
