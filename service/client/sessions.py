"""Durable reader sessions (docs/protocol.md, Durable reader sessions): LibreChat's consumer-group API on JetStream.

A reader that wants the *server* to remember how far it got opens a named session on a job. The
session is a durable pull consumer on the job's subject, so its position survives the reader's
process, and it needs no state of ours anywhere else. This mirrors RedisJobStore:

==========================================================  =====================================
RedisJobStore                                               here
==========================================================  =====================================
``createConsumerGroup(streamId, group, '0')``               :meth:`SessionStore.open`
``readChunksFromGroup(streamId, group, consumer, count)``   :meth:`DurableSession.read`
``acknowledgeChunks(streamId, group, ids)``                 :meth:`DurableSession.ack_many`
``getPendingChunks(streamId, group, consumer)``             :meth:`DurableSession.pending`
``deleteConsumerGroup(streamId, group)``                    :meth:`SessionStore.delete`
==========================================================  =====================================

Deliberate differences:

- **Acknowledgement is a cursor** (``AckPolicy.ALL``): ``ack(seq)`` acknowledges every event of
  the session with a stream sequence ``<= seq``; ``ack_many(seqs)`` is ``ack(max(seqs))``. Redis
  ``XACK`` acknowledges ids one by one. Events of a job are processed in order, and only a cursor
  makes "delivered but unacknowledged" exactly the range ``(ack_floor, delivered]`` of the job's
  subject, which a new process can list from the server alone (see :meth:`DurableSession.pending`).
  With ``AckPolicy.EXPLICIT`` the server keeps the set but offers no API to list it.
- **Errors raise**: Redis answers ``[]`` when the group is missing (NOGROUP), which hides a
  session that expired; here that is :class:`SessionNotFound`.
- **One reader per session**: a Redis group can hold several consumers that split the entries;
  several processes pulling from one session would split the job's events the same way, which a
  resumable reader never wants. Open one session name per reader.

Errors, the event and info values and the consumer naming live in :mod:`schemas.session` (no
I/O) and are re-exported here; the JetStream calls and their error translation are
``service/client/session_api.py``. Its Direct Gets ride out an outage under the outage policy
(``service/nats/outage.py``), as a live reader's do; the consumer requests (create, fetch,
info, ack) answer :class:`SessionUnavailable` at once and leave the retry to the caller.

Limits, stated honestly:

- ``ack``/``pending``/``info`` cost one or more requests each (consumer info, then an ack request
  or a Direct Get): sessions are not the hot path; live readers use ordered consumers or the
  republished subject instead.
- The Direct Get that :meth:`DurableSession.pending` uses may be answered by any replica of the
  stream; on a clustered stream a lagging replica can miss the newest events for a moment.
- Inactivity removal is the server's: a session nobody pulled from for ``session_inactive`` is
  deleted, but nats-server 2.15 keeps a consumer while deliveries are outstanding, so a session
  abandoned with unacknowledged events goes later (measured: about threshold + twice the ack wait).
- Acks are sent as ``$JS.ACK.<stream>.<consumer>.…`` subjects built here (the v1 format that
  nats-server accepts in the stream's own account). Sessions across account imports or JetStream
  domains are not supported.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, ReplayPolicy

from schemas.session import (
    AckNotApplied,
    InvalidSessionId,
    NotDelivered,
    SessionClosed,
    SessionError,
    SessionEvent,
    SessionInfo,
    SessionNotFound,
    SessionUnavailable,
    session_consumer_name,
    validate_session_ids,
)
from service.client.session_api import SessionApi, event_of, seq_pair
from service.config import Settings

__all__ = [
    "AckNotApplied",
    "DurableSession",
    "InvalidSessionId",
    "NotDelivered",
    "SessionClosed",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionNotFound",
    "SessionStore",
    "SessionUnavailable",
    "session_consumer_name",
    "validate_session_ids",
]

# nats.conf sets jetstream.limits.max_request_batch = 1000; a bigger pull request is answered
# with a 409 that nats-py treats as "no messages", so a larger read would silently return [].
_MAX_FETCH: Final = 1000
# Direct Get pages: at most this many events (and 4 MB, see service/client/session_api.py).
_DIRECT_BATCH: Final = 1000
# An ack is re-sent when a concurrent ack on the same session moved the floor under it.
_ACK_ATTEMPTS: Final = 3


# Store and sessions --------------------------------------------------------------------------


class SessionStore:
    """Opens, inspects and deletes durable reader sessions on the event stream.

    Sessions are configured from ``settings``: ``session_ack_wait`` (an unacknowledged event is
    delivered again after this long) and ``session_inactive`` (the server deletes a session that
    nobody read from for this long, so abandoned sessions never pile up).
    ``max_ack_pending`` bounds delivered-but-unacknowledged events per session: a reader that
    never acknowledges stops receiving new events instead of growing server state.
    """

    def __init__(self, nc: NATS, settings: Settings, *, max_ack_pending: int = 1000) -> None:
        """No I/O here, so invalid ids can be refused before anything reaches the server.

        Raises:
            ValueError: ``max_ack_pending`` < 1.
        """
        if max_ack_pending < 1:
            raise ValueError(f"max_ack_pending must be >= 1, got {max_ack_pending}")
        self._api = SessionApi(nc, settings)
        self._settings = settings
        self._max_ack_pending = max_ack_pending

    def _config(self, job_id: str, name: str, consumer: str) -> ConsumerConfig:
        s = self._settings
        return ConsumerConfig(
            name=consumer,
            durable_name=consumer,
            description=f"genjobs reader session {name} on job {job_id}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.ALL,
            ack_wait=s.session_ack_wait,
            filter_subject=s.events_subject(job_id),
            replay_policy=ReplayPolicy.INSTANT,
            max_ack_pending=self._max_ack_pending,
            inactive_threshold=s.session_inactive,
            metadata={"genjobs_job": job_id, "genjobs_session": name},
        )

    async def open(self, job_id: str, name: str) -> DurableSession:
        """Create the session, or bind to it if it exists (its position is kept).

        Idempotent like ``createConsumerGroup`` (BUSYGROUP is fine). Opening an existing session
        applies the current settings' ack wait and inactivity threshold to it. The job need not
        have events yet. The returned object holds a subscription: close it (or use
        ``async with``) when done; that does not delete the session.

        Raises:
            InvalidSessionId: ``job_id`` or ``name`` is invalid (nothing was sent).
            SessionUnavailable: JetStream refused or did not answer (e.g. stream not provisioned,
                or the session exists with a configuration that cannot be updated).
        """
        consumer = session_consumer_name(job_id, name)
        api = self._api
        async with api.boundary(job_id, name, consumer, "open"):
            info = await api.js.add_consumer(api.stream, self._config(job_id, name, consumer))
            last = await api.direct_last(self._settings.events_subject(job_id))
            psub = await api.js.pull_subscribe_bind(durable=consumer, stream=api.stream)
        _, _, delivered_seq, _ = seq_pair(info)
        # A session whose terminal event was delivered in an earlier process is finished from
        # the start: nothing new will ever come, only pending() may still hold work.
        finished = last is not None and last.terminal and last.seq <= delivered_seq
        return DurableSession(api, job_id, name, consumer, psub, finished=finished)

    async def exists(self, job_id: str, name: str) -> bool:
        """Whether the session exists on the server (does not count as activity).

        Raises:
            InvalidSessionId: ``job_id`` or ``name`` is invalid (nothing was sent).
            SessionUnavailable: JetStream did not answer.
        """
        consumer = session_consumer_name(job_id, name)
        api = self._api
        async with api.boundary(job_id, name, consumer, "exists"):
            try:
                await api.js.consumer_info(api.stream, consumer)
            except nats.js.errors.NotFoundError:
                return False  # consumer, or the whole stream, is absent: no session either way
        return True

    async def delete(self, job_id: str, name: str) -> bool:
        """Delete the session; True if it existed. Idempotent, like ``deleteConsumerGroup``.

        Raises:
            InvalidSessionId: ``job_id`` or ``name`` is invalid (nothing was sent).
            SessionUnavailable: JetStream did not answer.
        """
        consumer = session_consumer_name(job_id, name)
        api = self._api
        async with api.boundary(job_id, name, consumer, "delete"):
            try:
                return bool(await api.js.delete_consumer(api.stream, consumer))
            except nats.js.errors.NotFoundError:
                return False


class DurableSession:
    """A handle on one session. Everything that matters lives on the server; this object only
    caches delivery sequences to keep the server's ack floor exact, so a new process can pick
    up any session with :meth:`SessionStore.open`.

    Semantics (``AckPolicy.ALL``):

    - :meth:`read` returns events never delivered to this session, plus events whose
      ``session_ack_wait`` ran out without an acknowledgement (redeliveries come first, in order).
    - :meth:`ack` moves the acknowledgement cursor: every event with ``seq <=`` the given one is
      acknowledged. It works for events received by an earlier process, before their redelivery.
    - :meth:`pending` lists delivered-but-unacknowledged events from server state alone: the job's
      events in ``(ack floor, last delivered]``.
    """

    def __init__(
        self,
        api: SessionApi,
        job_id: str,
        name: str,
        consumer: str,
        psub: JetStreamContext.PullSubscription,
        *,
        finished: bool,
    ) -> None:
        self._api = api
        self.job_id = job_id
        self.name = name
        self.consumer = consumer
        self._subject = api.settings.events_subject(job_id)
        self._psub = psub
        self._finished = finished
        self._closed = False
        self._read_lock = asyncio.Lock()
        # stream seq -> consumer (delivery) seq of the latest delivery received in this process.
        # Only used to send the server its true delivery sequence in acks; bounded by
        # max_ack_pending because acknowledged entries are dropped.
        self._dseq: dict[int, int] = {}

    @property
    def finished(self) -> bool:
        """The job's terminal event (``final``/``error``) has been delivered to this session, in
        this process or an earlier one. Nothing new will come; :meth:`pending` may still list
        unacknowledged events."""
        return self._finished

    def _boundary(self, what: str) -> AbstractAsyncContextManager[None]:
        if self._closed:
            raise SessionClosed(self.job_id, self.name)
        return self._api.boundary(self.job_id, self.name, self.consumer, what)

    async def read(self, max_events: int = 100, timeout: float = 1.0) -> list[SessionEvent]:
        """Up to ``max_events`` (capped at 1000) unseen or redelivered events, in order.

        Waits at most ``timeout`` seconds for the first one and returns ``[]`` if none came: an
        idle job is not an error. ``[]`` also means the session holds ``max_ack_pending``
        unacknowledged events: acknowledge to receive more. Reading counts as activity for the
        inactivity threshold.

        Raises:
            ValueError: ``max_events`` < 1 or ``timeout`` <= 0.
            SessionClosed: this object was closed.
            SessionNotFound: the session was deleted or expired.
            SessionUnavailable: JetStream failed.
        """
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        async with self._read_lock, self._boundary("read"):
            try:
                msgs = await self._psub.fetch(min(max_events, _MAX_FETCH), timeout=timeout)
            except TimeoutError:
                # nats-py's own fetch deadline (nats.errors.TimeoutError or asyncio's): nothing
                # arrived. A caller's cancellation arrives as CancelledError and passes through.
                return []
        events: list[SessionEvent] = []
        for msg in msgs:
            seqs = msg.metadata.sequence
            self._dseq[seqs.stream] = seqs.consumer
            event = event_of(seqs.stream, msg)
            if event.terminal:
                self._finished = True
            events.append(event)
        return events

    async def ack(self, seq: int) -> None:
        """Acknowledge every event of this session with stream sequence ``<= seq``.

        Returns once the server's ack floor is at or above ``seq`` (the ack is sent as a request
        and checked). A sequence already acknowledged is a no-op. Works for events delivered to
        an earlier process: the ack subject is rebuilt from the sequence, with the delivery
        sequence this process saw for it, or ``floor + 1`` when it saw none.

        JetStream's AckAll ignores an ack whose delivery sequence is not above the floor's; a
        partial redelivery (event 1 redelivered and acknowledged while event 2 still carries its
        older delivery) makes a plain ``msg.ack()`` vanish that way. The delivery sequence sent
        is therefore never below ``floor + 1``, so acks from this class land. The server's
        recorded delivery floor may then differ from the true one; the only effect is that a
        plain ack sent by another client could be ignored and its event redelivered (never
        lost). Costs two consumer-info requests and one ack request.

        Raises:
            ValueError: ``seq`` < 1.
            NotDelivered: ``seq`` is above the last delivered sequence.
            AckNotApplied: concurrent acks kept moving the floor under this one.
            SessionClosed: this object was closed.
            SessionNotFound: the session was deleted or expired.
            SessionUnavailable: JetStream failed.
        """
        if seq < 1:
            raise ValueError(f"seq must be >= 1, got {seq}")
        api = self._api
        floor_seq = 0
        async with self._boundary("ack"):
            for attempt in range(_ACK_ATTEMPTS + 1):
                info = await api.js.consumer_info(api.stream, self.consumer)
                floor_seq, floor_dseq, delivered_seq, _ = seq_pair(info)
                if seq <= floor_seq:
                    self._dseq = {s: d for s, d in self._dseq.items() if s > floor_seq}
                    return
                if seq > delivered_seq:
                    raise NotDelivered(self.job_id, self.name, seq, delivered_seq)
                if attempt == _ACK_ATTEMPTS:
                    break
                dseq = max(self._dseq.get(seq, 0), floor_dseq + 1)
                # v1 ack subject: $JS.ACK.<stream>.<consumer>.<deliveries>.<sseq>.<dseq>.<ts>.<pending>;
                # the server reads sseq and dseq, deliveries/ts/pending only feed advisories.
                await api.nc.request(
                    f"$JS.ACK.{api.stream}.{self.consumer}.1.{seq}.{dseq}.0.0",
                    b"+ACK",
                    timeout=api.settings.request_timeout,
                )
        raise AckNotApplied(self.job_id, self.name, seq, floor_seq)

    async def ack_many(self, seqs: Iterable[int]) -> None:
        """Acknowledge through the highest of ``seqs`` (cursor semantics: events between them
        are acknowledged too). An empty iterable is a no-op, as in ``acknowledgeChunks``.

        Raises:
            Same as :meth:`ack`.
        """
        highest = max(seqs, default=None)
        if highest is not None:
            await self.ack(highest)

    async def pending(self) -> list[SessionEvent]:
        """Delivered-but-unacknowledged events, in order, read from server state only.

        With a cursor ack policy these are exactly the job's events in
        ``(ack_floor_seq, delivered_seq]``; they are fetched with batched Direct Gets, so this
        works in a new process after a crash, before any redelivery. A snapshot: reads and acks
        running concurrently may make it stale at once. Events purged from the stream (after
        ``completed_ttl``) are no longer listed.

        Raises:
            SessionClosed: this object was closed.
            SessionNotFound: the session was deleted or expired.
            SessionUnavailable: JetStream failed.
        """
        api = self._api
        events: list[SessionEvent] = []
        async with self._boundary("pending"):
            info = await api.js.consumer_info(api.stream, self.consumer)
            floor_seq, _, delivered_seq, _ = seq_pair(info)
            remaining = info.num_ack_pending or 0
            start = floor_seq + 1
            while remaining > 0 and start <= delivered_seq:
                page = await api.direct_batch(start, self._subject, min(remaining, _DIRECT_BATCH))
                if not page:
                    break
                for event in page:
                    if event.seq > delivered_seq:
                        remaining = 0
                        break
                    events.append(event)
                    remaining -= 1
                start = page[-1].seq + 1
        if any(e.terminal for e in events):
            self._finished = True
        return events

    async def info(self) -> SessionInfo:
        """The session's server-side position and counters.

        Raises:
            SessionClosed: this object was closed.
            SessionNotFound: the session was deleted or expired.
            SessionUnavailable: JetStream failed.
        """
        api = self._api
        async with self._boundary("info"):
            info = await api.js.consumer_info(api.stream, self.consumer)
        floor_seq, _, delivered_seq, _ = seq_pair(info)
        return SessionInfo(
            job_id=self.job_id,
            name=self.name,
            consumer=self.consumer,
            delivered_seq=delivered_seq,
            ack_floor_seq=floor_seq,
            num_pending=info.num_pending or 0,
            num_ack_pending=info.num_ack_pending or 0,
            num_redelivered=info.num_redelivered or 0,
        )

    async def close(self) -> None:
        """Drop this handle's subscription. The session stays on the server (delete it with
        :meth:`SessionStore.delete`, or let the inactivity threshold remove it). Idempotent.

        Raises:
            SessionUnavailable: unsubscribing failed on a live connection.
        """
        if self._closed:
            return
        self._closed = True
        if self._api.nc.is_closed:
            return  # the subscription died with its connection; nothing left to release
        async with self._api.boundary(self.job_id, self.name, self.consumer, "close"):
            await self._psub.unsubscribe()

    async def __aenter__(self) -> DurableSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
