"""The replica's job operations for in-process Python callers, as JSON objects.

    rec, rev = await replica.ops.record(job_id, user_id, tenant_id)
    result = await replica.ops.abort(job_id, user_id)     # AbortResult as a dict

Each operation lives in the module named after it; this facade only turns their msgspec Structs
into the JSON objects of docs/protocol.md (the NATS endpoints encode the Structs directly):

* reads (record, active, counts, syncSent): ``service.server.reads``
* resume snapshot and status: ``service.server.resume``
* abort: ``service.server.abort``
* ending a dead owner's job, repairing a record from its log: ``service.server.takeover``
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.job import JobRecord
from service.server.abort import BY_API, Aborts
from service.server.reads import Reads
from service.server.resume import Resumes
from service.server.takeover import Takeover


def _json(value: msgspec.Struct) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(value)
    return out


class JobOps:
    def __init__(self, reads: Reads, resumes: Resumes, aborts: Aborts, takeover: Takeover) -> None:
        self.reads = reads
        self.resumes = resumes
        self.aborts = aborts
        self.takeover = takeover

    async def record(
        self, job_id: str, user_id: str, tenant_id: str | None
    ) -> tuple[JobRecord, int]:
        """Raises: NotFound, Forbidden."""
        return await self.reads.record(job_id, user_id, tenant_id)

    async def resume(
        self, job_id: str, user_id: str, tenant_id: str | None = None
    ) -> dict[str, Any]:
        return _json(await self.resumes.resume(job_id, user_id, tenant_id))

    async def status(
        self, job_id: str, user_id: str, tenant_id: str | None = None
    ) -> dict[str, Any]:
        return _json(await self.resumes.status(job_id, user_id, tenant_id))

    async def set_sync_sent(
        self, job_id: str, user_id: str, tenant_id: str | None, value: bool
    ) -> bool:
        return (await self.reads.sync_sent(job_id, user_id, tenant_id, value)).sync_sent

    async def active(self, user_id: str, tenant_id: str | None = None) -> list[str]:
        return await self.reads.active(user_id, tenant_id)

    async def counts(self) -> dict[str, int]:
        counts: dict[str, int] = _json(await self.reads.counts())
        return counts

    async def abort(
        self, job_id: str, user_id: str, tenant_id: str | None = None, *, by: str = BY_API
    ) -> dict[str, Any]:
        return _json(await self.aborts.abort(job_id, user_id, tenant_id, by=by))

    async def fail_orphan(self, rec: JobRecord, rev: int, reason: str = "owner lost") -> bool:
        return await self.takeover.fail_orphan(rec, rev, reason)
