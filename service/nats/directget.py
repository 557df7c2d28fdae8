"""JetStream Direct Get, the one implementation: single, batch, last-by-subject, multi-last.

Every Direct Get of genjobs goes through :class:`DirectGetClient` (one per connection, see
:func:`client_for`), and every failure is a :class:`DirectGetError` (its ``status`` says which;
:class:`ReplayTimeout` is the one for "no complete answer in time"): readers replaying history,
the publisher's read-back of an ambiguous retry, the store's reads of a job's last event, one
event or a user's index, and durable sessions listing their pending events.

nats-py does not wrap Direct Get *batch* requests, and its own ``nc.request`` would cost a
future per reply and cannot collect the several messages a batch answers with. So the client
keeps a single ``<inbox>.*`` subscription with a callback and routes every reply by its last
token to the request that is waiting for it: no subscription, task or timer per reply.

Server behaviour this relies on (checked against nats-server 2.15.1):

* A batch request ``{"seq", "next_by_subj", "batch"}`` is answered by one message per stored
  event (original headers plus ``Nats-Sequence``, ``Nats-Subject``, ``Nats-Num-Pending``,
  ``Nats-Last-Sequence``) and ends with ``Status: 204`` (EOB), whose ``Nats-Num-Pending`` says
  how many matching messages remain after the batch. ``{"multi_last": [filter], "batch"}``
  answers the same way with the last message of every matching subject.
* Inside a batch ``Nats-Last-Sequence`` is the previous message *of the batch* (0 on the
  first), not the previous one on the subject, so it is useless for gap detection here.
* ``Status: 404`` means nothing at or after ``seq`` (also: unknown subject).
* ``Status: 503`` means nobody answers ``$JS.API.DIRECT.GET.<stream>``: the stream is missing,
  has no direct get, or has no leader right now (an election): the only transient status.
* ``jetstream.limits.max_request_batch`` does NOT cap Direct Get batches (a batch of 2,000
  returned 2,000 messages with the limit at 1,000); the caller chooses the size.

Replies skip nats-py's per-message work. nats-py parses every header block into a dict in
Python (~12 µs for the 10 headers of a stored event), builds a ``Msg`` and hands it to the
subscription's task through a queue; for a reader catching up on thousands of events that was
70 % of its time. So the client's inbox is routed by subscription id *before* nats-py parses
it (:func:`service.nats.compat.raw_routes`), each reply is handled inline in the read loop
from the raw header bytes (status and ``Nats-Sequence`` only), and a
:class:`~service.nats.stored.StoredMsg` parses its headers when (if) they are read. Everything
else on the connection takes nats-py's own path unchanged. ``inline=False`` takes nats-py's own
path for the replies too (tests hold both paths to the same results).
"""

from __future__ import annotations

import asyncio
import logging
import re
import weakref
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import headers as hdr
from service.nats import compat
from service.nats.stored import StoredMsg, parse_headers

__all__ = [
    "DirectGetClient",
    "DirectGetError",
    "ReplayTimeout",
    "StoredMsg",
    "client_for",
    "direct_get_batch",
    "last_seq_for_subject",
    "parse_headers",
    "transient",
]

log = logging.getLogger("genjobs.directget")

_API = "$JS.API.DIRECT.GET."
_encode = msgspec.json.Encoder().encode


class DirectGetError(RuntimeError):
    """A Direct Get failed: the one error type of every Direct Get.

    ``status`` is the server's status (``"503"``: nobody answers, the stream has no leader or
    does not exist; others: refused), ``"?"`` for a reply genjobs cannot read, or
    ``"timeout"`` (:class:`ReplayTimeout`). :attr:`transient` ones may pass: readers, sessions
    and the publisher's read-back retry them within the outage budget.
    """

    def __init__(
        self, stream: str, status: str, description: str, *, message: str | None = None
    ) -> None:
        super().__init__(
            message or f"direct get on {stream}: status {status} {description}".rstrip()
        )
        self.stream = stream
        self.status = status
        self.description = description

    @property
    def transient(self) -> bool:
        """A timeout or a 503: the same request may succeed once the stream is back."""
        return self.status in ("503", "timeout")


