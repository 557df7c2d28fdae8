"""Answers to micro-service requests and ingest batches: one error shape for every client.

Every failure carries the micro error headers (``Nats-Service-Error``,
``Nats-Service-Error-Code``) and the body ``{"error": {"code", "message"}}`` (docs/protocol.md, the service API), so a
`nats req` user, a nats.micro client and our own SDK all read the same thing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import headers as hdr
from schemas.api import ErrorCode, error_body
from schemas.errors import GenjobsError

log = logging.getLogger("genjobs.api")

ERROR_HEADER: Final = hdr.SERVICE_ERROR
ERROR_CODE_HEADER: Final = hdr.SERVICE_ERROR_CODE


def header_text(text: str, limit: int = 200) -> str:
    """One printable ASCII line: header values go to every client library, not just ours."""
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() else " " for c in ascii_text)[:limit]


def error_code(error: GenjobsError) -> ErrorCode:
    """The wire code of ``error``; an unknown one is reported as ``unavailable``."""
    try:
        return ErrorCode(error.code)
    except ValueError:
        return ErrorCode.UNAVAILABLE


async def send(nc: NATS, msg: Msg, data: bytes, headers: dict[str, str] | None = None) -> None:
    """Answer if the request has a reply subject; a failed answer is logged, not raised, so
    one lost connection cannot fail the other requests' TaskGroup."""
    if not msg.reply:
        return
    try:
        await nc.publish(msg.reply, data, headers=headers)
    except NatsError as e:
        log.warning("could not answer %s: %s", msg.subject, e)


async def send_error(nc: NATS, msg: Msg, error: GenjobsError) -> None:
    """Answer ``error`` with the micro error headers and the ``{"error": ...}`` body."""
    code = error_code(error)
    headers = {ERROR_HEADER: header_text(error.message), ERROR_CODE_HEADER: str(code.status)}
    await send(nc, msg, error_body(code, error.message), headers=headers)


UNREACHABLE_HEADER: Final = hdr.UNREACHABLE
"""Set on an answer given in another replica's place when that replica did not answer (its
value is that replica's id)."""

PROBE_INTERVAL: Final = 0.5
"""While a relayed request is unanswered, how often the relaying replica checks that the
replica it waits for still serves its direct subjects (it may have died holding the request)."""


async def relay(
    nc: NATS,
    msg: Msg,
    subject: str,
    replica_id: str,
    timeout: float,
    unreachable: GenjobsError,
    probe: tuple[str, bytes] | None = None,
) -> bool:
    """Hand ``msg`` to the one replica that may answer it (on its ``direct`` subject) and pass
    its answer back, so the caller hears exactly one reply, from this replica.

    Returns False, without answering, when nobody serves ``subject`` (that replica is gone or
    not serving), also when it stops serving ``probe`` (its ping) while the request waits: the
    caller answers in its place; a late answer of that replica is dropped. ``probe`` is a
    (subject, body) that replica answers at once (its rpc snapshot). Past ``timeout`` it
    answers ``unreachable`` (with :data:`UNREACHABLE_HEADER`) and returns True.
    """
    headers = dict(msg.headers or {})
    pending = asyncio.ensure_future(
        nc.request(subject, msg.data, timeout=timeout, headers=headers or None)
    )
    try:
        while True:
            done, _ = await asyncio.wait([pending], timeout=PROBE_INTERVAL if probe else None)
            if done:
                break
            assert probe is not None
            try:
                await nc.request(probe[0], probe[1], timeout=PROBE_INTERVAL)
            except NoRespondersError:
                log.warning(
                    "relay of %s: %s is gone while it held the request", msg.subject, replica_id
                )
                return False
            except NatsTimeoutError:
                continue  # slow, not gone: keep waiting (bounded by ``timeout``)
        answer = pending.result()
    except NoRespondersError:
        return False
    except NatsTimeoutError:
        log.warning("relay of %s to %s: no answer within %.1fs", msg.subject, subject, timeout)
        await send_unreachable(nc, msg, replica_id, unreachable)
        return True
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.wait([pending])
        elif not pending.cancelled():
            pending.exception()  # retrieved: the outcome was handled above
    await send(nc, msg, answer.data, headers=answer.headers or None)
    return True


async def send_unreachable(nc: NATS, msg: Msg, replica_id: str, error: GenjobsError) -> None:
    """Answer ``error`` on behalf of ``replica_id``, which did not answer."""
    code = error_code(error)
    headers = {
        ERROR_HEADER: header_text(error.message),
        ERROR_CODE_HEADER: str(code.status),
        UNREACHABLE_HEADER: replica_id,
    }
    await send(nc, msg, error_body(code, error.message), headers=headers)
