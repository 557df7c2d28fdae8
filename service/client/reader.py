"""Readers of a job's events: replay from the stream, then follow live, exactly once, in order.

No JetStream consumer per reader: an ordered consumer costs the client a polling and a heartbeat
task (docs/nats-py.md: ~38 % of a core at 3,000). The stream republishes every stored event on the
core subject ``<prefix>.live.<job_id>`` with ``Nats-Sequence`` and ``Nats-Last-Sequence`` (the
previous seq on the same subject), so a reader needs one core subscription per job and process
(shared by all its readers here, with a ``cb=`` callback) plus Direct Get batches for history.

One rule makes it exactly-once: a live event is accepted only if its ``Nats-Last-Sequence`` is
the reader's cursor (the seq of the last event it accepted); older ones are duplicates; anything
else means something is missing here, and the reader re-reads the stream from its cursor. Every
kind of loss (a dropped core message, a reconnect, a reader starting beyond the end, a reader
too slow to keep its queue) goes through that one path.

Slow readers ("catch-up mode", chosen over failing them with an error): a reader holds at most
``settings.reader_queue`` events. When one that stopped reading would exceed that, its queued
live events are dropped and it re-reads from its cursor when it reads again. Nothing is lost
(the dropped events are in the stream) and nothing new has to be handled by callers; memory stays
bounded however long a reader sleeps.

A lost *terminal* event is revealed by no later live message, so a reader that has waited
``idle_check`` seconds (jittered) asks for the subject's last seq. After a reconnect every reader
re-reads from its cursor: the connection's owner calls :meth:`LiveHub.on_reconnected` from its
``reconnected_cb``, and the hub also notices the connection's reconnect counter change on the
next live message or idle check.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from service.config import Settings
from service.nats.directget import (
    DirectGetClient,
    DirectGetError,
    ReplayTimeout,
    StoredMsg,
    client_for,
)
from service.nats.localtap import tap_for
from service.nats.publisher import BACKOFF_FIRST, BACKOFF_MAX

log = logging.getLogger("genjobs.reader")

TERMINAL_KINDS: Final = frozenset({"final", "error"})
_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_UNSET: Final[Any] = object()
_T = TypeVar("_T")

PresenceCallback = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class ReadEvent:
    """One event. Shared by all readers of the job in this process, so treat it as read-only;
    ``event`` decodes JSON on first access only (a gateway forwarding ``data`` never does)."""

    seq: int
    index: int
    kind: str
    data: bytes
    _event: Any = field(default=_UNSET, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    @property
    def event(self) -> dict[str, Any] | None:
        """The payload as a dict; ``None`` if it is not a JSON object.

        Raises:
            msgspec.DecodeError: the payload is not JSON (a producer broke the contract).
        """
        if self._event is _UNSET:
            value = msgspec.json.decode(self.data) if self.data else None
            self._event = value if isinstance(value, dict) else None
        result: dict[str, Any] | None = self._event
        return result


def _make_event(seq: int, headers: dict[str, str], data: bytes) -> ReadEvent:
    index = headers.get("Genjobs-Index", "")
    kind = headers.get("Genjobs-Kind", "")
    return ReadEvent(seq, int(index) if index.isdigit() else -1, kind, data)


# Genjobs stores its own headers first, kind then index (service/store.py), so one match at
# the start of the raw header block reads both; any other layout takes the general path.
_LEADING_RE: Final = re.compile(
    rb"NATS/1\.0\r\nGenjobs-Kind: ([^\r\n]*)\r\nGenjobs-Index: ([0-9]+)\r\n"
)


def _stored_event(m: StoredMsg) -> ReadEvent:
    """The event of a replayed message, reading only the two headers it needs."""
    lead = _LEADING_RE.match(m.raw_headers)
    if lead is not None:
        kind = lead.group(1).strip().decode("utf-8", "replace")
        return ReadEvent(m.seq, int(lead.group(2)), kind, m.data)
    index = m.header("Genjobs-Index") or ""
    return ReadEvent(
        m.seq, int(index) if index.isdigit() else -1, m.header("Genjobs-Kind") or "", m.data
    )


class ReaderError(RuntimeError):
    """A reader ended before its job's terminal event; resume from ``last_seq``."""

    def __init__(self, message: str, job_id: str, last_seq: int) -> None:
        super().__init__(f"{message} (job {job_id}, resume after seq {last_seq})")
        self.job_id = job_id
        self.last_seq = last_seq


