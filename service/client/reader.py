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

A lost *terminal* event is revealed by no later live message, so a job whose live subject has
been quiet for an ``idle_check`` interval (jittered) is checked: one of its waiting readers asks
for the subject's last seq, for all of them (one timer and one Direct Get per job and interval
in a hub, however many readers wait; each reader behind that seq re-reads from its cursor).
After a reconnect every reader
re-reads from its cursor: the connection's owner calls :meth:`LiveHub.on_reconnected` from its
``reconnected_cb``, and the hub also notices the connection's reconnect counter change on the
next live message or idle check.

Where the pieces are: this module is the hub (:class:`LiveHub`, one per connection, and
:func:`read_all`); one reader's state machine is ``service/client/jobreader.py``; the event it
hands out and its errors are ``service/client/readevent.py`` (all re-exported here). History
comes from ``service/nats/directget.py``, outages are ridden out under
``service/nats/outage.py``, and events of a job whose actor runs in this process come through
``service/nats/localtap.py``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import headers as hdr
from service.client.jobreader import Reader
from service.client.readevent import HubClosed, ReaderError, ReadEvent, live_event, stored_event
from service.config import Settings
from service.nats import compat
from service.nats.directget import DirectGetClient, client_for, transient
from service.nats.localtap import tap_for
from service.nats.outage import OutagePolicy, retry
from service.nats.stored import StoredMsg

__all__ = ["HubClosed", "LiveHub", "ReadEvent", "Reader", "ReaderError", "read_all"]

log = logging.getLogger("genjobs.reader")

_ID_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
_T = TypeVar("_T")

PresenceCallback = Callable[[str], Awaitable[None]]


class _Feed:
    """The one live subscription of a job in a hub, fanned out to the job's readers.

    It also owns the job's one idle timer: however many readers wait on the job, one Direct
    Get per idle interval asks for its last seq (see :meth:`_on_idle`).
    """

    __slots__ = ("hub", "job_id", "live", "local", "readers", "seen", "sub", "timer")

    def __init__(self, hub: LiveHub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.readers: set[Reader] = set()
        self.sub: Subscription | None = None
        self.local = False  # fed by the job's actor in this process (service/nats/localtap.py)
        self.live = 0  # live messages so far; ``seen``: as the idle timer last saw it
        self.seen = 0
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.hub._idle_delay(), self._on_idle)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_idle(self) -> None:
        """An idle interval passed. If no live message came in it, one waiting reader is woken
        to ask for the job's last seq, for all of them (:meth:`LiveHub._check_tail`); the
        others sleep on. A lost event is found within one to two intervals."""
        self.arm()
        if self.live != self.seen:
            self.seen = self.live
            return
        for reader in self.readers:
            if reader._wake_to_check():
                return

    def on_local(self, seq: int, prev: int, kind: str, index: int, data: bytes) -> None:
        self.live += 1
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
            seq, prev = int(h[hdr.SEQUENCE]), int(h[hdr.LAST_SEQUENCE])
        except (KeyError, ValueError):
            log.warning("ignoring a live message without sequence headers on %s", msg.subject)
            return
        self.hub._check_reconnects()
        self.live += 1
        item = (live_event(seq, h, msg.data), prev)  # one object for all readers of the job
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
        self._outage = OutagePolicy.from_settings(settings)
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
        return None if last is None else stored_event(last)

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
        feed.arm()
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
            feed.disarm()
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
        feed.disarm()
        if feed.local:
            self._tap.detach(self._s.live_subject(feed.job_id), feed)
            feed.local = False
        sub, feed.sub = feed.sub, None
        if sub is None or self._nc.is_closed or self._nc.is_draining:
            return None  # the connection removes its subscriptions itself
        await sub.unsubscribe()
        return compat.subscription_task(sub)

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

    async def _check_tail(self, job_id: str) -> None:
        """The idle check of a job (one per job and quiet interval, see :meth:`_Feed._on_idle`):
        its last stored seq, asked once; every reader of the job that waits behind it
        re-reads from its cursor (a live message, the terminal event above all, was lost)."""
        last = await self._last_msg(job_id)
        seq = 0 if last is None else last.seq
        feed = self._feeds.get(job_id)
        if feed is not None:
            for reader in feed.readers:
                reader._behind(seq)

    async def _last_msg(self, job_id: str) -> StoredMsg | None:
        subject = self._s.events_subject(job_id)
        return await self._ride_out(
            job_id,
            lambda: self._dg.last_msg(
                self._s.stream_name, subject, self._s.request_timeout, owner=self
            ),
        )

    async def _ride_out(self, job_id: str, request: Callable[[], Awaitable[_T]]) -> _T:
        """``request()`` retried through an outage under the outage policy, as a job's
        publishes are (``service/nats/outage.py``): a reader waits out the same outage its
        job's producer waits out.

        A timeout (server away, reconnecting) and a 503 (no responders: the stream has no
        leader during an election or a lost quorum, or is missing) are retried until the
        budget is spent, then raised; after a 503 the retry backs off, a timeout has waited
        already. A closed hub or connection ends the wait at once.

        Raises:
            HubClosed: the hub is (or gets) closed.
            DirectGetError: still failing when the budget was spent (:class:`ReplayTimeout`
                for a timeout); one that is not transient at once.
        """

        async def attempt() -> _T:
            if self._closed:
                # close() fails only the requests already out; one sent now, on a connection
                # that is closing, would be waited out for request_timeout.
                raise HubClosed("hub closed", "", 0)  # re-raised per reader
            return await request()

        return await retry(
            attempt,
            self._outage,
            what=f"replay of job {job_id}",
            transient=transient,
            stopped=lambda: self._closed or self._nc.is_closed,
            sleep=self._pause,
        )

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
