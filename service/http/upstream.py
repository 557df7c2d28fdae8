"""The genjobs service API as the gateway calls it: one request helper, errors as GenjobsError.

The gateway is a plain NATS client: everything it knows about a job comes from the
``<prefix>.api.*`` endpoints every replica serves (docs/protocol.md), exactly as any other
client would see it, and events come from the client SDK's :class:`LiveHub`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from schemas.errors import GenjobsError, Unavailable, from_body
from service.config import Settings

_enc = msgspec.json.Encoder()


async def call(
    nc: NATS, settings: Settings, name: str, body: dict[str, Any], timeout: float | None = None
) -> Any:
    """One request to ``<prefix>.api.<name>``; returns the decoded reply.

    Raises:
        GenjobsError: the service answered with an error (its code's subclass: NotFound,
            Forbidden, InvalidId, ...).
        Unavailable: no replica answers, none answered in time, or the connection is down.
    """
    subject = f"{settings.prefix}.api.{name}"
    try:
        msg = await nc.request(
            subject, _enc.encode(body), timeout=timeout or settings.request_timeout
        )
    except NoRespondersError as e:
        raise Unavailable(f"no genjobs replica serves {subject}") from e
    except (NatsTimeout, TimeoutError) as e:
        raise Unavailable(f"no answer on {subject} in time") from e
    except NatsError as e:
        raise Unavailable(f"{subject}: {e or type(e).__name__}") from e
    try:
        reply = msgspec.json.decode(msg.data) if msg.data else None
    except msgspec.DecodeError as e:
        raise Unavailable(f"{subject}: undecodable reply") from e
    headers = msg.headers or {}
    if isinstance(reply, dict) and (
        "Nats-Service-Error-Code" in headers or set(reply) == {"error"}
    ):
        error = from_body(reply)
        if type(error) is GenjobsError:
            raise Unavailable(error.message)
        raise error
    return reply


def job_body(job_id: str, user_id: str, tenant_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"jobId": job_id, "userId": user_id}
    if tenant_id:
        body["tenantId"] = tenant_id
    return body
