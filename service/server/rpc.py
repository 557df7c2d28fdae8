"""This replica's own subjects ``<prefix>.rpc.<me>.<op>`` (internal): other replicas ask the
owner of a running job for its snapshot, to set ``syncSent``, or to abort it
(``service.server.owner_link`` is the asking side). Every request is answered: the result, or
an error body (``not_found`` when no actor runs the job here)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from nats.aio.msg import Msg

from actors.registry import Registry
from schemas.api import AbortResult, OwnerRequest, SyncReply, encode
from schemas.errors import BadRequest, GenjobsError, NotFound, Unavailable
from schemas.ids import check_id, check_optional_id
from service.server.abort import BY_API, Aborts
from service.server.reads import authorize
from service.server.replies import send, send_error

log = logging.getLogger("genjobs.rpc")

_decoder = msgspec.json.Decoder(OwnerRequest)
_json = msgspec.json.Encoder()


Adopt = Callable[[str], Awaitable[dict[str, Any]]]


class OwnerRpc:
    def __init__(self, registry: Registry, aborts: Aborts, adopt: Adopt | None = None) -> None:
        self.registry = registry
        self.aborts = aborts
        self._adopt = adopt
        """``adopt``: run a job a stopping replica hands over (service/server/handoff.py)."""

    async def on_msg(self, msg: Msg) -> None:
        op = msg.subject.rsplit(".", 1)[1]
        nc = self.aborts.store.nc
        try:
            req = _decoder.decode(msg.data)
            reply = await self._handle(op, req)
        except msgspec.DecodeError:
            await send_error(nc, msg, BadRequest("malformed request"))
            return
        except GenjobsError as e:
            await send_error(nc, msg, e)
            return
        except Exception:  # in a task of the replica's TaskGroup: never end the replica
            log.exception("rpc %s: unexpected error", op)
            await send_error(nc, msg, Unavailable("internal error"))
            return
        await send(nc, msg, reply)

    async def _handle(self, op: str, req: OwnerRequest) -> bytes:
        """Raises: NotFound (no actor here), BadRequest, InvalidId, Forbidden."""
        handle = self.registry.get(check_id(req.job_id, "jobId"))
        if op == "adopt" and self._adopt is not None:
            return _json.encode(await self._adopt(req.job_id))
        if op == "abort":
            user_id = check_id(req.user_id or "", "userId")
            tenant_id = check_optional_id(req.tenant_id, "tenantId")
            by = req.by or BY_API
            result: AbortResult | None = None
            if handle is not None:
                authorize(handle.record, user_id, tenant_id)
                result = await self.aborts.abort_here(handle, by)
            elif self.aborts.takeover.busy(req.job_id):
                result = await self.aborts.join_takeover(req.job_id, user_id, tenant_id, by)
            if result is None:
                raise NotFound(f"job {req.job_id} does not run here")
            return encode(result)
        if handle is None:
            raise NotFound(f"job {req.job_id} does not run here")
        if op == "snapshot":
            return encode(handle.current_snapshot())
        if op == "sync":
            if req.sync_sent is not None:
                await handle.update_meta({"syncSent": req.sync_sent})
            return encode(SyncReply(sync_sent=handle.record.sync_sent))
        raise BadRequest(f"unknown op {op}")
