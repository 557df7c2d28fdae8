"""What an actor needs from the outside world, as a protocol: the actor does no NATS I/O itself.

The service layer implements it over JetStream and KV (``service/nats/store.py``); keeping it a
protocol keeps the actor's state machine readable and its I/O in one place.
"""

from __future__ import annotations

from typing import Any, Protocol

from schemas.api import ResumeSnapshot
from schemas.job import JobRecord


class ActorPort(Protocol):
    replica_id: str

    async def publish_event(
        self, job_id: str, payload: bytes, kind: str, index: int, expected_last: int
    ) -> int:
        """Store one event after ``expected_last`` on the job's subject; returns its sequence.

        Raises:
            OwnershipLost: another writer appended to the subject.
            StoreFailed: the event could not be stored.
        """
        ...

    async def update_record(self, rec: JobRecord, rev: int, *, ttl: float | None = None) -> int:
        """Revision-checked write; returns the new revision.

        Raises:
            Conflict: the revision moved (someone else wrote the record).
        """
        ...

    async def load_record(self, job_id: str) -> tuple[JobRecord, int] | None: ...

    async def subject_last(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        """(seq, headers) of the job's last stored event, None if there is none.

        Rides out an outage (the store retries under its outage policy).

        Raises:
            StoreFailed: the stream did not answer within the outage budget, or refused.
        """
        ...

    def delivered(
        self, job_id: str, seq: int, prev: int, kind: str, index: int, data: bytes
    ) -> None:
        """An event is durable: hand it to readers in this process (no I/O, never raises)."""
        ...

    async def put_snapshot(
        self, job_id: str, snapshot: ResumeSnapshot, *, ttl: float | None = None
    ) -> None: ...

    async def job_finished(self, rec: JobRecord) -> None:
        """Terminal bookkeeping outside the record: user index, snapshot TTL, log cleanup."""
        ...
