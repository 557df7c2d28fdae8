"""Wake-ups for Durable Streams readers waiting at the tail (long-poll and SSE).

JetStream republishes every append of ``<prefix>.ds.<inc>`` on the core subject
``<prefix>.dslive.<inc>``. A process keeps one subscription per stream incarnation while at
least one of its readers waits on it, shared by all of them: no consumer, no task per reader.

The wake-up only says "something was stored"; what is read is always read from the stream
(Direct Get), so a lost or duplicated core message can cost latency, never correctness. The
gap rule is subscribe first, then read: a reader enters :meth:`LiveWatchers.watch` *before*
it reads, so an append stored after its read wakes it, and one stored before is in the read.
A wake-up lost for good (a reconnect drops core messages) is covered by the readers' own
timeout: a long-poll re-reads when it ends, an SSE reader at every keep-alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription


class Watch:
    """One reader's wake-up flag: set by every append stored since its last :meth:`wait`."""

    __slots__ = ("_dirty", "_waiter")

    def __init__(self) -> None:
        self._dirty = False
        self._waiter: asyncio.Future[None] | None = None

    def poke(self) -> None:
        self._dirty = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True when something was stored since the last call (at once if it already was),
        False after ``timeout`` seconds without."""
        if not self._dirty:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(max(0.0, timeout)):
                    await self._waiter
            except TimeoutError:
                return False
            finally:
                self._waiter = None
        self._dirty = False
        return True


class _Topic:
    __slots__ = ("ready", "sub", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] | None = None


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
        w = Watch()
        topic.watches.add(w)
        try:
            await self._subscribed(subject, topic)
            yield w
        finally:
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

        async def on_msg(_msg: Msg) -> None:
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
