"""Job operations that work from any replica, whoever owns the job, and after the owner died.

The rules that make them safe with several replicas:

* The event subject is the source of truth for "has this job ended": every writer (the owner,
  or a replica taking over a dead owner's job) appends with the subject fence, so at most one
  terminal event is ever stored, and a zombie owner is refused after a takeover.
* The record is changed only with revision checks; usage is claimed by the one write that
  flips ``usageClaimed`` — every later caller sees it claimed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from actors.stream_actor import already_claimed_result
from actors.termination import build_abort_final, parse_text
from schemas.content.aggregator import ContentAggregator
from schemas.errors import Conflict, Forbidden, GenjobsError, NotFound, OwnershipLost, from_body
from schemas.job import JobRecord, JobStatus, record_to_dict
from service.config import Settings
from service.nats.directget import direct_get_batch
from service.nats.store import Store

if TYPE_CHECKING:
    from actors.registry import Registry
    from service.server.liveness import Liveness

log = logging.getLogger("genjobs.ops")
_enc = msgspec.json.Encoder()


def now_ms() -> int:
    return int(time.time() * 1000)


def idempotent_job_id(user_id: str, tenant_id: str | None, key: str) -> str:
    """A job id derived from an idempotency key: a retried create lands on the same record."""
    return "idem-" + hashlib.sha256(f"{tenant_id or ''}:{user_id}:{key}".encode()).hexdigest()[:40]


def authorize(rec: JobRecord, user_id: str, tenant_id: str | None) -> None:
    """Raises: Forbidden if the caller is not the job's user (and tenant)."""
    if rec.user_id != user_id or (rec.tenant_id or None) != (tenant_id or None):
        raise Forbidden(f"job {rec.stream_id} belongs to another user", job_id=rec.stream_id)


