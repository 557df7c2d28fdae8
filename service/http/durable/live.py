"""Wake-ups for Durable Streams readers waiting at the tail (long-poll and SSE).

JetStream republishes every append of ``<prefix>.ds.<inc>`` on the core subject
``<prefix>.dslive.<inc>``. A process keeps one subscription per stream incarnation while at
least one of its readers waits on it, shared by all of them: no consumer, no task per reader.

The gap rule is subscribe first, then read: a reader enters :meth:`LiveWatchers.watch`
*before* it reads, so an append stored after its read wakes it, and one stored before is in
the read. A woken reader takes the new messages from the live subject itself when they follow
its position without a gap: each republished message carries its sequence and
``Nats-Last-Sequence``, the previous one on the subject, and the topic keeps the last few by
that previous sequence (:meth:`Watch.recent_after`); a thousand readers of one stream then cost
one core message each, not a thousand Direct Gets. Anything else (a gap, a message that fell out
of the window, a fork's first own message) is read from the stream with Direct Get, so a lost
or duplicated core message can cost latency, never correctness. A wake-up lost for good (a
reconnect drops core messages) is covered by the readers' own timeout: a long-poll re-reads
when it ends, an SSE reader at every keep-alive.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import headers as hdr
from service.nats.directget import StoredMsg

RECENT: Final = 256
"""Live messages a topic keeps for readers that are a few messages behind."""


class Watch:
    """One reader's wake-up flag: set by every append stored since its last :meth:`wait`.

    Its timeout is one timer re-armed lazily, not one per wait: a thousand readers woken by
    every append would otherwise create and cancel a thousand timers each time.
    """

    __slots__ = ("_deadline", "_dirty", "_timer", "_topic", "_waiter")

    def __init__(self, topic: _Topic) -> None:
        self._dirty = False
        self._waiter: asyncio.Future[None] | None = None
        self._topic = topic
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def recent_after(self, seq: int, max_bytes: int) -> tuple[list[StoredMsg], bool]:
        """The live messages received here that follow ``seq`` on the subject without a gap
        (up to ``max_bytes``), and whether they reach the newest one received."""
        recent = self._topic.recent
        out: list[StoredMsg] = []
        size = 0
        m = recent.get(seq)
        while m is not None:
            out.append(m)
            size += len(m.data)
            if size >= max_bytes:
                break
            m = recent.get(m.seq)
        return out, bool(out) and out[-1].seq >= self._topic.latest

    def poke(self) -> None:
        self._dirty = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True when something was stored since the last call (at once if it already was),
        False after ``timeout`` seconds without."""
        if not self._dirty:
            loop = asyncio.get_running_loop()
            self._deadline = loop.time() + max(0.0, timeout)
            timer = self._timer
            if timer is not None and timer.when() > self._deadline:
                timer.cancel()
                timer = None
            if timer is None:
                self._timer = loop.call_at(self._deadline, self._on_timer)
            waiter = self._waiter = loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._dirty:
                return False
        self._dirty = False
        return True

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # the wait began later than the timer: re-arm
            self._timer = loop.call_at(self._deadline, self._on_timer)
            return
        waiter.set_result(None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class _Topic:
    __slots__ = ("latest", "ready", "recent", "sub", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] | None = None
        self.recent: OrderedDict[int, StoredMsg] = OrderedDict()  # by previous sequence
        self.latest = 0

    def add(self, msg: Msg) -> None:
        headers = msg.headers or {}
        seq, prev = headers.get(hdr.SEQUENCE), headers.get(hdr.LAST_SEQUENCE)
        if seq is None or prev is None:
            return
        m = StoredMsg(int(seq), msg.data, headers=headers)
        self.recent[int(prev)] = m
        if len(self.recent) > RECENT:
            self.recent.popitem(last=False)
        self.latest = max(self.latest, m.seq)


class LiveWatchers:
    """Per process: the live subscriptions of the streams somebody waits on."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._topics: dict[str, _Topic] = {}
        self._closed = False

    @property
    def subscriptions(self) -> int:
        return sum(1 for t in self._topics.values() if t.sub is not None)

    @asynccontextmanager
    async def watch(self, subject: str) -> AsyncIterator[Watch]:
        """Wake-ups from the live subject ``subject`` while inside; subscribed on entry.

        Raises:
            RuntimeError: the watchers are closed (the gateway is stopping).
        """
        if self._closed:
            raise RuntimeError("live watchers closed")
        topic = self._topics.get(subject)
        if topic is None:
            topic = self._topics[subject] = _Topic()
        w = Watch(topic)
        topic.watches.add(w)
        try:
            await self._subscribed(subject, topic)
            yield w
        finally:
            w.close()
            topic.watches.discard(w)
            if not topic.watches and self._topics.get(subject) is topic:
                del self._topics[subject]
                if topic.sub is not None and not self._nc.is_closed:
                    await topic.sub.unsubscribe()
                topic.sub = None

    async def _subscribed(self, subject: str, topic: _Topic) -> None:
        if topic.sub is not None:
            return
        if topic.ready is not None:
            await asyncio.shield(topic.ready)
            return
        ready = topic.ready = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            topic.add(msg)
            for w in tuple(topic.watches):
                w.poke()

        try:
            topic.sub = await self._nc.subscribe(subject, cb=on_msg)
        except BaseException as e:
            topic.ready = None
            ready.set_exception(e if isinstance(e, Exception) else RuntimeError("interrupted"))
            ready.exception()  # retrieved: concurrent waiters re-raise it
            raise
        ready.set_result(None)

    @property
    def closing(self) -> bool:
        return self._closed

    def begin_close(self) -> None:
        """No new watches; every waiting reader wakes now and sees :attr:`closing`."""
        self._closed = True
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every waiting reader (shutdown: they see nothing new and finish)."""
        for topic in self._topics.values():
            for w in topic.watches:
                w.poke()

    async def close(self) -> None:
        self._closed = True
        self.wake_all()
        for topic in list(self._topics.values()):
            if topic.sub is not None and not self._nc.is_closed:
                await topic.sub.unsubscribe()
            topic.sub = None
        self._topics.clear()
