"""One live delivery per job and process: many sinks at the live edge share one reader.

A gateway with thousands of connections on a few hundred jobs would otherwise run one
:class:`~service.client.reader.Reader` per connection: every event wakes one task per
connection and is encoded once per connection. Here the connections of a job that are at its
live edge are *attached* to the job's one :class:`_Group`: its reader's task takes each event
(or every event that is ready at once) once, encodes it once (``encode``, the sink's wire
format) and pushes the same payload to every attached sink, synchronously: no task per
connection wakes for an event.

A sink that resumes from further back (a reconnect after ``Last-Event-ID``, a snapshot resume)
catches up on its own with the SDK's replay (a private reader from its position) and attaches
when that reader is at the live edge, where the shared cursor is:

- no group yet: its private reader *becomes* the job's shared one (no second replay);
- the group's cursor is its position: attached at once;
- the group is behind it (it read a live event the group has not taken yet): it waits, attached
  by the group when the group takes the first event after its position;
- the group is ahead of it: it keeps reading privately (the events in between exist).

All of it runs on one event loop and an attach is one synchronous step, so every event reaches
each sink exactly once, in order, with no gap: before attaching a sink holds every event up to
its position; after, it gets every event the group takes after that position.

A sink that cannot take a payload now (:meth:`Sink.push` returns False: its client does not
read, or it is gone) is detached at the group's cursor and continues privately from there, where
the sink's own (waiting, bounded) write rule applies; it attaches again once it is caught up.
The terminal event is pushed to every attached sink like any other, then their
:meth:`LiveFanout.follow` returns ``True``. A failing shared reader (hub closed, outage past
the budget) fails every attached sink with its error. The last sink leaving a job ends its
group and releases its reader.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Final, Generic, Protocol, TypeVar

from service.client.jobreader import Reader
from service.client.reader import LiveHub
from service.client.readevent import ReadEvent

log = logging.getLogger("genjobs.fanout")

P = TypeVar("P")
P_contra = TypeVar("P_contra", contravariant=True)

MAX_BATCH: Final = 256
"""Events taken at once at most (a reader catching up can have many waiting)."""
BATCH_BYTES: Final = 65536
"""Payload bytes taken at once at most, by default (a batch never jumps a sink's buffer bound)."""


async def _batch(reader: Reader, max_bytes: int) -> list[ReadEvent]:
    """The reader's next event and those ready right after it (no I/O for those)."""
    ev = await anext(reader)
    batch = [ev]
    size = len(ev.data)
    while size < max_bytes and len(batch) < MAX_BATCH and reader.ready_now():
        ev = await anext(reader)  # ready: returns at once
        batch.append(ev)
        size += len(ev.data)
    return batch


class Sink(Protocol[P_contra]):
    """Where one connection's events go: one payload per batch of events."""

    async def write(self, events: Sequence[ReadEvent]) -> None:
        """Write events read privately (catching up); may wait, bounded by the sink's rule.

        Raises: whatever ends the connection (the caller of :meth:`LiveFanout.follow` sees it).
        """

    def push(self, payload: P_contra) -> bool:
        """Write a shared payload now, without waiting; False if it cannot take it now."""


class _Attachment(Generic[P]):
    """A sink in a group: attached (it gets every payload) or pending (waits for ``pos``)."""

    __slots__ = ("done", "group", "pos", "sink")

    def __init__(
        self, group: _Group[P], sink: Sink[P], pos: int, done: asyncio.Future[int]
    ) -> None:
        self.group = group
        self.sink = sink
        self.pos = pos
        self.done = done
        """Result: the seq to continue after privately (-1: the terminal event was written)."""


def _resolve(fut: asyncio.Future[int], value: int) -> None:
    if not fut.done():
        fut.set_result(value)


class _Group(Generic[P]):
    """The shared delivery of one job: its reader, its cursor, its sinks."""

    __slots__ = ("attached", "cursor", "fanout", "job_id", "pending", "reader", "task")

    def __init__(self, fanout: LiveFanout[P], job_id: str, reader: Reader) -> None:
        self.fanout = fanout
        self.job_id = job_id
        self.reader = reader
        self.cursor = reader.last_seq
        """The last seq taken: every attached sink holds every event up to it."""
        self.attached: dict[_Attachment[P], None] = {}  # insertion-ordered set
        self.pending: list[_Attachment[P]] = []
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.attached) + len(self.pending)

    async def run(self) -> None:
        reader = self.reader
        try:
            while True:
                batch = await _batch(reader, self.fanout.batch_bytes)
                self._take(batch)
                if batch[-1].terminal:
                    self._end(-1)
                    return
        except StopAsyncIteration:
            self._end(-1)  # the iteration ends after the terminal event only
        except Exception as e:
            self._fail(e)
        finally:
            # Cancelled (the last sink left, or close()): whoever is still here reads on alone.
            self._end(self.cursor)
            self.fanout._gone(self)
            await reader.__aexit__(None, None, None)

    def _take(self, batch: list[ReadEvent]) -> None:
        """Push ``batch`` (events after the cursor, in order) to every sink that needs it."""
        last = batch[-1].seq
        joining: list[_Attachment[P]] = []
        if self.pending:
            keep: list[_Attachment[P]] = []
            for att in self.pending:
                (joining if att.pos < last else keep).append(att)
            self.pending = keep
        encode = self.fanout.encode
        payload = encode(batch)
        if payload is not None:
            reached = 0
            for att in list(self.attached):
                if att.sink.push(payload):
                    reached += 1
                else:
                    self._detach(att, self.cursor)
            self.fanout.delivered(payload, reached)
        for att in joining:
            # It holds every event up to att.pos >= cursor: it needs the part after att.pos.
            part = batch if att.pos < batch[0].seq else [e for e in batch if e.seq > att.pos]
            data = payload if part is batch else encode(part)
            if data is not None and not att.sink.push(data):
                _resolve(att.done, att.pos)  # continues privately from where it is
                continue
            if data is not None:
                self.fanout.delivered(data, 1)
            self.attached[att] = None
        self.cursor = last
        if self.pending:
            keep = []
            for att in self.pending:
                if att.pos == last:
                    self.attached[att] = None
                else:
                    keep.append(att)
            self.pending = keep

    def _detach(self, att: _Attachment[P], pos: int) -> None:
        self.attached.pop(att, None)
        _resolve(att.done, pos)

    def _end(self, value: int) -> None:
        """Resolve every sink: attached ones with ``value``, pending ones with their position."""
        for att in self.attached:
            _resolve(att.done, value)
        for att in self.pending:
            _resolve(att.done, att.pos)  # the group ends: it reads on its own
        self.attached.clear()
        self.pending.clear()

    def _fail(self, error: BaseException) -> None:
        for att in [*self.attached, *self.pending]:
            if not att.done.done():
                att.done.set_exception(error)
                att.done.exception()  # retrieved here; follow() re-raises it
        self.attached.clear()
        self.pending.clear()


