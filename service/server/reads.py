"""Reading jobs from any replica: the record (authorized), a user's active jobs, the counts, and
LibreChat's ``syncSent`` marker (read here; set by the owner while the job runs)."""

from __future__ import annotations

import hashlib

from actors.registry import Registry
from schemas.api import CountsReply, SyncReply
from schemas.errors import Forbidden, NotFound, Unavailable
from schemas.job import JobRecord, JobStatus
from service.config import Settings
from service.nats.store import Store
from service.server.owner_link import OwnerLink


def idempotent_job_id(user_id: str, tenant_id: str | None, key: str) -> str:
    """A job id derived from an idempotency key: a retried create lands on the same record."""
    return "idem-" + hashlib.sha256(f"{tenant_id or ''}:{user_id}:{key}".encode()).hexdigest()[:40]


def authorize(rec: JobRecord, user_id: str, tenant_id: str | None) -> None:
    """Raises: Forbidden if the caller is not the job's user (and tenant)."""
    if rec.user_id != user_id or (rec.tenant_id or None) != (tenant_id or None):
        raise Forbidden(f"job {rec.stream_id} belongs to another user", job_id=rec.stream_id)


async def load_authorized(
    store: Store, job_id: str, user_id: str, tenant_id: str | None
) -> tuple[JobRecord, int]:
    """Raises: NotFound, Forbidden."""
    loaded = await store.load_record(job_id)
    if loaded is None:
        raise NotFound(f"job {job_id} not found", job_id=job_id)
    authorize(loaded[0], user_id, tenant_id)
    return loaded


class Reads:
    def __init__(
        self, store: Store, settings: Settings, registry: Registry, owner: OwnerLink
    ) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self.owner = owner

    async def record(
        self, job_id: str, user_id: str, tenant_id: str | None
    ) -> tuple[JobRecord, int]:
        """Raises: NotFound, Forbidden."""
        return await load_authorized(self.store, job_id, user_id, tenant_id)

    async def active(self, user_id: str, tenant_id: str | None = None) -> list[str]:
        """A user's running jobs; index entries whose job is gone or finished are removed."""
        out = []
        for job_id in await self.store.list_user_jobs(user_id, tenant_id):
            loaded = await self.store.load_record(job_id)
            if loaded is None or loaded[0].status.terminal or loaded[0].user_id != user_id:
                await self.store.remove_user_index(user_id, job_id, tenant_id)
                continue
            out.append(job_id)
        return sorted(out)

    async def counts(self) -> CountsReply:
        counts = {s: 0 for s in JobStatus}
        for rec in await self.store.all_records():
            counts[rec.status] += 1
        return CountsReply(
            running=counts[JobStatus.RUNNING],
            complete=counts[JobStatus.COMPLETE],
            error=counts[JobStatus.ERROR],
            aborted=counts[JobStatus.ABORTED],
        )

    async def sync_sent(
        self, job_id: str, user_id: str, tenant_id: str | None, value: bool | None
    ) -> SyncReply:
        """Read LibreChat's ``syncSent`` marker, or set it (``value``); the owner writes it
        while the job runs.

        Raises:
            NotFound, Forbidden; Unavailable if the owner did not answer.
        """
        rec, rev = await self.record(job_id, user_id, tenant_id)
        if value is None:
            return SyncReply(sync_sent=rec.sync_sent)
        if rec.status is JobStatus.RUNNING:
            handle = self.registry.get(job_id)
            if handle is not None:
                await handle.update_meta({"syncSent": value})
                return SyncReply(sync_sent=value)
            reply = await self.owner.sync(rec.owner, job_id, value)
            if not isinstance(reply, SyncReply):
                raise Unavailable(f"owner of job {job_id} did not answer")
            return SyncReply(sync_sent=value)
        rec.sync_sent = value
        await self.store.update_record(rec, rev, ttl=self.s.completed_ttl)
        return SyncReply(sync_sent=value)
