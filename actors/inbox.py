"""The bounded actor inbox: producer events wait for room, control messages never do.

An abort must reach a job whose inbox is full of tokens without waiting behind them, and a
fast producer must be slowed down rather than buffered without bound. So events count against
the capacity and block the producer when it is reached; control messages (abort, complete,
snapshot, metadata) are appended regardless. Both keep their relative order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class InboxClosed(Exception):
    """The actor has ended; nothing more is accepted."""


class Inbox(Generic[T]):
    def __init__(self, capacity: int) -> None:
        self._items: deque[tuple[bool, T]] = deque()
        self._capacity = capacity
        self._events = 0  # items counting against capacity
        self._nonempty = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    async def put_event(self, item: T) -> None:
        """Append an event, waiting while the inbox is at capacity (backpressure).

        Raises:
            InboxClosed: the actor ended before there was room.
        """
        while self._events >= self._capacity and not self._closed:
            self._room.clear()
            await self._room.wait()
        if self._closed:
            raise InboxClosed
        self._items.append((True, item))
        self._events += 1
        self._nonempty.set()

    def put_control(self, item: T) -> None:
        """Append a control message; never blocks.

        Raises:
            InboxClosed: the actor has ended.
        """
        if self._closed:
            raise InboxClosed
        self._items.append((False, item))
        self._nonempty.set()

    def take_all(self) -> list[T]:
        """Everything queued now, in order (possibly empty)."""
        out = [item for _, item in self._items]
        self._items.clear()
        if self._events:
            self._events = 0
            self._room.set()
        self._nonempty.clear()
        return out

    async def wait(self, timeout: float | None) -> bool:
        """Wait until something is queued; False on timeout."""
        if self._items:
            return True
        if timeout is None:
            await self._nonempty.wait()
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._nonempty.wait()
        except TimeoutError:
            return False
        return True

    def close(self) -> list[T]:
        """Refuse further messages; returns what was still queued so callers can be answered."""
        self._closed = True
        self._room.set()
        return self.take_all()
