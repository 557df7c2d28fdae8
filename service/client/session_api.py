"""The JetStream calls that durable sessions (``service/client/sessions.py``) share, with
nats-py and Direct Get errors translated at the boundary into ``schemas.session`` errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from schemas import headers as hdr
from schemas.session import SessionError, SessionEvent, SessionNotFound, SessionUnavailable
from service.config import Settings
from service.nats.directget import DirectGetError, client_for, transient
from service.nats.outage import OutagePolicy, retry
from service.nats.stored import StoredMsg

# Direct Get pages: the server stops a page once it has sent this many bytes (it always sends
# at least one event, so an 8 MB final event still comes through).
_DIRECT_MAX_BYTES: Final = 4 * 1024 * 1024
_CONSUMER_NOT_FOUND: Final = 10014  # JetStream API err_code
_T = TypeVar("_T")


def event_of(seq: int, msg: Msg) -> SessionEvent:
    headers = msg.headers or {}
    raw_index = headers.get(hdr.INDEX, "")
    return SessionEvent(
        seq=seq,
        index=int(raw_index) if raw_index.isdecimal() else -1,
        kind=headers.get(hdr.KIND, ""),
        data=msg.data,
    )


def stored_event(msg: StoredMsg) -> SessionEvent:
    """A Direct Get reply: the stored headers plus ``Nats-Sequence``."""
    kind, index = msg.kind_index()
    return SessionEvent(seq=msg.seq, index=index, kind=kind, data=msg.data)


def seq_pair(info: ConsumerInfo) -> tuple[int, int, int, int]:
    """(ack floor stream seq, ack floor consumer seq, delivered stream seq, delivered consumer seq)."""
    floor, delivered = info.ack_floor, info.delivered
    return (
        floor.stream_seq if floor else 0,
        floor.consumer_seq if floor else 0,
        delivered.stream_seq if delivered else 0,
        delivered.consumer_seq if delivered else 0,
    )


class SessionApi:
    """The JetStream calls a store and its sessions share, with nats-py errors translated here,
    at the boundary, into :class:`SessionError` subclasses (cause chained)."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.settings = settings
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.stream = settings.stream_name
        self.dg = client_for(nc)
        self.outage = OutagePolicy.from_settings(settings)

    @asynccontextmanager
    async def boundary(
        self, job_id: str, name: str, consumer: str, what: str
    ) -> AsyncIterator[None]:
        try:
            yield
        except DirectGetError as e:
            raise SessionUnavailable(job_id, name, f"{what}: {e}") from e
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as e:
            # Nobody answered on the consumer's subjects: either it is gone or JetStream is
            # briefly unavailable (leader election). Ask once which, so callers can tell.
            raise await self._gone_or_unavailable(job_id, name, consumer, what, e) from e
        except nats.js.errors.NotFoundError as e:
            if e.err_code == _CONSUMER_NOT_FOUND:
                raise SessionNotFound(job_id, name) from e
            raise SessionUnavailable(job_id, name, f"{what}: {e}") from e
        except nats.errors.Error as e:
            raise SessionUnavailable(job_id, name, f"{what}: {e}") from e

    async def _gone_or_unavailable(
        self, job_id: str, name: str, consumer: str, what: str, cause: Exception
    ) -> SessionError:
        try:
            await self.js.consumer_info(self.stream, consumer)
        except nats.js.errors.NotFoundError:
            return SessionNotFound(job_id, name)
        except nats.errors.Error as probe:
            return SessionUnavailable(
                job_id, name, f"{what}: {cause!r}; consumer info also failed: {probe!r}"
            )
        return SessionUnavailable(job_id, name, f"{what}: {cause!r} (the session exists)")

    async def direct_last(self, subject: str) -> SessionEvent | None:
        """The last stored event of ``subject``, or None when it has none.

        Raises:
            DirectGetError: the stream did not answer within the outage budget, or refused.
        """
        timeout = self.settings.request_timeout
        last = await self._ride_out(lambda: self.dg.last_msg(self.stream, subject, timeout))
        return None if last is None else stored_event(last)

    async def direct_batch(self, start: int, subject: str, batch: int) -> list[SessionEvent]:
        """Events of ``subject`` from stream sequence ``start`` on, at most ``batch`` of them.

        Raises:
            DirectGetError: the stream did not answer within the outage budget, or refused.
        """
        timeout = self.settings.request_timeout
        msgs, _ = await self._ride_out(
            lambda: self.dg.get_batch(
                self.stream, subject, start, batch, timeout, max_bytes=_DIRECT_MAX_BYTES
            )
        )
        return [stored_event(m) for m in msgs]

    async def _ride_out(self, request: Callable[[], Awaitable[_T]]) -> _T:
        """A Direct Get retried through an outage, as a live reader's are."""
        return await retry(
            request,
            self.outage,
            what=f"direct get on {self.stream}",
            transient=transient,
            stopped=lambda: self.nc.is_closed,
        )
