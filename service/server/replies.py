"""Answers to micro-service requests and ingest batches: one error shape for every client.

Every failure carries the micro error headers (``Nats-Service-Error``,
``Nats-Service-Error-Code``) and the body ``{"error": {"code", "message"}}`` (docs/protocol.md, the service API), so a
`nats req` user, a nats.micro client and our own SDK all read the same thing.
"""

from __future__ import annotations

import logging
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

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