class JobOps:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        registry: Registry | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self.liveness = liveness

    # --- reads ----------------------------------------------------------------------------

    async def record(
        self, job_id: str, user_id: str, tenant_id: str | None
    ) -> tuple[JobRecord, int]:
        """Raises: NotFound, Forbidden."""
        loaded = await self.store.load_record(job_id)
        if loaded is None:
            raise NotFound(f"job {job_id} not found", job_id=job_id)
        authorize(loaded[0], user_id, tenant_id)
        return loaded

    async def resume(
        self, job_id: str, user_id: str, tenant_id: str | None = None
    ) -> dict[str, Any]:
        """Resume snapshot valid at its ``seq``: ask the owner, else the last stored snapshot.

        Cost does not grow with the job: the owner answers from memory, and the stored snapshot
        is one KV read. A stored snapshot may be a little older than the owner's, which is fine:
        the reader continues at ``seq + 1`` and replays the difference.

        Raises:
            NotFound, Forbidden.
        """
        rec, _ = await self.record(job_id, user_id, tenant_id)
        if rec.status is JobStatus.RUNNING:
            snap = await self._owner_snapshot(rec)
            if snap is not None:
                return snap
        snap = await self.store.get_snapshot(job_id)
        if snap is None or snap.get("createdAt", rec.created_at) != rec.created_at:
            snap = {"runSteps": [], "aggregatedContent": [], "seq": 0, "index": -1}
        snap["status"] = rec.status.value
        for key, value in (
            ("userMessage", rec.user_message),
            ("responseMessageId", rec.response_message_id),
            ("conversationId", rec.conversation_id),
            ("sender", rec.sender),
        ):
            if value is not None:
                snap.setdefault(key, value)
        return snap

    async def _owner_snapshot(self, rec: JobRecord) -> dict[str, Any] | None:
        if self.registry is not None:
            actor = self.registry.get(rec.stream_id)
            if actor is not None:
                return actor.snapshot()
        try:
            reply = await self.store.nc.request(
                self.s.rpc_subject(rec.owner, "snapshot"),
                _enc.encode({"jobId": rec.stream_id}),
                timeout=min(1.0, self.s.request_timeout),
            )
        except (NoRespondersError, NatsTimeout):
            return None
        body = msgspec.json.decode(reply.data)
        if not isinstance(body, dict) or "error" in body:
            return None
        return body

    async def status(
        self, job_id: str, user_id: str, tenant_id: str | None = None
    ) -> dict[str, Any]:
        snap = await self.resume(job_id, user_id, tenant_id)
        rec, _ = await self.record(job_id, user_id, tenant_id)
        return {
            "active": rec.status is JobStatus.RUNNING,
            "status": rec.status.value,
            "aggregatedContent": snap.get("aggregatedContent", []),
            "createdAt": rec.created_at,
            "seq": snap.get("seq", 0),
        }

    async def set_sync_sent(
        self, job_id: str, user_id: str, tenant_id: str | None, value: bool
    ) -> bool:
        """Set LibreChat's ``syncSent`` marker; the owner writes it while the job runs.

        Raises:
            NotFound, Forbidden; Unavailable if the owner did not answer.
        """
        rec, rev = await self.record(job_id, user_id, tenant_id)
        if rec.status is JobStatus.RUNNING:
            if self.registry is not None and (actor := self.registry.get(job_id)) is not None:
                from actors.stream_actor import UpdateMeta

                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                actor.request(UpdateMeta({"syncSent": value}, fut))
                await fut
                return value
            try:
                reply = await self.store.nc.request(
                    self.s.rpc_subject(rec.owner, "sync"),
                    _enc.encode({"jobId": job_id, "syncSent": value}),
                    timeout=self.s.request_timeout,
                )
            except (NoRespondersError, NatsTimeout) as e:
                from schemas.errors import Unavailable

                raise Unavailable(f"owner of job {job_id} did not answer") from e
            body = msgspec.json.decode(reply.data)
            if isinstance(body, dict) and "error" in body:
                raise from_body(body)
            return value
        rec.sync_sent = value
        await self.store.update_record(rec, rev, ttl=self.s.completed_ttl)
        return value

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

    async def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in JobStatus}
        for rec in await self.store.all_records():
            counts[rec.status.value] += 1
        return counts

    # --- abort ----------------------------------------------------------------------------

    async def abort(
        self, job_id: str, user_id: str, tenant_id: str | None = None, *, by: str = "api"
    ) -> dict[str, Any]:
        """Abort from anywhere; returns LibreChat's AbortResult (plus ``usageAlreadyClaimed``).

        The owner does it if it is alive (locally, or via ``<prefix>.abort.<job_id>``);
        otherwise this replica takes the job over. A job that already ended returns its usage
        if nobody has claimed it yet, else says it was claimed.

        Raises:
            NotFound, Forbidden.
        """
        for _ in range(5):
            rec, rev = await self.record(job_id, user_id, tenant_id)
            if rec.status.terminal:
                return await self._claim_ended(rec, rev)
            if self.registry is not None and rec.owner == self.s.replica_id:
                actor = self.registry.get(job_id)
                if actor is not None:
                    return await abort_local(actor, by, self.announce_abort)
            if self.liveness is None or self.liveness.is_alive(rec.owner):
                result = await self._ask_owner_abort(rec, user_id, tenant_id)
                if result is not None:
                    return result
                if self.liveness is not None and self.liveness.is_alive(rec.owner):
                    # Alive by its heartbeat but not answering: let the lease decide.
                    await asyncio.sleep(min(0.5, self.s.lease_ttl / 4))
                    continue
            try:
                result = await self._takeover(rec, rev, abort_by=by)
                await self.announce_abort(job_id)
                return result
            except (Conflict, OwnershipLost):
                continue  # someone else moved first; look again
        raise Conflict(f"job {job_id}: abort raced with other writers; try again", job_id=job_id)

    async def announce_abort(self, job_id: str) -> None:
        """Tell subscribers of the abort subject (remote producers) that the job was aborted."""
        await self.store.nc.publish(
            self.s.abort_subject(job_id), _enc.encode({"notice": "aborted", "jobId": job_id})
        )

    async def _ask_owner_abort(
        self, rec: JobRecord, user_id: str, tenant_id: str | None
    ) -> dict[str, Any] | None:
        body: dict[str, Any] = {"userId": user_id}
        if tenant_id:
            body["tenantId"] = tenant_id
        try:
            reply = await self.store.nc.request(
                self.s.abort_subject(rec.stream_id),
                _enc.encode(body),
                timeout=self.s.request_timeout,
            )
        except (NoRespondersError, NatsTimeout):
            return None
        result = msgspec.json.decode(reply.data)
        if isinstance(result, dict) and "error" in result:
            raise from_body(result)
        assert isinstance(result, dict)
        return result

    async def _claim_ended(self, rec: JobRecord, rev: int) -> dict[str, Any]:
        if rec.usage_claimed:
            return already_claimed_result(rec)
        usage = list(rec.collected_usage)
        rec.usage_claimed = True
        rec.usage_claimed_by = "abort"
        await self.store.update_record(rec, rev, ttl=self.s.completed_ttl)
        result = already_claimed_result(rec)
        result.update({"collectedUsage": usage, "usageAlreadyClaimed": False})
        return result

    # --- takeover of a dead owner's job ---------------------------------------------------

    async def fail_orphan(self, rec: JobRecord, rev: int, reason: str = "owner lost") -> bool:
        """Give a dead owner's job its terminal error. False if it had ended meanwhile."""
        try:
            await self._takeover(rec, rev, error=reason)
        except (Conflict, OwnershipLost) as e:
            log.info("job %s: takeover skipped (%s)", rec.stream_id, e)
            return False
        return True

    async def _takeover(
        self, rec: JobRecord, rev: int, *, error: str | None = None, abort_by: str | None = None
    ) -> dict[str, Any]:
        """Write the terminal event in the owner's place, fenced, then the record.

        Raises:
            OwnershipLost: another writer appended first (we lost the race; look again).
            Conflict: the record moved under us.
        """
        job_id = rec.stream_id
        last = await self.store.subject_last(job_id)
        last_seq, headers = (0, {}) if last is None else last
        if headers.get("Genjobs-Kind") in ("final", "error"):
            # The owner wrote its terminal event and died before the record: finish the
            # record from the event, so the job stops counting as running.
            await self._finalize_from_log(rec, rev, last_seq, headers)
            raise Conflict(f"job {job_id} already has its terminal event")
        index = int(headers.get("Genjobs-Index", "-1")) + 1
        content: list[Any] = []
        if abort_by is not None:
            agg = await self.replay(job_id, up_to_seq=last_seq)
            content = agg.content_filtered()
            event = build_abort_final(record_to_dict(rec), content)
            kind, status = "final", JobStatus.ABORTED
        else:
            event = {"error": error or "owner lost"}
            kind, status = "error", JobStatus.ERROR
        seq = await self.store.publish_event(
            job_id,
            _enc.encode(event),
            kind,
            index,
            last_seq,
            writer=f"takeover:{self.s.replica_id}",
        )
        rec.status = status
        rec.completed_at = now_ms()
        rec.last_seq = seq
        rec.last_index = index
        usage = list(rec.collected_usage)
        if status is JobStatus.ERROR:
            rec.error = error
        else:
            rec.aborted_by = abort_by
            if not rec.usage_claimed:
                rec.usage_claimed = True
                rec.usage_claimed_by = "abort"
            else:
                usage = []
        await self.store.update_record(rec, rev, ttl=self.s.completed_ttl)
        snap = await self.store.get_snapshot(job_id)
        if snap is not None:
            snap["status"] = status.value
            await self.store.put_snapshot(job_id, snap, ttl=self.s.completed_ttl)
        await self.store.job_finished(rec)
        log.warning("job %s: taken over by %s -> %s", job_id, self.s.replica_id, status.value)
        return {
            "success": True,
            "jobData": record_to_dict(rec),
            "content": content,
            "finalEvent": event,
            "text": parse_text(content),
            "collectedUsage": usage,
            "usageAlreadyClaimed": abort_by is not None and not usage and bool(rec.collected_usage),
            "seq": seq,
        }

    async def _finalize_from_log(
        self, rec: JobRecord, rev: int, seq: int, headers: dict[str, Any]
    ) -> None:
        data = await self.store.event_data(rec.stream_id, seq)
        event = msgspec.json.decode(data) if data else {}
        if headers.get("Genjobs-Kind") == "error":
            rec.status = JobStatus.ERROR
            rec.error = str(event.get("error")) if isinstance(event, dict) else "error"
        elif isinstance(event, dict) and event.get("aborted"):
            rec.status = JobStatus.ABORTED
        else:
            rec.status = JobStatus.COMPLETE
        rec.completed_at = rec.completed_at or now_ms()
        rec.last_seq = seq
        rec.last_index = int(headers.get("Genjobs-Index", rec.last_index))
        await self.store.update_record(rec, rev, ttl=self.s.completed_ttl)
        await self.store.job_finished(rec)
        log.warning(
            "job %s: record finished from its terminal event (%s)", rec.stream_id, rec.status
        )

    async def replay(self, job_id: str, *, up_to_seq: int | None = None) -> ContentAggregator:
        """Aggregate a job's events from its log (failure paths only: cost grows with the job)."""
        agg = ContentAggregator()
        subject = self.s.events_subject(job_id)
        seq = 1
        while True:
            msgs, pending = await direct_get_batch(
                self.store.nc, self.s.stream_name, subject, seq, timeout=self.s.request_timeout
            )
            for m in msgs:
                if up_to_seq is not None and m.seq > up_to_seq:
                    return agg
                if m.headers.get("Genjobs-Kind") == "step":
                    ev = msgspec.json.decode(m.data)
                    if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                        agg.apply(ev["event"], ev.get("data"))
                seq = m.seq + 1
            if not msgs or pending == 0:
                return agg


async def abort_local(
    actor: Any, by: str, notify: Callable[[str], Awaitable[None]] | None = None
) -> dict[str, Any]:
    """Abort a job whose actor runs here: signal the producer now, then let the actor finish."""
    from actors.stream_actor import Finish

    fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    actor.signal_abort()
    try:
        actor.request(Finish("abort", fut, by=by))
    except GenjobsError:
        return already_claimed_result(actor.rec)
    result: dict[str, Any] = await fut
    if notify is not None and result.get("success"):
        # Remote producers may watch the abort subject; an abort handled right here by the
        # owner would otherwise never appear there. Replicas ignore these notices.
        await notify(actor.job_id)
    return result
