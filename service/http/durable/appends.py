"""Appends to a Durable Stream: validated in order, stored exactly once, fenced, grouped.

Appends to one stream wait their turn in this process; the one whose turn it is validates
every append queued behind it too, in order, and stores the accepted ones with one publish, or
one JetStream atomic batch (all or none, consecutive sequences), fenced with
``Nats-Expected-Last-Subject-Sequence`` on the last sequence of the state they were validated
against. Another gateway that appended first makes the fence fail: the new messages are folded
and the group validated again. A refusal or a duplicate is only answered on state just read
back from the stream. A publish whose ack is lost is retried with the same fence; appends it
did store are found by their ``Ds-Aid`` and answered as stored, never stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Final

from schemas import headers as hdr
from service.nats.directget import DirectGetError, ReplayTimeout
from service.nats.outage import TRANSIENT_ERRORS, Outage
from service.nats.publisher import WRONG_LAST_SEQUENCE, PublishRejected, PublishTimeout

from .model import AppendOutcome, AppendRequest, DsError, StreamRecord, StreamState
from .rules import as_stored, decide, message_headers, success
from .storage import DurableStore

log = logging.getLogger("genjobs.http.durable")

GROUP_MAX: Final = 100
"""Appends committed together as one atomic batch, at most."""
GROUP_BYTES: Final = 4 * 1024 * 1024
MAX_FENCE_RETRIES: Final = 1000
_UNAVAILABLE: Final[tuple[type[Exception], ...]] = (
    ReplayTimeout,
    DirectGetError,
    *TRANSIENT_ERRORS,
)


class Appends:
    def __init__(self, store: DurableStore) -> None:
        self.store = store
        self._queues: dict[str, deque[_Waiting]] = {}
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, inc: str) -> asyncio.Lock:
        lock = self._locks.get(inc)
        if lock is None:
            lock = self._locks[inc] = asyncio.Lock()
        return lock

    async def append(self, rec: StreamRecord, req: AppendRequest) -> AppendOutcome:
        """Validate against the stream's state and store, exactly once, fenced.

        Appends to one stream wait their turn here; the one whose turn it is commits every
        append queued behind it too, validated in order, as one atomic batch (a single round
        trip): under load the throughput of a stream grows with its writers.

        Raises:
            DsError: the append's refusal; 503 JetStream unavailable past the outage
                budget; 500 refused by JetStream.
        """
        me = _Waiting(req, uuid.uuid4().hex, asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(rec.inc, deque())
        queue.append(me)
        try:
            async with self._lock(rec.inc):
                while not me.future.done():
                    group = _take(queue)
                    try:
                        await self._commit(rec, group)
                    finally:  # anything unanswered (we were cancelled) goes to the next turn
                        queue.extendleft(reversed([w for w in group if not w.future.done()]))
        finally:
            if not me.future.done():
                with contextlib.suppress(ValueError):
                    queue.remove(me)
            if not queue and self._queues.get(rec.inc) is queue:
                del self._queues[rec.inc]
        return me.future.result()

    async def _commit(self, rec: StreamRecord, group: list[_Waiting]) -> None:
        """Answer every append of ``group``: validated in order against the stream's state,
        the accepted ones published together, fenced on the state's last sequence."""
        try:
            await self._commit_group(rec, group)
        except DsError as e:
            for w in group:
                _answer(w, e)
        except Exception as e:
            log.exception("append to %s failed", rec.inc)
            for w in group:
                _answer(w, DsError(500, f"append failed: {e!r}"))

    async def _commit_group(self, rec: StreamRecord, group: list[_Waiting]) -> None:
        """Rounds of validate-and-publish until every append of ``group`` is answered; an
        outage (a publish or a read-back unanswered, no responders) is ridden out under the
        project's outage policy (``GENJOBS_PUBLISH_OUTAGE_BUDGET``), then answered 503."""
        ids = {w.append_id: w for w in group}
        st: StreamState | None = None
        fresh = False
        outage: Outage | None = None
        for _ in range(MAX_FENCE_RETRIES):
            if all(w.future.done() for w in group):
                return
            try:
                if st is None:
                    st, fresh = await self.store.state(rec)
                st, fresh = await self._round(rec, st, fresh, group, ids)
                continue
            except PublishRejected as e:
                if not e.transient:
                    raise DsError(500, f"append refused: {e.description}") from e
                error: Exception = e
                waited = 0.0
            except PublishTimeout as e:
                # Maybe stored: the retry's fence answers 10071 then, and the read-back after
                # it finds this append by its id.
                error, waited, fresh = e, self.store.s.publish_timeout, False
            except _UNAVAILABLE as e:
                waited = self.store.s.request_timeout if isinstance(e, ReplayTimeout) else 0.0
                error, fresh = e, False
            outage = outage or self.store.policy.begin()
            if not outage.failed(waited=waited):
                raise DsError(
                    503, f"stream storage unavailable: {error}", {"Retry-After": "1"}
                ) from error
            log.warning("append to %s failed: %r; retrying", rec.inc, error)
            if not waited:
                await asyncio.sleep(outage.pause())
        raise DsError(503, "append kept losing the race against other writers")

    async def _round(
        self,
        rec: StreamRecord,
        st: StreamState,
        fresh: bool,
        group: list[_Waiting],
        ids: dict[str, _Waiting],
    ) -> tuple[StreamState, bool]:
        """One round: answer what can be answered, store what is accepted; returns the state
        and whether it was just read back (or just written by us).

        Raises:
            PublishRejected: other than "wrong last sequence"; PublishTimeout; the read-back's
                errors.
        """
        todo = [w for w in group if not w.future.done()]
        accepted, verdicts = _validate(st, todo)
        if verdicts and not fresh:
            # A refusal or a duplicate must not rest on a stale cache: another gateway may
            # have appended. Only a publish is fenced by the server.
            st, _ = await self.store.catch_up(rec, st)
            return st, True
        for w, verdict in verdicts:
            _answer(w, verdict)
        if not accepted:
            return st, fresh
        try:
            await self._publish(rec, st, accepted)
        except PublishRejected as e:
            if e.err_code != WRONG_LAST_SEQUENCE:
                raise
            # Fenced out: another writer appended, or an earlier attempt of ours landed late.
            st, landed = await self.store.catch_up(rec, st, look_for=ids)
            _answer_landed(st, ids, landed)
        return st, True

    async def _publish(self, rec: StreamRecord, st: StreamState, accepted: list[_Accepted]) -> None:
        """Store ``accepted`` (one publish, or one atomic batch), fenced on ``st.tail``; apply
        them to ``st`` and answer them.

        Raises:
            PublishRejected, PublishTimeout: as the publisher's.
        """
        subject = self.store.subject(rec.inc)
        accepted[0][1][hdr.EXPECTED_LAST_SUBJECT_SEQ] = str(st.tail)
        if len(accepted) == 1:
            w, headers, closed = accepted[0]
            seq = await self.store.publisher.publish_once(subject, w.req.payload or b"", headers)
            st.apply(as_stored(seq, headers))
            _answer(w, success(w.req, seq, closed))
        else:
            last, count = await self.store.publisher.publish_batch(
                subject, [(w.req.payload or b"", h) for w, h, _ in accepted]
            )
            if count != len(accepted):
                raise DsError(500, f"batch of {len(accepted)} stored as {count}")
            # An atomic batch is stored in one piece: consecutive sequences.
            for i, (w, headers, closed) in enumerate(accepted):
                seq = last - count + 1 + i
                st.apply(as_stored(seq, headers))
                _answer(w, success(w.req, seq, closed))
        self.store.remember(rec.inc, st)
        await self.store.snapshot(rec, st)


