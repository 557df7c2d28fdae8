"""One reader of one job: the exactly-once, in-order state machine (see ``service/client/reader.py``
for the rules and the :class:`~service.client.reader.LiveHub` that owns readers).

Every decision is taken in the reading task; the live callback only appends to a bounded deque
and wakes it, so a reader has no task of its own. What the reader needs from its hub is the
:class:`Hub` protocol below (the hub module imports this one, never the other way round).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol

from schemas import headers as hdr
from service.client.readevent import TERMINAL_KINDS, HubClosed, ReadEvent, stored_event
from service.nats.directget import ReplayTimeout
from service.nats.stored import StoredMsg

log = logging.getLogger("genjobs.reader")


class Hub(Protocol):
    """The side of a :class:`~service.client.reader.LiveHub` its readers use."""

    _limit: int
    _needs_sub: set[str]

    async def _join(self, reader: Reader) -> None: ...

    async def _leave(self, reader: Reader) -> None: ...

    async def _ensure_live(self, job_id: str) -> None: ...

    async def _fetch(self, job_id: str, start: int) -> tuple[list[StoredMsg], int]: ...

    async def _last_msg(self, job_id: str) -> StoredMsg | None: ...

    async def _check_tail(self, job_id: str) -> None: ...

    def _check_reconnects(self) -> None: ...


def _wake(fut: asyncio.Future[bool] | None, woke: bool) -> None:
    if fut is not None and not fut.done():
        fut.set_result(woke)


class Reader:
    """One reader of one job: ``async with hub.subscribe(job) as r: async for ev in r: ...``.

    Every decision is taken in the reading task (:meth:`__anext__`); the live callback only
    appends to a bounded deque and wakes it, so a reader has no task of its own, nor a timer:
    the job's feed in the hub keeps one idle timer for all its readers.
    """

    __slots__ = (
        "_cursor",
        "_ended",
        "_error",
        "_have",
        "_hub",
        "_inbox",
        "_joined",
        "_ready",
        "_waiter",
        "_want",
        "catchups",
        "job_id",
        "last_seq",
    )

    def __init__(self, hub: Hub, job_id: str, after_seq: int) -> None:
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

    @property
    def buffered(self) -> int:
        """Events held for this reader: at most ``settings.reader_queue``."""
        return len(self._ready) + len(self._inbox)

    def ready_now(self) -> bool:
        """Whether the next read returns an event at once, without waiting or any request:
        a gateway writes such events together with the one it holds."""
        if self._error is not None or not self._joined:
            return False
        if self._ready:
            return True
        if self._want != self._have or self._hub._needs_sub:
            return False
        for ev, prev in self._inbox:
            if ev.seq > self._cursor:
                return prev == self._cursor
        return False

    def at_live_edge(self) -> bool:
        """Whether this reader has handed out every event it knows of and no re-read is due:
        the next event is one not received yet (``service/client/fanout.py`` attaches such a
        reader's consumer to the job's shared delivery)."""
        if self._error is not None or not self._joined or self._ended or self._ready:
            return False
        if self._want != self._have or self.job_id in self._hub._needs_sub:
            return False
        return all(ev.seq <= self._cursor for ev, _ in self._inbox)

    async def catch_up(self) -> None:
        """Do the re-reads that are due (the first one is the replay) without waiting for a
        live event: afterwards the reader has events ready, is at the live edge, or has a gap
        to resolve on the next read. Raises: as :meth:`__anext__`."""
        while self._joined and self._error is None and not self._ready and not self._ended:
            if self.job_id in self._hub._needs_sub:
                await self._hub._ensure_live(self.job_id)
            if self._want == self._have:
                return
            await self._fetch()
        if self._error is not None:
            raise self._error

    async def __aenter__(self) -> Reader:
        await self._hub._join(self)
        self._joined = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._joined = False
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
        # What _accept does, inlined: this loop runs once per replayed event.
        ready, cursor, ended = self._ready, self._cursor, self._ended
        for m in msgs:
            if m.seq > cursor and not ended:
                ev = stored_event(m)
                ready.append(ev)
                cursor = ev.seq
                ended = ev.kind in TERMINAL_KINDS
        self._cursor = cursor
        if ended and not self._ended:
            self._ended = True
            self._inbox.clear()
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
            self._ended = last.header(hdr.KIND) in TERMINAL_KINDS

    async def _wait(self) -> None:
        """Wait for a live message, or for the job's idle timer to pick this reader to check."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            woke = await self._waiter
        finally:
            self._waiter = None
        if not woke:
            await self._idle_check()

    def _wake_to_check(self) -> bool:
        """Called by the job's idle timer: wake this reader to do the job's idle check, if it
        waits with nothing pending. Returns whether it will."""
        waiter = self._waiter
        if waiter is None or waiter.done() or self._want != self._have or self._error is not None:
            return False
        waiter.set_result(False)
        return True

    def _behind(self, last_seq: int) -> None:
        """An idle check found ``last_seq`` stored: re-read if that is past what this reader
        has and nothing queued will bring it (a live message was lost)."""
        if (
            last_seq > self._cursor
            and self._want == self._have
            and not self._inbox
            and not self._ended
            and self._error is None
        ):
            self._resync()

    async def _idle_check(self) -> None:
        """Nothing came for a while: make sure nothing (the terminal event above all) was lost.
        One reader of the job does it for all of them (:meth:`_behind`)."""
        self._hub._check_reconnects()
        if self._want != self._have:
            return
        try:
            await self._hub._check_tail(self.job_id)
        except ReplayTimeout as e:
            log.warning("idle check of job %s failed, next one later: %s", self.job_id, e)