class HubClosed(ReaderError):
    """The hub was closed (shutdown) while the reader was open."""


def _wake(fut: asyncio.Future[bool] | None, woke: bool) -> None:
    if fut is not None and not fut.done():
        fut.set_result(woke)


class Reader:
    """One reader of one job: ``async with hub.subscribe(job) as r: async for ev in r: ...``.

    Every decision is taken in the reading task (:meth:`__anext__`); the live callback only
    appends to a bounded deque and wakes it, so a reader has no task of its own.
    """

    def __init__(self, hub: LiveHub, job_id: str, after_seq: int) -> None:
        self.job_id = job_id
        self.last_seq = after_seq  # the last seq handed out: where a resume continues
        self.catchups = 0  # how often queued live events were dropped (the reader fell behind)
        self._hub = hub
        self._cursor = after_seq  # the last seq accepted (handed out or in _ready)
        self._ready: deque[ReadEvent] = deque()  # accepted from the stream, not handed out
        self._inbox: deque[tuple[ReadEvent, int]] = deque()  # live: (event, previous seq)
        self._want = 1  # a re-read is due while _want != _have; the first one is the replay
        self._have = 0
        self._ended = False  # the terminal event was accepted
        self._joined = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[bool] | None = None
        # One idle timer, re-armed lazily: a timer created and cancelled on every wait cost
        # more than the rest of the live path at thousands of deliveries per second.
        self._idle_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @property
    def buffered(self) -> int:
        """Events held for this reader: at most ``settings.reader_queue``."""
        return len(self._ready) + len(self._inbox)

    async def __aenter__(self) -> Reader:
        await self._hub._join(self)
        self._joined = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._joined = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inbox.clear()
        self._ready.clear()
        await self._hub._leave(self)

    def __aiter__(self) -> Reader:
        return self

    async def __anext__(self) -> ReadEvent:
        """The next event; the iteration ends after the terminal event.

        Raises:
            HubClosed: the hub was closed.
            ReaderError: the job's live subscription could not be made.
            ReplayTimeout: the stream did not answer for ``publish_outage_budget`` seconds.
            DirectGetError: the stream is missing or refuses Direct Get.
            nats.errors.ConnectionClosedError: the connection was closed.
            RuntimeError: used outside ``async with``.
        """
        ready = self._ready
        if ready and self._error is None and self._joined:  # the replay's fast path
            ev = ready.popleft()
            self.last_seq = ev.seq
            return ev
        if not self._joined:
            raise RuntimeError("read a job inside `async with hub.subscribe(job_id)`")
        try:
            return await self._next()
        except HubClosed as e:
            if e.job_id == self.job_id:
                raise
            # A replay request the closing hub failed: say where *this* reader resumes.
            raise HubClosed("hub closed", self.job_id, self.last_seq) from None

    async def _next(self) -> ReadEvent:
        while True:
            if self._error is not None:
                raise self._error
            if self._ready:
                return self._hand_out(self._ready.popleft())
            if self._ended:
                raise StopAsyncIteration
            if self._hub._needs_sub:
                # Subscribe before the re-read that _resync asked for: nothing falls between.
                await self._hub._ensure_live(self.job_id)
            if self._want != self._have:
                await self._fetch()
                continue
            inbox = self._inbox
            while inbox:
                ev, prev = inbox.popleft()
                if ev.seq <= self._cursor:
                    continue  # already read from the stream
                if prev != self._cursor:
                    self._want += 1  # a gap: re-read from the cursor
                    break
                self._accept(ev)
                return self._hand_out(ev)
            else:
                await self._wait()

    def _accept(self, ev: ReadEvent) -> None:
        self._cursor = ev.seq
        if ev.kind in TERMINAL_KINDS:
            self._ended = True
            self._inbox.clear()

    def _hand_out(self, ev: ReadEvent) -> ReadEvent:
        self.last_seq = ev.seq
        return ev

    def _on_live(self, item: tuple[ReadEvent, int]) -> None:
        if self._ended or self._error is not None:
            return
        if len(self._inbox) + len(self._ready) >= self._hub._limit:
            self._inbox.clear()  # all of it is in the stream: re-read it when reading again
            self._want += 1
            self.catchups += 1
        else:
            self._inbox.append(item)
        _wake(self._waiter, True)

    def _resync(self) -> None:
        self._want += 1
        _wake(self._waiter, True)

    def _fail(self, error: BaseException) -> None:
        self._error = error
        _wake(self._waiter, True)

    async def _fetch(self) -> None:
        """One Direct Get batch from the cursor; the re-read is complete once nothing is pending."""
        want = self._want
        # Everything queued live is already stored, so this re-read (and its next rounds) covers it.
        self._inbox.clear()
        msgs, pending = await self._hub._fetch(self.job_id, self._cursor + 1)
        for m in msgs:
            if m.seq > self._cursor and not self._ended:
                ev = _stored_event(m)
                self._ready.append(ev)
                self._accept(ev)
        if not msgs and self._have == 0 and self._cursor > 0:
            await self._check_resumed_after_end()
        if self._ended or (pending == 0 and self._want == want):
            self._have = self._want
        if len(self._inbox) + len(self._ready) > self._hub._limit:
            self._inbox.clear()
            self._want += 1

    async def _check_resumed_after_end(self) -> None:
        """A reader resuming right after the terminal event ends at once instead of waiting."""
        last = await self._hub._last_msg(self.job_id)
        if last is not None and last.seq == self._cursor:
            self._ended = last.header("Genjobs-Kind") in TERMINAL_KINDS

    async def _wait(self) -> None:
        """Wait for a live message, or until ``idle_check`` seconds passed without any."""
        loop = asyncio.get_running_loop()
        if self._idle_at == 0.0:
            self._idle_at = loop.time() + self._hub._idle_delay()
        if self._timer is None:
            self._timer = loop.call_at(self._idle_at, self._on_timer)
        self._waiter = loop.create_future()
        try:
            woke = await self._waiter
        finally:
            self._waiter = None
        if not woke:
            await self._idle_check()
        self._idle_at = loop.time() + self._hub._idle_delay()

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None:
            return  # not waiting: the next wait arms the timer again
        loop = asyncio.get_running_loop()
        if loop.time() < self._idle_at:
            self._timer = loop.call_at(self._idle_at, self._on_timer)
        else:
            _wake(self._waiter, False)

    async def _idle_check(self) -> None:
        """Nothing came for a while: make sure nothing (the terminal event above all) was lost."""
        self._hub._check_reconnects()
        if self._want != self._have:
            return
        try:
            last = await self._hub._last_msg(self.job_id)
        except ReplayTimeout as e:
            log.warning("idle check of job %s failed, next one later: %s", self.job_id, e)
            return
        if last is not None and last.seq > self._cursor:
            self._want += 1


