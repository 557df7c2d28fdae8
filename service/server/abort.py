"""Where an abort goes: ``genjobs.api.abort`` from any replica, ``genjobs.abort.<job>``, the
owner's ``rpc.<owner>.abort``, and a create with ``replace``.

An abort is a user's intent. Whoever handles it, it ends the job as ``aborted`` with the abort
final if the job is still running, and every caller gets an ``AbortResult`` fast:

* the owner's actor runs here: the handle aborts it (``actors.termination`` decides the rest);
* it runs on another replica: that replica is asked on its own rpc subject, which it alone
  serves, so the answer is its ``AbortResult``, "not here", or "no responders" at once (a
  killed owner: nobody has to wait out a timeout); a silent owner is retried until its lease
  says it is dead;
* nobody runs it (owner dead, or its actor gone): this replica ends it in the owner's place
  (``service.server.takeover``), joining an end already in progress here;
* it has ended: the first abort claims the usage, every later one gets ``usageAlreadyClaimed``.

A lost race (the record moved, another writer appended) is never an error for the caller: the
job is looked at again. ``abortedBy`` records what the user did (``api``, ``abort-subject``,
``replace``), carried to whichever replica writes the end, and whoever writes the abort final
publishes the notice on ``<prefix>.abort.<job>``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from nats.aio.msg import Msg

from actors.handle import ActorHandle
from actors.registry import Registry
from actors.termination import Abort, claim_ended
from schemas.api import AbortNotice, AbortResult, AbortSubjectBody, decode, encode
from schemas.errors import (
    BadRequest,
    Conflict,
    GenjobsError,
    JobEnded,
    OwnershipLost,
    Unavailable,
)
from schemas.ids import check_id, check_optional_id
from schemas.job import JobRecord
from service.config import Settings
from service.nats.store import Store
from service.server.liveness import Liveness
from service.server.owner_link import NoAnswer, OwnerLink
from service.server.reads import authorize, load_authorized
from service.server.replies import send, send_error
from service.server.takeover import Takeover

log = logging.getLogger("genjobs.abort")

BY_API: Final = "api"
BY_SUBJECT: Final = "abort-subject"
BY_REPLACE: Final = "replace"
MAX_LOOKS: Final = 64
"""Bound on re-reading a job that keeps moving (each look is a few milliseconds; a silent
owner adds a short pause per look until its lease runs out)."""


class Aborts:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        registry: Registry,
        liveness: Liveness,
        takeover: Takeover,
        owner: OwnerLink,
    ) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self.liveness = liveness
        self.takeover = takeover
        self.owner = owner

    async def abort(
        self, job_id: str, user_id: str, tenant_id: str | None = None, *, by: str = BY_API
    ) -> AbortResult:
        """Abort from anywhere; returns LibreChat's AbortResult (plus ``usageAlreadyClaimed``).

        Raises:
            NotFound, Forbidden; Unavailable if the job kept moving (or its owner stayed
            silent) for ``MAX_LOOKS`` looks.
        """
        handle = self.registry.get(job_id)
        if handle is not None:
            # The actor runs here: it holds the job's record (user and tenant never change), so
            # the abort goes straight in, without reading the record from KV first. If the actor
            # has gone meanwhile, the loop below looks at the record as for any other job.
            authorize(handle.record, user_id, tenant_id)
            here = await self.abort_here(handle, by)
            if here is not None:
                return here
        not_here: str | None = None  # an owner that said it does not run the job
        for _ in range(MAX_LOOKS):
            rec, rev = await load_authorized(self.store, job_id, user_id, tenant_id)
            if rec.status.terminal:
                ended = await self._claim_ended(rec, rev)
                if ended is not None:
                    return ended
                continue
            handle = self.registry.get(job_id)
            if handle is not None:
                here = await self.abort_here(handle, by)
                if here is not None:
                    return here
                continue
            ask = rec.owner not in (self.s.replica_id, not_here)
            if ask and not self.takeover.busy(job_id):
                answer = await self.owner.abort(rec.owner, job_id, user_id, tenant_id, by)
                if isinstance(answer, AbortResult):
                    return answer
                if answer is NoAnswer.NOT_HERE:
                    not_here = rec.owner
                    continue
                if answer is NoAnswer.SILENT and self.liveness.is_alive(rec.owner):
                    await asyncio.sleep(min(0.5, self.s.lease_ttl / 4))
                    continue
            taken = await self._take_over(rec, rev, by)
            if taken is not None:
                return taken
        raise Unavailable(f"job {job_id}: abort kept racing with other writers; try again")

    async def abort_here(self, handle: ActorHandle, by: str) -> AbortResult | None:
        """Abort through the actor running here; None if it had gone (look at the record)."""
        try:
            result = await handle.abort(by)
        except (JobEnded, OwnershipLost):
            return None
        if result.success:
            await self.announce(handle.job_id)
        return result

    async def _take_over(self, rec: JobRecord, rev: int, by: str) -> AbortResult | None:
        try:
            result = await self.takeover.end(rec, rev, Abort(by))
        except (Conflict, OwnershipLost) as e:
            log.info("job %s: abort raced (%s); looking again", rec.stream_id, e)
            return None
        if not isinstance(result, AbortResult):
            return None  # the log had ended, or another end was used: read the record
        if result.success:
            await self.announce(rec.stream_id)
        return result

    async def _claim_ended(self, rec: JobRecord, rev: int) -> AbortResult | None:
        """The job has ended: hand out its usage if nobody has; None if the record moved."""
        changed, result = claim_ended(rec)
        if changed is not None:
            try:
                await self.store.update_record(changed, rev, ttl=self.s.completed_ttl)
            except Conflict:
                return None
        return result

    async def join_takeover(
        self, job_id: str, user_id: str, tenant_id: str | None, by: str
    ) -> AbortResult | None:
        """An abort asked of this replica while it ends ``job_id`` in a dead owner's place.

        Raises:
            NotFound, Forbidden.
        """
        rec, rev = await load_authorized(self.store, job_id, user_id, tenant_id)
        if not self.takeover.busy(job_id):
            return None
        return await self._take_over(rec, rev, by)

    async def announce(self, job_id: str) -> None:
        """Tell subscribers of the abort subject (remote producers) that the job was aborted."""
        await self.store.nc.publish(
            self.s.abort_subject(job_id), encode(AbortNotice(job_id=job_id))
        )

    # --- <prefix>.abort.<job> ---------------------------------------------------------------

    async def on_subject(self, msg: Msg) -> None:
        """``<prefix>.abort.<job_id>`` (a queue group of every replica: one gets each request).

        Whoever gets it answers it, in every state, with what ``genjobs.api.abort`` answers
        (:meth:`abort`: here, through the owner, or in a dead owner's place; an ended job's
        usage once, then ``usageAlreadyClaimed``; ``not_found``; ``invalid_id``). Messages with
        a ``notice`` field are announcements for remote producers and get no answer.
        """
        job = msg.subject[len(self.s.prefix) + len(".abort.") :]
        nc = self.store.nc
        try:
            body = decode(msg.data, AbortSubjectBody)
            if body.notice is not None:
                return  # an announcement for remote producers, not a request
            job_id = check_id(job, "jobId")
            if body.user_id is None:
                raise BadRequest("userId is required")
            result = await self.abort(
                job_id,
                check_id(body.user_id, "userId"),
                check_optional_id(body.tenant_id, "tenantId"),
                by=BY_SUBJECT,
            )
        except ValueError as e:  # not JSON, or not an object of this shape
            await send_error(nc, msg, BadRequest(str(e)))
            return
        except GenjobsError as e:
            await send_error(nc, msg, e)
            return
        except TimeoutError:  # a NATS request inside the abort: try again later
            await send_error(nc, msg, Unavailable("abort: timed out"))
            return
        except Exception:  # answered, and never fatal to the replica's TaskGroup
            log.exception("abort %s: unexpected error", job[:40])
            await send_error(nc, msg, Unavailable("internal error"))
            return
        await send(nc, msg, encode(result))