class LiveFanout(Generic[P]):
    """The shared live deliveries of one hub, for sinks of one wire format.

    ``encode(events)`` turns a batch of events into the payload every sink gets (``None``: none
    of them is sent, e.g. hidden kinds); ``delivered(payload, sinks)`` is called once per
    payload with how many sinks took it (metrics). A batch holds at most ``MAX_BATCH``
    events and about ``batch_bytes`` of their data.
    """

    def __init__(
        self,
        hub: LiveHub,
        encode: Callable[[Sequence[ReadEvent]], P | None],
        delivered: Callable[[P, int], None] = lambda payload, sinks: None,
        *,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.hub = hub
        self.batch_bytes = max(1, batch_bytes)
        self.encode = encode
        self.delivered = delivered
        self._groups: dict[str, _Group[P]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def sinks(self, job_id: str) -> int:
        """Sinks attached to (or waiting for) the shared delivery of ``job_id``."""
        group = self._groups.get(job_id)
        return 0 if group is None else len(group)

    def groups(self) -> int:
        """Jobs with a shared delivery (one reader each)."""
        return len(self._groups)

    async def follow(self, job_id: str, after_seq: int, sink: Sink[P]) -> bool:
        """Deliver every event of ``job_id`` after ``after_seq`` to ``sink``, in order, once:
        privately up to the live edge, then from the job's shared delivery.

        Returns True once the terminal event was written, False if the job's events ended
        without one (cannot happen with a well-formed job).

        Raises:
            ValueError: see :meth:`LiveHub.subscribe`.
            HubClosed, ReaderError, ReplayTimeout, DirectGetError: the reader's errors.
            Whatever ``sink.write`` raises.
        """
        pos = after_seq
        while True:
            att = await self._catch_up(job_id, pos, sink)
            if att is None:
                return True
            try:
                pos = await att.done
            finally:
                self._leave(att)
            if pos < 0:
                return True

    async def _catch_up(self, job_id: str, pos: int, sink: Sink[P]) -> _Attachment[P] | None:
        """Read privately from ``pos`` until attached (returned) or the terminal event was
        written (None)."""
        reader = self.hub.subscribe(job_id, after_seq=pos)
        await reader.__aenter__()
        mine = True  # until the job's group adopts it
        try:
            while True:
                await reader.catch_up()
                if reader.at_live_edge():
                    att, adopted = self._attach(job_id, reader, sink)
                    mine = not adopted
                    if att is not None:
                        return att
                batch = await _batch(reader, self.batch_bytes)
                await sink.write(batch)
                if batch[-1].terminal:
                    return None
        except StopAsyncIteration:
            return None
        finally:
            if mine:
                await reader.__aexit__(None, None, None)

    def _attach(
        self, job_id: str, reader: Reader, sink: Sink[P]
    ) -> tuple[_Attachment[P] | None, bool]:
        """(the attachment, or None when the group is ahead; whether ``reader`` was adopted)."""
        pos = reader.last_seq
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        group = self._groups.get(job_id)
        if group is None:
            group = self._groups[job_id] = _Group(self, job_id, reader)
            group.attached[_Attachment(group, sink, pos, done)] = None
            task = asyncio.create_task(group.run(), name=f"fanout-{job_id}")
            group.task = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return next(iter(group.attached)), True
        att = _Attachment(group, sink, pos, done)
        if group.cursor == pos:
            group.attached[att] = None
        elif group.cursor < pos:
            group.pending.append(att)
        else:
            return None, False
        return att, False

    def _leave(self, att: _Attachment[P]) -> None:
        group = att.group
        group.attached.pop(att, None)
        if att in group.pending:
            group.pending.remove(att)
        if not group and group.task is not None and not group.task.done():
            self._gone(group)
            group.task.cancel()  # its reader leaves the hub; close() awaits what is left

    def _gone(self, group: _Group[P]) -> None:
        if self._groups.get(group.job_id) is group:
            del self._groups[group.job_id]

    async def close(self) -> None:
        """End every shared delivery and wait for their tasks; sinks still attached continue
        privately (after a :meth:`LiveHub.close` their readers end with ``HubClosed``)."""
        for group in list(self._groups.values()):
            if group.task is not None:
                group.task.cancel()
        self._groups.clear()
        if self._tasks:
            await asyncio.wait(set(self._tasks))