class _Feed:
    """The one live subscription of a job in a hub, fanned out to the job's readers."""

    __slots__ = ("hub", "job_id", "local", "readers", "sub")

    def __init__(self, hub: LiveHub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.readers: set[Reader] = set()
        self.sub: Subscription | None = None
        self.local = False  # fed by the job's actor in this process (service/localtap.py)

    def on_local(self, seq: int, prev: int, kind: str, index: int, data: bytes) -> None:
        item = (ReadEvent(seq, index, kind, data), prev)
        for reader in self.readers:
            reader._on_live(item)

    def owner_gone(self) -> None:
        """The local actor ended: subscribe to the live subject, then re-read (see Reader)."""
        self.local = False
        self.hub._needs_sub.add(self.job_id)
        for reader in self.readers:
            reader._resync()

    async def on_msg(self, msg: Msg) -> None:
        h: dict[str, str] = msg.headers or {}
        try:
            seq, prev = int(h["Nats-Sequence"]), int(h["Nats-Last-Sequence"])
        except (KeyError, ValueError):
            log.warning("ignoring a live message without sequence headers on %s", msg.subject)
            return
        self.hub._check_reconnects()
        item = (_make_event(seq, h, msg.data), prev)  # one object for all readers of the job
        for reader in self.readers:
            reader._on_live(item)


class LiveHub:
    """All readers of one connection: one live subscription per job, shared and ref-counted.

    ``on_first_reader(job_id)`` / ``on_last_reader_left(job_id)`` are awaited when a job gets
    its first reader in this hub / loses its last one (presence, docs/protocol.md, presence); their errors
    are logged and never reach readers.
    """

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        *,
        on_first_reader: PresenceCallback | None = None,
        on_last_reader_left: PresenceCallback | None = None,
        idle_check: float = 10.0,
        replay_batch: int = 1000,
        dg: DirectGetClient | None = None,
    ) -> None:
        self._nc = nc
        self._s = settings
        self._on_first = on_first_reader
        self._on_last = on_last_reader_left
        self._idle = idle_check
        self._limit = max(1, settings.reader_queue)
        self._batch = max(1, min(replay_batch, self._limit))
        self._dg = dg or client_for(nc)
        self._feeds: dict[str, _Feed] = {}
        self._tap = tap_for(nc)
        self._needs_sub: set[str] = set()  # jobs whose local actor ended: subscribe to NATS
        self._reconnects: int = nc.stats["reconnects"]
        self._closed = False
        self._closing: asyncio.Future[None] | None = None  # resolved by close(): ends a pause

    def subscribe(self, job_id: str, after_seq: int = 0) -> Reader:
        """A reader of every event of ``job_id`` with seq > ``after_seq``; enter it to start.

        Raises:
            ValueError: ``job_id`` is not a safe identifier or ``after_seq`` is negative.
        """
        if not _ID_RE.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id[:40]!r}")
        if after_seq < 0:
            raise ValueError(f"after_seq must be >= 0, got {after_seq}")
        return Reader(self, job_id, after_seq)

    async def last_event(self, job_id: str) -> ReadEvent | None:
        """The job's last stored event (its terminal one once the job ended), or ``None``.

        A gateway uses it to tell a client that resumes after the terminal event that nothing
        more will come. It rides out an outage as a replay does.

        Raises:
            ValueError: ``job_id`` is not a safe identifier.
            HubClosed, ReplayTimeout, DirectGetError: see :meth:`_ride_out`.
        """
        if not _ID_RE.fullmatch(job_id):
            raise ValueError(f"invalid job id {job_id[:40]!r}")
        last = await self._last_msg(job_id)
        return None if last is None else _stored_event(last)

    def watchers(self, job_id: str) -> int:
        """How many readers of ``job_id`` are open in this hub."""
        feed = self._feeds.get(job_id)
        return len(feed.readers) if feed else 0

    def buffered(self) -> int:
        """Events held for all readers together."""
        return sum(r.buffered for feed in self._feeds.values() for r in feed.readers)

    def subscriptions(self) -> int:
        """Live subscriptions held: one per job with readers."""
        return sum(1 for feed in self._feeds.values() if feed.sub is not None)

    def on_reconnected(self) -> None:
        """Make every reader re-read from its cursor: call it from the ``reconnected_cb``."""
        self._reconnects = self._nc.stats["reconnects"]
        for feed in self._feeds.values():
            for reader in feed.readers:
                reader._resync()

    def _check_reconnects(self) -> None:
        if self._nc.stats["reconnects"] != self._reconnects:
            log.info("connection reconnected: %d jobs re-read from their cursors", len(self._feeds))
            self.on_reconnected()

    def _idle_delay(self) -> float:
        return self._idle * (0.75 + 0.5 * random.random())

    async def _join(self, reader: Reader) -> None:
        job_id = reader.job_id
        if self._closed:
            raise HubClosed("hub is closed", job_id, reader.last_seq)
        feed = self._feeds.get(job_id)
        if feed is not None:
            # Its SUB is sent or queued already (nats-py queues it before its first await), so
            # this reader's Direct Get goes out after it: nothing can fall in between.
            feed.readers.add(reader)
            return
        feed = self._feeds[job_id] = _Feed(self, job_id)
        feed.readers.add(reader)
        if self._tap.attach(self._s.live_subject(job_id), feed):
            feed.local = True  # the job's actor runs on this connection: no NATS round trip
            if self._on_first is not None:
                await self._presence(self._on_first, job_id)
            return
        try:
            sub = await self._nc.subscribe(self._s.live_subject(job_id), cb=feed.on_msg)
            if self._feeds.get(job_id) is not feed:  # close() ran meanwhile
                await sub.unsubscribe()
                raise HubClosed("hub closed", job_id, reader.last_seq)
            feed.sub = sub
        except BaseException as e:
            if self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
            for other in feed.readers - {reader}:
                err = ReaderError("live subscription failed", job_id, other.last_seq)
                err.__cause__ = e
                other._fail(err)
            raise
        if self._on_first is not None:
            await self._presence(self._on_first, job_id)

    async def _leave(self, reader: Reader) -> None:
        feed = self._feeds.get(reader.job_id)
        if feed is None or reader not in feed.readers:
            return
        feed.readers.discard(reader)
        if not feed.readers:
            del self._feeds[reader.job_id]
            await self._stop(feed)
            if self._on_last is not None:
                await self._presence(self._on_last, reader.job_id)

    async def _ensure_live(self, job_id: str) -> None:
        """Give a feed whose local actor ended its NATS live subscription."""
        self._needs_sub.discard(job_id)
        feed = self._feeds.get(job_id)
        if feed is None or feed.local or feed.sub is not None:
            return
        feed.sub = await self._nc.subscribe(self._s.live_subject(job_id), cb=feed.on_msg)

    async def _stop(self, feed: _Feed) -> asyncio.Task[None] | None:
        """Unsubscribe; returns the (now cancelling) task nats-py ran for the subscription."""
        if feed.local:
            self._tap.detach(self._s.live_subject(feed.job_id), feed)
            feed.local = False
        sub, feed.sub = feed.sub, None
        if sub is None or self._nc.is_closed or self._nc.is_draining:
            return None  # the connection removes its subscriptions itself
        await sub.unsubscribe()
        task: asyncio.Task[None] | None = getattr(sub, "_wait_for_msgs_task", None)
        return task

    async def _presence(self, cb: PresenceCallback, job_id: str) -> None:
        try:
            await cb(job_id)
        except Exception:
            log.exception("presence callback %r failed for job %s", cb, job_id)

    async def _fetch(self, job_id: str, start: int) -> tuple[list[StoredMsg], int]:
        """One replay batch, riding out an outage (see :meth:`_ride_out`)."""
        subject = self._s.events_subject(job_id)
        return await self._ride_out(
            job_id,
            lambda: self._dg.get_batch(
                self._s.stream_name,
                subject,
                start,
                self._batch,
                self._s.request_timeout,
                owner=self,
            ),
        )

    async def _last_msg(self, job_id: str) -> StoredMsg | None:
        subject = self._s.events_subject(job_id)
        return await self._ride_out(
            job_id,
            lambda: self._dg.last_msg(
                self._s.stream_name, subject, self._s.request_timeout, owner=self
            ),
        )

    async def _ride_out(self, job_id: str, request: Callable[[], Awaitable[_T]]) -> _T:
        """``request()`` retried through an outage, as a job's publishes are.

        A timeout (server away, reconnecting) and a 503 (no responders: the stream has no
        leader during an election or a lost quorum, or is missing) are retried until
        ``publish_outage_budget`` seconds have passed since the first failure, then raised: a
        reader waits out the same outage its job's producer waits out. After a 503 the retry
        backs off as a publish does (``BACKOFF_FIRST`` doubling to ``BACKOFF_MAX``); a timeout
        has waited already. A closed hub or
        connection ends the wait at once.

        Raises:
            HubClosed: the hub is (or gets) closed.
            ReplayTimeout, DirectGetError: still failing when the budget was spent; a
                DirectGetError other than 503 at once.
        """
        loop = asyncio.get_running_loop()
        first_failure: float | None = None
        backoff = BACKOFF_FIRST
        while True:
            if self._closed:
                # close() fails only the requests already out; one sent now, on a connection
                # that is closing, would be waited out for request_timeout.
                raise HubClosed("hub closed", "", 0)  # re-raised per reader
            try:
                return await request()
            except (ReplayTimeout, DirectGetError) as e:
                if isinstance(e, DirectGetError) and e.status != "503":
                    raise
                if self._closed or self._nc.is_closed:
                    raise
                now = loop.time()
                first_failure = now if first_failure is None else first_failure
                spent = now - first_failure
                if spent >= self._s.publish_outage_budget:
                    raise
                log.warning(
                    "replay of job %s failed (%.1f s into the outage), retrying: %s",
                    job_id,
                    spent,
                    e,
                )
                if isinstance(e, DirectGetError):
                    pause = min(backoff, self._s.publish_outage_budget - spent)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    await self._pause(pause)

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the hub is closed meanwhile."""
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_future()
        await asyncio.wait([self._closing], timeout=seconds)

    async def close(self) -> None:
        """End every open reader with :class:`HubClosed` and drop every live subscription.

        A waiting reader ends at once, and so does one in the middle of a replay request (its
        request is failed, not waited out). ``on_last_reader_left`` is awaited for each job
        that had readers.
        """
        if self._closed:
            return
        self._closed = True
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)
        self._dg.fail_owned(self, HubClosed("hub closed", "", 0))  # re-raised per reader
        feeds = list(self._feeds.values())
        self._feeds.clear()
        stopping = set()
        for feed in feeds:
            for reader in feed.readers:
                reader._fail(HubClosed("hub closed", reader.job_id, reader.last_seq))
            feed.readers.clear()
            task = await self._stop(feed)
            if task is not None and task is not asyncio.current_task():
                stopping.add(task)
            if self._on_last is not None:
                await self._presence(self._on_last, feed.job_id)
        if stopping:
            # nats-py only cancels its per-subscription tasks: wait so that nothing started
            # for this hub is still running when close() returns.
            await asyncio.wait(stopping, timeout=1.0)

    async def __aenter__(self) -> LiveHub:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def read_all(
    hub: LiveHub, job_id: str, after_seq: int = 0, timeout: float = 10.0
) -> list[ReadEvent]:
    """Every event of ``job_id`` after ``after_seq``, up to and including the terminal one.

    Raises:
        TimeoutError: the terminal event did not come within ``timeout``.
        HubClosed, ReaderError, ReplayTimeout, DirectGetError, ValueError: see
            :meth:`Reader.__anext__` and :meth:`LiveHub.subscribe`.
    """
    async with asyncio.timeout(timeout), hub.subscribe(job_id, after_seq) as reader:
        return [ev async for ev in reader]
