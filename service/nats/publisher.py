"""A lean JetStream publisher with a per-subject fence instead of Msg-Id dedupe.

Why not ``js.publish`` / ``publish_async``: one ``await js.publish`` creates a reply inbox future
and parses the ack with the json module (~3.5k msgs/s), and ``publish_async`` futures never time
out (docs/nats-py.md). Here every publish goes out as a core publish whose reply subject is a token
under one wildcard inbox owned by this object; acks are decoded with msgspec and resolve a
future, and a timer per publish turns a lost ack into :class:`PublishTimeout`.

Exactly-once storage: every publish carries ``Nats-Expected-Last-Subject-Sequence``. A publish
retried after an ambiguous failure (timeout, reconnect) either succeeds (the first never
landed) or is refused with "wrong last sequence: N" — then the message at N is read back and
compared by its ``Genjobs-Index`` and ``Genjobs-Writer`` headers: ours means it was stored (we
take N), anything else means another writer fenced us out (a takeover writes the same index). No server memory grows per event.

Outages: a stream-leader election, a lost quorum or a reconnect shows up as 503 "no
responders", as acks that never come, or as a read-back that cannot be answered. None of them
is a reason to fail a job at once: the publish keeps retrying under the outage policy
(``service/nats/outage.py``: backing off after a 503, until the budget is spent); meanwhile the
actor's inbox fills and producers wait (backpressure). Only then is :class:`StoreFailed`
raised and the job fails loudly.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas import headers as hdr
from schemas.errors import OwnershipLost, StoreFailed
from service.nats.directget import DirectGetError, client_for
from service.nats.outage import Outage, OutagePolicy

log = logging.getLogger("genjobs.publisher")

WRONG_LAST_SEQUENCE = 10071
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
"""A replicated stream's answer "wrong last sequence" without a sequence: another write to the
subject with an expected last sequence is still being processed (often our own timed-out
attempt). Not a verdict: once that write settles, the same publish gets an ack or 10071."""
MAX_PER_SUBJECT = 10077  # "maximum messages per subject exceeded"
CLUSTER_NOT_AVAILABLE = 10008  # "JetStream system temporarily unavailable"
_IDENTITY = (hdr.INDEX, hdr.WRITER, hdr.KIND)
"""Headers that tell our stored retry from another event at the same index. The kind counts
too: an event given up after the outage budget may still land later (its copies were on the
wire), and the terminal error written next at the same index by the same writer must not be
taken for it."""
_WRONG_LAST_RE = re.compile(r"wrong last sequence: (\d+)")


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    count: int = 0  # messages of an atomic batch (its commit's ack)
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class PublishTimeout(Exception):
    """No ack within the timeout: the message may or may not be stored (ambiguous)."""


class PublishRejected(Exception):
    """The server refused the message; ``err_code`` is JetStream's error code, ``code`` its
    HTTP-like status (503: the stream is unavailable right now)."""

    def __init__(self, err_code: int, description: str, code: int = 0) -> None:
        super().__init__(f"{description} (err_code={err_code})")
        self.err_code = err_code
        self.description = description
        self.code = code

    @property
    def transient(self) -> bool:
        """No responders, the cluster temporarily unavailable, or a fenced write to the same
        subject still in flight: the same publish may succeed after an election or once that
        write settles. (Status 503 alone is not enough: JetStream also answers 503 to a full
        subject, err_code 10077, which no retry fixes.)"""
        return self.err_code in (503, CLUSTER_NOT_AVAILABLE, WRONG_LAST_SEQUENCE_IN_FLIGHT)


class FencedPublisher:
    """Publishes with acks over one wildcard inbox subscription. One per connection."""

    def __init__(
        self, nc: NATS, *, timeout: float = 5.0, policy: OutagePolicy | None = None
    ) -> None:
        self._nc = nc
        self._timeout = timeout
        self._policy = policy or OutagePolicy()
        self.outage_retries = 0
        """Attempts retried because of an outage (timeouts, 503, unanswered read-backs)."""
        self.on_ack: Callable[[float], None] | None = None
        """Called with the seconds from publish to ack of every stored event (metrics)."""
        self._prefix = nc.new_inbox()
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[_PubAck]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(self._prefix + ".*", cb=self._on_ack)

    async def close(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(PublishTimeout("publisher closed"))
        self._pending.clear()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def _on_ack(self, msg: Msg) -> None:
        token = msg.subject[len(self._prefix) + 1 :]
        fut = self._pending.pop(token, None)
        if fut is None or fut.done():
            return  # a late ack for a publish that already timed out; the retry resolves it
        if not msg.data and msg.headers and msg.headers.get(hdr.STATUS) == "503":
            fut.set_exception(
                PublishRejected(503, "no responders: the event stream is unavailable", 503)
            )
            return
        try:
            fut.set_result(_ack_decoder.decode(msg.data))
        except msgspec.DecodeError as e:
            fut.set_exception(PublishRejected(0, f"undecodable ack: {e}"))

    def _expire(self, token: str) -> None:
        fut = self._pending.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_exception(PublishTimeout("no ack within timeout"))

    async def publish_once(self, subject: str, payload: bytes, headers: dict[str, str]) -> int:
        """One attempt; returns the stream sequence.

        Raises:
            PublishTimeout: no ack in time (ambiguous: it may be stored).
            PublishRejected: the server refused it (wrong last sequence, per-subject cap, ...).
        """
        token = str(next(self._ids))
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_PubAck] = loop.create_future()
        self._pending[token] = fut
        timer = loop.call_later(self._timeout, self._expire, token)
        sent = loop.time()
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
            ack = await fut
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        if ack.error is not None:
            raise PublishRejected(ack.error.err_code, ack.error.description, ack.error.code)
        if self.on_ack is not None:
            self.on_ack(loop.time() - sent)
        return ack.seq

    async def publish_batch(
        self, subject: str, messages: list[tuple[bytes, dict[str, str]]]
    ) -> tuple[int, int]:
        """One attempt at an atomic batch (JetStream 2.12+, the stream needs
        ``allow_atomic``): every message is stored, or none; consistency headers of the first
        (``Nats-Expected-Last-Subject-Sequence``) guard the whole batch. Only the commit message
        is acknowledged. Returns (the commit's sequence, how many were stored).

        Raises:
            PublishTimeout: no ack in time (ambiguous: the batch may be stored).
            PublishRejected: the server refused the batch (wrong last sequence, ...).
        """
        token = str(next(self._ids))
        batch_id = f"{self._prefix.rsplit('.', 1)[-1]}{token}"[-64:]
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_PubAck] = loop.create_future()
        self._pending[token] = fut
        timer = loop.call_later(self._timeout, self._expire, token)
        last = len(messages)
        try:
            for i, (payload, headers) in enumerate(messages, 1):
                h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                if i == last:
                    h["Nats-Batch-Commit"] = "1"
                reply = f"{self._prefix}.{token}" if i == last else ""
                await self._nc.publish(subject, payload, reply=reply, headers=h)
            ack = await fut
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        if ack.error is not None:
            raise PublishRejected(ack.error.err_code, ack.error.description, ack.error.code)
        return ack.seq, ack.count or last

    async def publish_fenced(
        self,
        stream: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        expected_last: int,
        index: int,
        retries: int | None = None,
    ) -> int:
        """Store exactly once after ``expected_last`` on ``subject``; returns the new sequence.

        ``headers`` must carry ``Genjobs-Index`` and ``Genjobs-Writer``; together they are how a
        stored retry is told apart from another writer's event at the same index.

        Outages (timeouts, 503, a read-back nobody answers) are retried under the outage policy:
        until its budget is spent, counted from the first failed attempt, and at least
        ``retries`` times (default: the policy's).

        Raises:
            OwnershipLost: another writer appended to the subject (we were fenced out).
            StoreFailed: the server refused the event, or the outage outlasted the budget.
        """
        h = dict(headers)
        h[hdr.EXPECTED_LAST_SUBJECT_SEQ] = str(expected_last)
        outage: Outage | None = None  # made on the first failure: the hot path pays nothing
        while True:
            try:
                return await self.publish_once(subject, payload, dict(h))
            except PublishTimeout as e:
                error: Exception = e
                waited = self._timeout  # the attempt itself already waited: no pause
            except PublishRejected as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    try:
                        seq = await self._stored_by_us(stream, subject, h, e.description)
                    except _ReadBackUnavailable as unavailable:
                        error, waited = unavailable, 0.0
                    else:
                        if seq is not None:
                            return seq
                        raise OwnershipLost(
                            subject, f"another writer appended: {e.description}"
                        ) from e
                elif e.transient:
                    error, waited = e, 0.0
                else:
                    raise StoreFailed(f"event {index} on {subject} refused: {e.description}") from e
            if outage is None:
                outage = self._policy.begin(retries=retries)
            if not outage.failed(waited=waited):
                raise StoreFailed(
                    f"event {index} on {subject} not stored: the event stream was unavailable "
                    f"for {outage.spent:.1f} s (outage budget {self._policy.budget:g} s, "
                    f"{outage.attempts} attempts): {error}"
                ) from error
            self.outage_retries += 1
            log.warning(
                "publish of event %d to %s failed (attempt %d, %.1f s into the outage): %s; "
                "retrying",
                index,
                subject,
                outage.attempts,
                outage.spent,
                error,
            )
            if not waited:
                await asyncio.sleep(outage.pause())

    async def _stored_by_us(
        self, stream: str, subject: str, sent: dict[str, str], refusal: str
    ) -> int | None:
        """After "wrong last sequence: N": is the subject's last message the one we sent?

        The read-back is a Direct Get, which any replica of the stream may answer; one that has
        not yet applied message N answers with an older one, which proves nothing either way.

        Raises:
            _ReadBackUnavailable: nobody answered, or the answer is older than N.
        """
        try:
            msg = await client_for(self._nc).last_msg(stream, subject, timeout=self._timeout)
        except DirectGetError as e:
            raise _ReadBackUnavailable(f"read-back after {refusal!r}: {e}") from e
        m = _WRONG_LAST_RE.search(refusal)
        at_least = int(m.group(1)) if m else 0
        if msg is None and at_least == 0:
            return None  # the subject is empty, as the leader said: not ours
        if msg is None or msg.seq < at_least:
            got = "nothing" if msg is None else f"seq {msg.seq}"
            raise _ReadBackUnavailable(
                f"read-back after {refusal!r} answered {got}: a replica behind the leader"
            )
        if all(msg.header(k) == sent.get(k) for k in _IDENTITY if k in sent):
            return msg.seq
        return None


class _ReadBackUnavailable(Exception):
    """The read-back that resolves an ambiguous retry could not be answered (yet)."""
