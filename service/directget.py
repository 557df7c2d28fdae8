"""JetStream Direct Get over one wildcard inbox per connection: the replay path of every reader.

nats-py does not wrap Direct Get *batch* requests, and its own ``nc.request`` would cost a
future per reply and cannot collect the several messages a batch answers with. Readers replay
history and fill gaps with these requests all the time (a late reader, a reconnect, an idle
re-check), so the client keeps a single ``<inbox>.*`` subscription with a callback and routes
every reply by its last token to the request that is waiting for it: no subscription, task or
timer per reply.

Server behaviour this relies on (checked against nats-server 2.15.1):

* A batch request ``{"seq", "next_by_subj", "batch"}`` is answered by one message per stored
  event (original headers plus ``Nats-Sequence``, ``Nats-Subject``, ``Nats-Num-Pending``,
  ``Nats-Last-Sequence``) and ends with ``Status: 204`` (EOB), whose ``Nats-Num-Pending`` says
  how many matching messages remain after the batch.
* Inside a batch ``Nats-Last-Sequence`` is the previous message *of the batch* (0 on the
  first), not the previous one on the subject, so it is useless for gap detection here.
* ``Status: 404`` means nothing at or after ``seq`` (also: unknown subject).
* ``Status: 503`` means nobody answers ``$JS.API.DIRECT.GET.<stream>``: the stream is missing
  or has no direct get.
* ``jetstream.limits.max_request_batch`` does NOT cap Direct Get batches (a batch of 2,000
  returned 2,000 messages with the limit at 1,000); the caller chooses the size.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("genjobs.directget")

_API = "$JS.API.DIRECT.GET."
_encode = msgspec.json.Encoder().encode


class DirectGetError(RuntimeError):
    """The server refused a Direct Get (missing stream, bad request): retrying will not help."""

    def __init__(self, stream: str, status: str, description: str) -> None:
        super().__init__(f"direct get on {stream}: status {status} {description}".rstrip())
        self.stream = stream
        self.status = status
        self.description = description


class ReplayTimeout(TimeoutError):
    """A Direct Get got no (complete) answer in time: the server is unreachable or overloaded.

    It is transient: the same request may succeed once the connection is back.
    """

    def __init__(self, stream: str, subject: str, start_seq: int, timeout: float) -> None:
        super().__init__(
            f"direct get on {stream} for {subject} from seq {start_seq}: no complete reply "
            f"within {timeout:g}s"
        )
        self.stream = stream
        self.subject = subject
        self.start_seq = start_seq
        self.timeout = timeout


@dataclass(slots=True, frozen=True)
class StoredMsg:
    """One stored message as Direct Get returned it."""

    seq: int
    headers: dict[str, str]
    data: bytes


@dataclass(slots=True)
class _Pending:
    """Replies collected for one request until its terminating status message."""

    future: asyncio.Future[tuple[list[StoredMsg], int]]
    stream: str
    batch: bool
    owner: object = None
    msgs: list[StoredMsg] = field(default_factory=list)


class DirectGetClient:
    """Direct Get requests multiplexed over one wildcard inbox subscription.

    One per connection (see :func:`client_for`); its subscription lives as long as the
    connection, or until :meth:`close`.
    """

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._prefix = nc.new_inbox() + "."
        self._plen = len(self._prefix)
        self._pending: dict[str, _Pending] = {}
        self._next_token = 0
        self._sub: Subscription | None = None
        self._subscribing = False
        self._closed = False

    async def _start(self) -> None:
        """Subscribe on first use.

        nats-py registers the subscription and queues its SUB in the outgoing buffer before its
        first suspension point, so a concurrent request that skips this (``_subscribing`` is
        already set) still has its PUB sent after the SUB and its replies routed to us: no lock,
        and never two subscriptions (which would deliver every reply twice).
        """
        if self._subscribing:
            return
        self._subscribing = True
        try:
            self._sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        except BaseException:
            self._subscribing = False
            raise

    async def _on_reply(self, msg: Msg) -> None:
        pending = self._pending.get(msg.subject[self._plen :])
        if pending is None or pending.future.done():
            return  # a reply to a request that already timed out
        headers: dict[str, Any] = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            seq = headers.get("Nats-Sequence")
            if seq is None:
                pending.future.set_exception(
                    DirectGetError(pending.stream, "?", "reply without Nats-Sequence")
                )
                return
            pending.msgs.append(StoredMsg(int(seq), headers, msg.data))
            if not pending.batch:
                pending.future.set_result((pending.msgs, 0))
        elif status == "204":
            pending.future.set_result((pending.msgs, int(headers.get("Nats-Num-Pending", 0))))
        elif status == "404":
            pending.future.set_result((pending.msgs, 0))
        else:
            # nats-py keys the description with an enum member, not a str.
            desc = next((str(v) for k, v in headers.items() if str(k) == "Description"), "")
            pending.future.set_exception(
                DirectGetError(pending.stream, str(status), desc.split("\n")[0].strip())
            )

    async def get_batch(
        self,
        stream: str,
        subject: str,
        start_seq: int,
        batch: int = 500,
        timeout: float = 5.0,
        owner: object = None,
    ) -> tuple[list[StoredMsg], int]:
        """See :func:`direct_get_batch`; ``owner`` tags the request for :meth:`fail_owned`."""
        body = {"seq": max(start_seq, 1), "next_by_subj": subject, "batch": batch}
        return await self._request(stream, body, subject, batch=True, timeout=timeout, owner=owner)

    async def last_msg(
        self, stream: str, subject: str, timeout: float = 5.0, owner: object = None
    ) -> StoredMsg | None:
        """The last message stored on ``subject``, or ``None``; raises as :func:`last_seq_for_subject`."""
        body = {"last_by_subj": subject}
        msgs, _ = await self._request(
            stream, body, subject, batch=False, timeout=timeout, owner=owner
        )
        return msgs[0] if msgs else None

    async def last_seq(self, stream: str, subject: str, timeout: float = 5.0) -> int:
        """See :func:`last_seq_for_subject`."""
        last = await self.last_msg(stream, subject, timeout)
        return last.seq if last else 0

    async def _request(
        self,
        stream: str,
        body: dict[str, Any],
        subject: str,
        *,
        batch: bool,
        timeout: float,
        owner: object = None,
    ) -> tuple[list[StoredMsg], int]:
        if self._closed:
            raise RuntimeError("DirectGetClient is closed")
        await self._start()
        self._next_token += 1
        token = str(self._next_token)
        pending = _Pending(asyncio.get_running_loop().create_future(), stream, batch, owner)
        self._pending[token] = pending
        try:
            await self._nc.publish(_API + stream, _encode(body), reply=self._prefix + token)
            async with asyncio.timeout(timeout):
                return await pending.future
        except TimeoutError as e:
            raise ReplayTimeout(stream, subject, int(body.get("seq", 0)), timeout) from e
        finally:
            del self._pending[token]

    def fail_owned(self, owner: object, error: BaseException) -> int:
        """Fail at once the waiting requests made for ``owner`` (a closing reader hub) with
        ``error``, instead of leaving them to their timeout; returns how many there were."""
        failed = 0
        for pending in self._pending.values():
            if pending.owner is owner and not pending.future.done():
                pending.future.set_exception(error)
                pending.future.exception()  # retrieved: the waiter re-raises it
                failed += 1
        return failed

    async def close(self) -> None:
        """Unsubscribe and fail the requests still waiting; later requests raise."""
        self._closed = True
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("DirectGetClient closed"))
                pending.future.exception()  # retrieved: the waiter re-raises it
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            await sub.unsubscribe()


_clients: weakref.WeakKeyDictionary[NATS, DirectGetClient] = weakref.WeakKeyDictionary()


def client_for(nc: NATS) -> DirectGetClient:
    """The connection's shared client (created on first use); a closed one is replaced."""
    client = _clients.get(nc)
    if client is None or client._closed:
        client = _clients[nc] = DirectGetClient(nc)
    return client


async def direct_get_batch(
    nc: NATS,
    stream: str,
    subject: str,
    start_seq: int,
    batch: int = 500,
    timeout: float = 5.0,
) -> tuple[list[StoredMsg], int]:
    """Up to ``batch`` messages of ``subject`` with seq >= ``start_seq``, in order.

    Returns the messages and how many more match after them (0: the batch reached the end as
    of the moment the server answered). An empty list means nothing at or after ``start_seq``.

    Raises:
        ReplayTimeout: no complete answer within ``timeout`` (transient).
        DirectGetError: the stream is missing, has no direct get, or refused the request.
        nats.errors.ConnectionClosedError: the connection is closed.
    """
    return await client_for(nc).get_batch(stream, subject, start_seq, batch, timeout)


async def last_seq_for_subject(
    nc: NATS,
    stream: str,
    subject: str,
    timeout: float = 5.0,
) -> int:
    """The sequence of the last message stored on ``subject``; 0 if there is none.

    Raises:
        ReplayTimeout: no answer within ``timeout`` (transient).
        DirectGetError: the stream is missing or has no direct get.
        nats.errors.ConnectionClosedError: the connection is closed.
    """
    return await client_for(nc).last_seq(stream, subject, timeout)
