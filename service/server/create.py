"""Where a job is created: ``Replica.create_job`` on the owner replica (in-process producers,
and ``<prefix>.api.create`` for remote ones).

The id is checked (or derived from the idempotency key, else the conversation, else random)
and reserved while the record is written, so the janitor does not take the half-created job
for an orphan. An existing record decides: a running job with the same idempotency key is
returned as it is (here) or refused (owned elsewhere); another running job is refused, or
aborted first with ``replace``; an ended one is overwritten, its old events purged. The record
is written revision-checked (created or updated), so two concurrent creates cannot both win;
then the actor starts.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from actors.handle import ActorHandle
from actors.registry import Registry
from schemas.errors import BadRequest, Conflict, Unavailable
from schemas.ids import check_id, check_optional_id
from schemas.job import JobRecord, JobStatus, now_ms
from service.client.producer import JobHandle
from service.config import Settings
from service.nats.store import Store
from service.server.abort import BY_REPLACE, Aborts
from service.server.reads import authorize, idempotent_job_id

StartActor = Callable[[JobRecord, int], ActorHandle]
"""``Replica.start_actor``: run the actor of a record (at its revision) on this replica."""


class Creation:
    """Creates jobs owned by this replica."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        aborts: Aborts,
        start_actor: StartActor,
    ) -> None:
        self.s = settings
        self.store = store
        self.registry = registry
        self.aborts = aborts
        self._start_actor = start_actor

    async def create_job(
        self,
        user_id: str,
        *,
        conversation_id: str | None,
        job_id: str | None,
        tenant_id: str | None,
        idempotency_key: str | None,
        replace: bool,
        metadata: dict[str, Any] | None,
    ) -> JobHandle:
        """``Replica.create_job`` (its docstring lists the errors)."""
        check_id(user_id, "userId")
        check_optional_id(tenant_id, "tenantId")
        check_optional_id(conversation_id, "conversationId")
        if idempotency_key is not None and not isinstance(idempotency_key, str):
            raise BadRequest("idempotencyKey must be a string")
        if job_id is None:
            if idempotency_key:
                job_id = idempotent_job_id(user_id, tenant_id, idempotency_key)
            else:
                job_id = conversation_id or uuid.uuid4().hex
        check_id(job_id, "jobId")
        if self.registry.closing:
            raise Unavailable("replica is shutting down")
        self.registry.reserved.add(job_id)
        try:
            return await self._create(
                job_id, user_id, tenant_id, conversation_id, idempotency_key, replace, metadata
            )
        finally:
            self.registry.reserved.discard(job_id)

    async def _create(
        self,
        job_id: str,
        user_id: str,
        tenant_id: str | None,
        conversation_id: str | None,
        idempotency_key: str | None,
        replace: bool,
        metadata: dict[str, Any] | None,
    ) -> JobHandle:
        for _ in range(5):
            loaded = await self.store.load_record(job_id)
            if loaded is not None:
                rec, rev = loaded
                authorize(rec, user_id, tenant_id)
                if rec.status is JobStatus.RUNNING:
                    if idempotency_key and rec.idempotency_key == idempotency_key:
                        running = self.registry.get(job_id)
                        if running is not None:
                            return JobHandle.of(running)
                        raise Conflict(
                            f"job {job_id} exists and is owned by replica {rec.owner}",
                            job_id=job_id,
                            owner=rec.owner,
                        )
                    if not replace:
                        raise Conflict(f"job {job_id} is running", job_id=job_id)
                    await self.aborts.abort(job_id, user_id, tenant_id, by=BY_REPLACE)
                    continue
                new = self.new_record(job_id, user_id, tenant_id, conversation_id, idempotency_key)
                # A new generation under a reused id starts on an empty subject.
                await self.store.purge_events(job_id)
                try:
                    rev = await self.store.update_record(new, rev)
                except Conflict:
                    continue
            else:
                new = self.new_record(job_id, user_id, tenant_id, conversation_id, idempotency_key)
                try:
                    rev = await self.store.create_record(new)
                except Conflict:
                    continue
            await self.store.add_user_index(new)
            handle = JobHandle.of(self._start_actor(new, rev))
            if metadata:
                await handle.update_metadata(**metadata)
            return handle
        raise Conflict(f"job {job_id}: too many concurrent creates", job_id=job_id)

    def new_record(
        self,
        job_id: str,
        user_id: str,
        tenant_id: str | None,
        conversation_id: str | None,
        idempotency_key: str | None,
    ) -> JobRecord:
        """A running job's first record, owned by this replica."""
        now = now_ms()
        return JobRecord(
            stream_id=job_id,
            user_id=user_id,
            tenant_id=tenant_id,
            status=JobStatus.RUNNING,
            created_at=now,
            conversation_id=conversation_id,
            sync_sent=False,
            owner=self.s.replica_id,
            lease_until=int((time.time() + self.s.lease_ttl) * 1000),
            last_seq=0,
            last_index=-1,
            first_seq=0,
            idempotency_key=idempotency_key,
            collected_usage=[],
            usage_claimed=False,
        )
