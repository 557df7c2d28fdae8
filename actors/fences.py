"""The actor's two fences on the store, through its port (no state of its own):

* the record's revision — :func:`write_record` writes the job record under it, and tells a
  write that merely landed twice (still ours: adopt the revision, retry once) from another
  replica's (``OwnershipLost``);
* the subject's last sequence — :func:`read_tail` reads the job's stored tail after a crash,
  so that the terminal error is fenced on what is really there, and tells our own last event
  from another writer's.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.port import ActorPort
from schemas.errors import GenjobsError, OwnershipLost
from schemas.events import HDR_INDEX, HDR_KIND, HDR_WRITER, TERMINAL_KINDS
from schemas.job import JobRecord


async def write_record(port: ActorPort, rec: JobRecord, rev: int, *, ttl: float | None) -> int:
    """Write ``rec`` under revision ``rev``; returns the new revision.

    Raises:
        OwnershipLost: the record was changed by another replica (ended, or owned elsewhere).
    """
    try:
        return await port.update_record(rec, rev, ttl=ttl)
    except GenjobsError as e:
        if e.code != "conflict":
            raise
        loaded = await port.load_record(rec.stream_id)
        if loaded is None or loaded[0].status.terminal or loaded[0].owner != port.replica_id:
            raise OwnershipLost(rec.stream_id, "record changed by another replica") from e
        # Still ours (e.g. a retried write that landed): adopt the revision and retry once.
        return await port.update_record(rec, loaded[1], ttl=ttl)


@dataclass(frozen=True, slots=True)
class Tail:
    """The job's last stored event, written by this replica."""

    seq: int
    index: int | None
    """Its producer index (None when the event carries none)."""
    terminal: bool


async def read_tail(port: ActorPort, job_id: str) -> Tail | None:
    """The job's stored tail, None if the subject is empty.

    Raises:
        OwnershipLost: the tail was written by another writer.
    """
    tail = await port.subject_last(job_id)
    if tail is None:
        return None
    seq, headers = tail
    if headers.get(HDR_WRITER) != port.replica_id:
        raise OwnershipLost(job_id, "another writer appended")
    index = headers.get(HDR_INDEX)
    return Tail(seq, None if index is None else int(index), headers.get(HDR_KIND) in TERMINAL_KINDS)