@dataclass(slots=True, eq=False)
class _Waiting:
    req: AppendRequest
    append_id: str
    future: asyncio.Future[AppendOutcome]


_Accepted = tuple[_Waiting, dict[str, str], bool]
"""An append to store: its request, its message headers, the stream closed after it."""


def _take(queue: deque[_Waiting]) -> list[_Waiting]:
    """The next group to commit: the front of the queue, up to the batch limits."""
    group: list[_Waiting] = []
    size = 0
    while queue and len(group) < GROUP_MAX:
        nbytes = len(queue[0].req.payload or b"")
        if group and size + nbytes > GROUP_BYTES:
            break
        group.append(queue.popleft())
        size += nbytes
    return group


def _answer(w: _Waiting, verdict: AppendOutcome | DsError) -> None:
    if w.future.done():
        return
    if isinstance(verdict, DsError):
        w.future.set_exception(verdict)
        w.future.exception()  # retrieved: the waiting request re-raises it
    else:
        w.future.set_result(verdict)


def _answer_landed(st: StreamState, ids: dict[str, _Waiting], landed: dict[str, int]) -> None:
    """Appends found stored by a read-back (their ack was lost) are answered as stored."""
    for aid, seq in landed.items():
        w = ids[aid]
        if not w.future.done():
            _answer(w, success(w.req, seq, st.closed and seq == st.tail))


def _validate(
    st: StreamState, todo: list[_Waiting]
) -> tuple[list[_Accepted], list[tuple[_Waiting, AppendOutcome | DsError]]]:
    """Decide ``todo`` in order, each against the state the previous accepted ones make: the
    accepted (to store, with their headers and whether the stream is closed after each), and
    the answered (refusals and duplicates) before the first accepted one."""
    scratch = st.copy()
    accepted: list[_Accepted] = []
    verdicts: list[tuple[_Waiting, AppendOutcome | DsError]] = []
    for w in todo:
        verdict = decide(scratch, w.req)
        if verdict is not None:
            if accepted:  # answered after the accepted ones are stored, in order
                break
            verdicts.append((w, verdict))
            continue
        headers = message_headers(w.req, w.append_id)
        scratch.apply(as_stored(scratch.tail, headers))  # its effect on the next ones
        accepted.append((w, headers, scratch.closed))
    return accepted, verdicts
