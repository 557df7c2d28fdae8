"""Asking a job's owner replica, on its own subject ``<prefix>.rpc.<owner>.<op>`` (internal).

Only the owner subscribes to its rpc subjects, so every request gets one of three answers fast:
the owner's reply; "no responders" (the owner's connection is gone: it died, or it was killed);
or, rarely, silence until the timeout (the owner is alive but stuck). The caller decides what
each means for its operation (``service.server.abort``, ``service.server.resume``).
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.api import AbortResult, OwnerRequest, ResumeSnapshot, SyncReply, encode
from schemas.errors import NotFound, from_body
from service.config import Settings

T = TypeVar("T")


class NoAnswer(enum.Enum):
    NOT_HERE = "not here"
    """The owner answered that it runs no actor for the job (it ended, or its actor died)."""
    GONE = "gone"
    """No responders: nobody holds the owner's subscription."""
    SILENT = "silent"
    """No reply within the timeout: the owner is alive but did not answer."""


class OwnerLink:
    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.s = settings

    async def _ask(
        self, owner: str, op: str, body: OwnerRequest, type_: type[T], timeout: float
    ) -> T | NoAnswer:
        """Raises: the error the owner answered (``forbidden``, ...), except ``not_found``."""
        try:
            reply = await self.nc.request(
                self.s.rpc_subject(owner, op), encode(body), timeout=timeout
            )
        except NoRespondersError:
            return NoAnswer.GONE
        except NatsTimeout:
            return NoAnswer.SILENT
        try:
            return msgspec.json.decode(reply.data, type=type_)
        except msgspec.ValidationError:
            error: Any = msgspec.json.decode(reply.data)
            if not (isinstance(error, dict) and "error" in error):
                raise
            err = from_body(error)
            if isinstance(err, NotFound):
                return NoAnswer.NOT_HERE
            raise err from None

    async def snapshot(self, owner: str, job_id: str) -> ResumeSnapshot | NoAnswer:
        """The owner's in-memory snapshot (it answers within a second or not at all)."""
        body = OwnerRequest(job_id=job_id)
        return await self._ask(
            owner, "snapshot", body, ResumeSnapshot, min(1.0, self.s.request_timeout)
        )

    async def sync(self, owner: str, job_id: str, value: bool) -> SyncReply | NoAnswer:
        body = OwnerRequest(job_id=job_id, sync_sent=value)
        return await self._ask(owner, "sync", body, SyncReply, self.s.request_timeout)

    async def abort(
        self, owner: str, job_id: str, user_id: str, tenant_id: str | None, by: str
    ) -> AbortResult | NoAnswer:
        """The owner aborts (and announces it); ``by`` is what the user did.

        Raises:
            Forbidden: the owner says the job is not the caller's.
        """
        body = OwnerRequest(job_id=job_id, user_id=user_id, tenant_id=tenant_id, by=by)
        return await self._ask(owner, "abort", body, AbortResult, self.s.request_timeout)