class ReplayTimeout(DirectGetError, TimeoutError):
    """A Direct Get got no (complete) answer in time: the server is unreachable or overloaded.

    It is transient: the same request may succeed once the connection is back.
    """

    def __init__(self, stream: str, subject: str, start_seq: int, timeout: float) -> None:
        super().__init__(
            stream,
            "timeout",
            f"no complete reply within {timeout:g}s",
            message=f"direct get on {stream} for {subject} from seq {start_seq}: no complete "
            f"reply within {timeout:g}s",
        )
        self.subject = subject
        self.start_seq = start_seq
        self.timeout = timeout


def transient(error: Exception) -> bool | None:
    """How :func:`service.nats.outage.retry` classifies a Direct Get failure: ``None`` if it
    is not an outage, ``True`` for a 503 (failed fast: back off), ``False`` for a timeout
    (waited already: retry at once)."""
    if not isinstance(error, DirectGetError) or not error.transient:
        return None
    return not isinstance(error, ReplayTimeout)


_SEQ_RE: Final = re.compile(rb"\r\n" + hdr.SEQUENCE.encode() + rb":[ \t]*([0-9]+)")
_PENDING_RE: Final = re.compile(rb"\r\n" + hdr.NUM_PENDING.encode() + rb":[ \t]*([0-9]+)")
_CRLF: Final = b"\r\n"


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

    def __init__(self, nc: NATS, *, inline: bool = True) -> None:
        self._nc = nc
        self._inline = inline  # False: always nats-py's own path (tests cover both)
        self._prefix = nc.new_inbox() + "."
        self._plen = len(self._prefix)
        self._pending: dict[str, _Pending] = {}
        self._next_token = 0
        self._sub: Subscription | None = None
        self._starting: asyncio.Future[None] | None = None
        self._raw: dict[int, compat.RawHandler] | None = None  # the routes, once ours is in
        self._hot_subject = b""  # the reply subject of the last inline reply, and its request
        self._hot: _Pending | None = None
        self._closed = False

    @property
    def raw(self) -> bool:
        """Whether replies take the inline path (:func:`compat.raw_routes`), not nats-py's."""
        return self._raw is not None

    async def _start(self) -> None:
        """Subscribe on first use; concurrent first requests wait for it.

        Nothing is published before the subscription exists and its inline route is in place,
        so a request's replies all take the same path, in order: never some through nats-py's
        subscription queue and the rest inline.
        """
        if self._sub is not None:
            return
        if self._starting is not None:
            await asyncio.shield(self._starting)
            return
        starting = self._starting = asyncio.get_running_loop().create_future()
        try:
            sub = await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)
        except BaseException as e:
            self._starting = None
            starting.set_exception(
                e if isinstance(e, Exception) else RuntimeError("direct get subscribe interrupted")
            )
            starting.exception()  # retrieved: concurrent waiters re-raise it
            raise
        if self._inline:
            routes = compat.raw_routes(self._nc)
            routes[compat.subscription_id(sub)] = self._on_raw
            self._raw = routes
        self._sub = sub
        starting.set_result(None)

    def _on_raw(self, subject: bytes, headers: bytes | None, data: bytes) -> None:
        """One reply, inline in nats-py's read loop, from its raw bytes: parse as little as
        possible and never raise into the read loop."""
        if subject == self._hot_subject:  # the next reply of the batch the last one was of
            pending = self._hot
        else:
            pending = self._pending.get(subject[self._plen :].decode("ascii", "replace"))
            self._hot_subject, self._hot = subject, pending
        if pending is None or pending.future.done():
            return  # a reply to a request that already timed out
        try:
            if headers is None or headers[8:9] != b" ":  # no status line: a stored message
                m = _SEQ_RE.search(headers) if headers else None
                if m is None:
                    raise DirectGetError(pending.stream, "?", "reply without Nats-Sequence")
                pending.msgs.append(StoredMsg(int(m.group(1)), data, raw_headers=headers or b""))
                if not pending.batch:
                    pending.future.set_result((pending.msgs, 0))
                return
            status = headers[9:12].decode("ascii", "replace")
            if status == "204":
                m = _PENDING_RE.search(headers)
                pending.future.set_result((pending.msgs, int(m.group(1)) if m else 0))
            elif status == "404":
                pending.future.set_result((pending.msgs, 0))
            else:
                end = headers.find(_CRLF)
                desc = headers[12 : end if end >= 0 else None].decode("utf-8", "replace")
                raise DirectGetError(pending.stream, status, desc.strip())
        except Exception as e:  # handed to the waiting request, which raises it
            pending.future.set_exception(e)

    async def _on_reply(self, msg: Msg) -> None:
        """One reply through nats-py's subscription (``inline=False``)."""
        pending = self._pending.get(msg.subject[self._plen :])
        if pending is None or pending.future.done():
            return  # a reply to a request that already timed out
        headers: dict[str, Any] = msg.headers or {}
        status = headers.get(hdr.STATUS)
        if status is None:
            seq = headers.get(hdr.SEQUENCE)
            if seq is None:
                pending.future.set_exception(
                    DirectGetError(pending.stream, "?", "reply without Nats-Sequence")
                )
                return
            pending.msgs.append(StoredMsg(int(seq), msg.data, headers=headers))
            if not pending.batch:
                pending.future.set_result((pending.msgs, 0))
        elif status == "204":
            pending.future.set_result((pending.msgs, int(headers.get(hdr.NUM_PENDING, 0))))
        elif status == "404":
            pending.future.set_result((pending.msgs, 0))
        else:
            # nats-py keys the description with an enum member, not a str.
            desc = next((str(v) for k, v in headers.items() if str(k) == hdr.DESCRIPTION), "")
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
        *,
        max_bytes: int | None = None,
    ) -> tuple[list[StoredMsg], int]:
        """See :func:`direct_get_batch`; ``owner`` tags the request for :meth:`fail_owned`;
        with ``max_bytes`` the server ends the batch once it sent that many bytes (it always
        sends at least one message)."""
        body: dict[str, Any] = {"seq": max(start_seq, 1), "next_by_subj": subject, "batch": batch}
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
        return await self._request(stream, body, subject, batch=True, timeout=timeout, owner=owner)

    async def get(self, stream: str, seq: int, timeout: float = 5.0) -> StoredMsg | None:
        """The message stored at ``seq``, or ``None`` if there is none (any longer).

        Raises:
            DirectGetError: as :func:`direct_get_batch`.
        """
        msgs, _ = await self._request(stream, {"seq": seq}, "", batch=False, timeout=timeout)
        return msgs[0] if msgs else None

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

    async def multi_last(
        self, stream: str, subject_filter: str, batch: int = 1000, timeout: float = 5.0
    ) -> tuple[list[StoredMsg], int]:
        """The last message of every subject matching ``subject_filter`` (its subject in the
        ``Nats-Subject`` header), at most ``batch`` of them, and how many more match.

        Raises:
            DirectGetError: as :func:`direct_get_batch`.
        """
        body = {"multi_last": [subject_filter], "batch": batch}
        return await self._request(stream, body, subject_filter, batch=True, timeout=timeout)

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
            raise DirectGetError(stream, "closed", "the Direct Get client is closed")
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
            if self._hot is pending:
                self._hot_subject, self._hot = b"", None

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
                pending.future.set_exception(
                    DirectGetError(pending.stream, "closed", "the Direct Get client closed")
                )
                pending.future.exception()  # retrieved: the waiter re-raises it
        sub, self._sub = self._sub, None
        if sub is not None and self._raw is not None:
            self._raw.pop(compat.subscription_id(sub), None)
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
