"""What a gateway remembers of Durable Streams between requests (no I/O): records, messages.

* :class:`RecordCache`: a stream's record by name, so an append costs one NATS round trip (the
  fenced publish) instead of two. A record changes only by deletion or soft-deletion (every
  other field is fixed for an incarnation, and forks' references do not concern appends), and
  both are seen by the append's own fence: a deleted stream's subject is purged (a fence on a
  sequence above 0 fails), a soft-deleted one gets a ``Ds-Gone`` message
  (:mod:`.lifecycle`). A state whose tail is 0 cannot tell an empty subject from a purged
  one, so it is never trusted to a cached record. Entries are re-read after
  :data:`RECORD_MAX_AGE` (what bounds a gateway that died between a record's deletion and its
  subject's purge or marker).
* :class:`MessageCache`: stored messages by subject. A message at a sequence never changes
  (offsets are immutable JetStream sequences, and a recreated stream gets a new subject), so a
  *run* of messages known to be every message of a subject between two sequences serves any
  read inside it without a Direct Get. Runs grow from appends through this gateway (the fence
  proves nothing else was stored between the previous tail and the new message) and from
  reads (a batch Direct Get returns every message of the subject in its range). One run per
  subject, least recently used first out, bounded in bytes (``GENJOBS_DS_CACHE_BYTES``).
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from service.nats.directget import StoredMsg

from .model import StreamRecord

RECORD_MAX_AGE: Final = 10.0
"""Seconds a cached record is trusted without a re-read (see the module's docstring)."""
RECORDS: Final = 10_000
MSG_OVERHEAD: Final = 160
"""Bytes a cached message costs beyond its payload and headers (objects, list slots)."""


class RecordCache:
    """name -> (record, revision, when read); bounded, least recently used first out."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: OrderedDict[str, tuple[StreamRecord, int, float]] = OrderedDict()

    def get(self, name: str) -> tuple[StreamRecord, int] | None:
        got = self._entries.get(name)
        if got is None:
            return None
        rec, rev, when = got
        if self._clock() - when > RECORD_MAX_AGE:
            del self._entries[name]
            return None
        self._entries.move_to_end(name)
        return rec, rev

    def put(self, name: str, rec: StreamRecord, rev: int) -> None:
        self._entries[name] = (rec, rev, self._clock())
        self._entries.move_to_end(name)
        while len(self._entries) > RECORDS:
            self._entries.popitem(last=False)

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)


class _Run:
    """Every message of a subject with ``lo < seq <= hi``, in order."""

    __slots__ = ("hi", "lo", "msgs", "nbytes", "seqs")

    def __init__(self, lo: int) -> None:
        self.lo = lo
        self.hi = lo
        self.msgs: list[StoredMsg] = []
        self.seqs: list[int] = []
        self.nbytes = 0


def _cost(m: StoredMsg) -> int:
    return len(m.data) + len(m.raw_headers) + MSG_OVERHEAD


class MessageCache:
    """Runs of stored messages by subject, at most ``limit`` bytes in all (0: off)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        """Messages served from the cache (tests and metrics)."""

    def messages(
        self, subject: str, start: int, max_msgs: int, max_bytes: int
    ) -> list[StoredMsg] | None:
        """The subject's messages from sequence ``start`` on, as a batch Direct Get would
        return them (at most ``max_msgs``, stopping after the one that reaches ``max_bytes``),
        when the cache knows them; ``None``: it does not (ask the server). A non-empty answer
        may stop before the subject's end: the caller asks again after its last message."""
        run = self._runs.get(subject)
        if run is None or not run.lo < start <= run.hi:
            return None
        i = bisect.bisect_left(run.seqs, start)
        if i == len(run.seqs):
            return None  # nothing known past start: the server knows what follows hi
        self._runs.move_to_end(subject)
        out: list[StoredMsg] = []
        size = 0
        for m in run.msgs[i : i + max_msgs]:
            out.append(m)
            size += len(m.data)
            if size >= max_bytes:
                break
        self.hits += len(out)
        return out

    def stored(self, subject: str, after: int, msgs: Sequence[StoredMsg]) -> None:
        """``msgs`` are every message of ``subject`` with ``after < seq <= msgs[-1].seq``
        (an append fenced on ``after``, or a batch read from ``after + 1``)."""
        if self.limit <= 0 or not msgs:
            return
        run = self._runs.get(subject)
        if run is not None and run.lo <= after <= run.hi:
            self._extend(run, msgs)
        elif run is not None and after < run.lo <= msgs[-1].seq:
            self._replace(subject, after, msgs, keep=run)  # the new range reaches into it
        else:
            self._replace(subject, after, msgs, keep=None)
        self._runs.move_to_end(subject)
        self._shrink()

    def _extend(self, run: _Run, msgs: Sequence[StoredMsg]) -> None:
        for m in msgs:
            if m.seq <= run.hi:
                continue
            run.msgs.append(m)
            run.seqs.append(m.seq)
            cost = _cost(m)
            run.nbytes += cost
            self.nbytes += cost
            run.hi = m.seq

    def _replace(
        self, subject: str, after: int, msgs: Sequence[StoredMsg], keep: _Run | None
    ) -> None:
        old = self._runs.pop(subject, None)
        if old is not None:
            self.nbytes -= old.nbytes
        run = _Run(after)
        self._runs[subject] = run
        self._extend(run, msgs)
        if keep is not None:  # what the old run knew beyond the new messages still holds
            self._extend(run, keep.msgs)

    def _shrink(self) -> None:
        while self.nbytes > self.limit and self._runs:
            subject, run = next(iter(self._runs.items()))
            if len(self._runs) == 1:  # the one run left: drop its oldest half
                self._trim(run, max(1, len(run.msgs) // 2))
                if run.msgs:
                    continue
            del self._runs[subject]
            self.nbytes -= run.nbytes

    def _trim(self, run: _Run, n: int) -> None:
        gone = run.msgs[:n]
        del run.msgs[:n]
        del run.seqs[:n]
        cost = sum(_cost(m) for m in gone)
        run.nbytes -= cost
        self.nbytes -= cost
        run.lo = gone[-1].seq

    def forget(self, subject: str) -> None:
        """The subject was purged (its stream deleted)."""
        run = self._runs.pop(subject, None)
        if run is not None:
            self.nbytes -= run.nbytes
