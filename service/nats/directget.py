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

Replies skip nats-py's per-message work. nats-py parses every header block into a dict in
Python (~12 µs for the 10 headers of a stored event, ~1.2 µs per header), builds a ``Msg`` and
hands it to the subscription's task through a queue; for a reader catching up on thousands of
events that was 70 % of its time. So the client routes its inbox's messages (by subscription
id) *before* nats-py parses them: ``Client._process_msg`` is wrapped once per connection (see
:func:`_raw_routes`), the reply is handled inline in the read loop from the raw header bytes
(status and ``Nats-Sequence`` only), and a :class:`StoredMsg` parses its headers when (if) they
are read. Everything else on the connection takes nats-py's own path unchanged. If a nats-py
release lacks that method, the client falls back to an ordinary callback subscription.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import weakref
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

log = logging.getLogger("genjobs.directget")

_API = "$JS.API.DIRECT.GET."
_encode = msgspec.json.Encoder().encode


class DirectGetError(RuntimeError):
    """The server refused a Direct Get. Status 503 (no responders: the stream has no leader, or
    does not exist) may pass; readers retry it within the outage budget. Others will not."""

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


_CRLF: Final = b"\r\n"
_SEQ_RE: Final = re.compile(rb"\r\nNats-Sequence:[ \t]*([0-9]+)")
_PENDING_RE: Final = re.compile(rb"\r\nNats-Num-Pending:[ \t]*([0-9]+)")
_header_res: dict[str, re.Pattern[bytes]] = {}


def _header_re(name: str) -> re.Pattern[bytes]:
    pattern = _header_res.get(name)
    if pattern is None:
        key = re.escape(name.encode("ascii"))
        pattern = _header_res[name] = re.compile(rb"\r\n[ \t]*" + key + rb"[ \t]*:([^\r\n]*)")
    return pattern


def parse_headers(raw: bytes) -> dict[str, str]:
    """A NATS header block (``NATS/1.0...\\r\\n`` then ``Name: Value`` lines) as nats-py parses
    it: names and values stripped, names with inner whitespace or non-ASCII bytes skipped, the
    last of repeated names kept, values decoded as UTF-8 with replacement. The status line's
    code and description are not included."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF)[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if len(key.split()) != 1:  # empty, or whitespace inside the name
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


class StoredMsg:
    """One stored message as Direct Get returned it.

    ``headers`` is parsed from the raw header block on first access; :meth:`header` reads one
    header without building the dict (the reader's hot path needs two of the ten).
    """

    __slots__ = ("_headers", "_raw", "data", "seq")

    def __init__(
        self,
        seq: int,
        data: bytes,
        *,
        raw_headers: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.seq = seq
        self.data = data
        self._raw = raw_headers
        self._headers = headers

    @property
    def raw_headers(self) -> bytes:
        """The header block as received (empty when the message came parsed by nats-py)."""
        return self._raw

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = parse_headers(self._raw) if self._raw else {}
        return self._headers

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (stripped), or ``None``; first occurrence if repeated."""
        if self._headers is not None:
            return self._headers.get(name)
        m = _header_re(name).search(self._raw)
        return None if m is None else m.group(1).strip().decode("utf-8", "replace")

    def __repr__(self) -> str:
        return f"StoredMsg(seq={self.seq}, headers={self.headers!r}, data={self.data!r})"


RawHandler = Callable[[bytes, "bytes | None", bytes], None]
"""An inline handler: (subject, raw header block or None, payload), called in the read loop."""

_routes: weakref.WeakKeyDictionary[NATS, dict[int, RawHandler]] = weakref.WeakKeyDictionary()


class _Done:
    """An awaitable already complete: what the wrapped ``_process_msg`` returns when it handled
    a message inline (nats-py's parser awaits the result)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_DONE: Final = _Done()


def _raw_routes(nc: NATS) -> dict[int, RawHandler] | None:
    """The connection's inline routes (subscription id -> handler), installed on first use.

    nats-py's parser calls ``await nc._process_msg(sid, subject, reply, data, headers)`` for
    every message, *before* it parses headers or builds a ``Msg``. The wrapper hands a message
    whose sid has a route to its handler (counting it in ``nc.stats`` as nats-py would) and
    passes every other message to nats-py's method untouched (the same coroutine, no extra
    frame). Returns ``None`` when this nats-py has no such method: callers then keep nats-py's
    own path.
    """
    routes = _routes.get(nc)
    if routes is not None:
        return routes
    original = getattr(nc, "_process_msg", None)
    if original is None or not inspect.iscoroutinefunction(original):
        return None
    if list(inspect.signature(original).parameters) != [
        "sid",
        "subject",
        "reply",
        "data",
        "headers",
    ]:
        return None
    table: dict[int, RawHandler] = {}
    stats: dict[str, int] = nc.stats

    def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> Awaitable[None]:
        handler = table.get(sid)
        if handler is None:
            result: Awaitable[None] = original(sid, subject, reply, data, headers)
            return result
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, headers, data)
        return _DONE

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    _routes[nc] = table
    return table


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
        self._raw: dict[int, RawHandler] | None = None  # the connection's routes, if ours is in
        self._closed = False

    @property
    def raw(self) -> bool:
        """Whether replies take the inline path (:func:`_raw_routes`) rather than nats-py's."""
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
        routes = _raw_routes(self._nc) if self._inline else None
        if routes is not None:
            routes[sub._id] = self._on_raw
            self._raw = routes
        self._sub = sub
        starting.set_result(None)

    def _on_raw(self, subject: bytes, headers: bytes | None, data: bytes) -> None:
        """One reply, inline in nats-py's read loop, from its raw bytes: parse as little as
        possible and never raise into the read loop."""
        pending = self._pending.get(subject[self._plen :].decode("ascii", "replace"))
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
        """One reply through nats-py's subscription (when the inline path is unavailable)."""
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
            pending.msgs.append(StoredMsg(int(seq), msg.data, headers=headers))
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
        max_bytes: int | None = None,
    ) -> tuple[list[StoredMsg], int]:
        """See :func:`direct_get_batch`; ``owner`` tags the request for :meth:`fail_owned`.

        ``max_bytes`` caps the batch's payload bytes as the server counts them (it always
        answers with at least one message); the rest counts as pending.
        """
        body: dict[str, Any] = {"seq": max(start_seq, 1), "next_by_subj": subject, "batch": batch}
        if max_bytes is not None:
            body["max_bytes"] = max_bytes
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
        if sub is not None and self._raw is not None:
            self._raw.pop(sub._id, None)
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
