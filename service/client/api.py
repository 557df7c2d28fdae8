"""The genjobs service API from any client: one request helper for the CLI, the gateway, tools.

Every replica serves ``<prefix>.api.{create,status,resume,abort,active,counts,sync}``
(docs/protocol.md); a client sends JSON and gets JSON back, errors as ``{"error": {"code",
"message"}}`` with the micro error headers. :func:`request` returns the reply as it is;
:func:`call` turns an error reply into the matching :class:`~schemas.errors.GenjobsError`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas import headers as hdr
from schemas.errors import GenjobsError, Unavailable, from_body
from service.config import Settings

_enc = msgspec.json.Encoder()


class NoReplica(Unavailable):
    """Nobody serves the endpoint: no replica runs with this prefix, or none is connected."""


async def request(
    nc: NATS, settings: Settings, name: str, body: dict[str, Any], timeout: float | None = None
) -> tuple[bool, Any]:
    """One request to ``<prefix>.api.<name>``; returns (ok, decoded JSON body). A body that is
    not JSON comes back as text.

    Raises:
        NoReplica: no replica serves the endpoint.
        Unavailable: no answer within ``timeout`` (default ``request_timeout``), or the
            connection failed.
    """
    subject = f"{settings.prefix}.api.{name}"
    try:
        msg = await nc.request(
            subject, _enc.encode(body), timeout=timeout or settings.request_timeout
        )
    except NoRespondersError as e:
        raise NoReplica(f"no genjobs replica serves {subject}") from e
    except (NatsTimeout, TimeoutError) as e:
        raise Unavailable(f"no answer on {subject} in time") from e
    except NatsError as e:
        raise Unavailable(f"{subject}: {e or type(e).__name__}") from e
    try:
        reply = msgspec.json.decode(msg.data) if msg.data else None
    except msgspec.DecodeError:
        reply = msg.data.decode(errors="replace")
    headers = msg.headers or {}
    failed = hdr.SERVICE_ERROR_CODE in headers or (
        isinstance(reply, dict) and set(reply) == {"error"}
    )
    return not failed, reply


async def call(
    nc: NATS, settings: Settings, name: str, body: dict[str, Any], timeout: float | None = None
) -> Any:
    """Like :func:`request`, but an error reply is raised.

    Raises:
        GenjobsError: the service answered with an error (its code's subclass: NotFound,
            Forbidden, InvalidId, ...; an unknown code as Unavailable).
        NoReplica, Unavailable: see :func:`request`.
    """
    ok, reply = await request(nc, settings, name, body, timeout)
    if ok:
        return reply
    error = from_body(reply) if isinstance(reply, dict) else GenjobsError(str(reply))
    if type(error) is GenjobsError:
        raise Unavailable(error.message)
    raise error


def job_body(job_id: str, user_id: str, tenant_id: str | None = None) -> dict[str, Any]:
    """The body of a request naming a job and its caller."""
    body: dict[str, Any] = {"jobId": job_id, "userId": user_id}
    if tenant_id:
        body["tenantId"] = tenant_id
    return body


def user_body(user_id: str, tenant_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"userId": user_id}
    if tenant_id:
        body["tenantId"] = tenant_id
    return body
