"""A lean JetStream publisher with a per-subject fence instead of Msg-Id dedupe.

Why not ``js.publish`` / ``publish_async``: one ``await js.publish`` creates a reply inbox future
and parses the ack with the json module (~3.5k msgs/s), and ``publish_async`` futures never time
out (NATS-NOTES). Here every publish goes out as a core publish whose reply subject is a token
under one wildcard inbox owned by this object; acks are decoded with msgspec and resolve a
future, and a timer per publish turns a lost ack into :class:`PublishTimeout`.

Exactly-once storage: every publish carries ``Nats-Expected-Last-Subject-Sequence``. A publish
retried after an ambiguous failure (timeout, reconnect) either succeeds (the first never
landed) or is refused with "wrong last sequence: N" — then the message at N is read back and
compared by its ``Genjobs-Index`` and ``Genjobs-Writer`` headers: ours means it was stored (we
take N), anything else means another writer fenced us out (a takeover writes the same index). No server memory grows per event.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.errors import OwnershipLost, StoreFailed

log = logging.getLogger("genjobs.publisher")

HDR_EXPECTED_LAST_SUBJ_SEQ = "Nats-Expected-Last-Subject-Sequence"
WRONG_LAST_SEQUENCE = 10071
MAX_PER_SUBJECT = 10077  # "maximum messages per subject exceeded"


class _ApiError(msgspec.Struct):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _PubAck(msgspec.Struct):
    stream: str = ""
    seq: int = 0
    duplicate: bool = False
    error: _ApiError | None = None


_ack_decoder = msgspec.json.Decoder(_PubAck)


class PublishTimeout(Exception):
    """No ack within the timeout: the message may or may not be stored (ambiguous)."""


class PublishRejected(Exception):
    """The server refused the message; ``err_code`` is JetStream's error code."""

    def __init__(self, err_code: int, description: str) -> None:
        super().__init__(f"{description} (err_code={err_code})")
        self.err_code = err_code
        self.description = description


class FencedPublisher:
    """Publishes with acks over one wildcard inbox subscription. One per connection."""

    def __init__(self, nc: NATS, *, timeout: float = 5.0) -> None:
        self._nc = nc
        self._timeout = timeout
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
        if not msg.data and msg.headers and msg.headers.get("Status") == "503":
            fut.set_exception(
                PublishRejected(503, "no responders: the event stream is unavailable")
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
        try:
            await self._nc.publish(
                subject, payload, reply=f"{self._prefix}.{token}", headers=headers
            )
            ack = await fut
        finally:
            timer.cancel()
            self._pending.pop(token, None)
        if ack.error is not None:
            raise PublishRejected(ack.error.err_code, ack.error.description)
        return ack.seq

    async def publish_fenced(
        self,
        stream: str,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        *,
        expected_last: int,
        index: int,
        retries: int = 5,
    ) -> int:
        """Store exactly once after ``expected_last`` on ``subject``; returns the new sequence.

        ``headers`` must carry ``Genjobs-Index`` and ``Genjobs-Writer``; together they are how a
        stored retry is told apart from another writer's event at the same index.

        Raises:
            OwnershipLost: another writer appended to the subject (we were fenced out).
            StoreFailed: the server refused the event, or it could not be stored after retries.
        """
        h = dict(headers)
        h[HDR_EXPECTED_LAST_SUBJ_SEQ] = str(expected_last)
        last_error: Exception | None = None
        for attempt in range(retries + 1):
            try:
                return await self.publish_once(subject, payload, dict(h))
            except PublishTimeout as e:
                last_error = e
                log.warning("publish to %s timed out (attempt %d), retrying", subject, attempt + 1)
                continue
            except PublishRejected as e:
                if e.err_code == WRONG_LAST_SEQUENCE:
                    seq = await self._stored_by_us(stream, subject, h)
                    if seq is not None:
                        return seq
                    raise OwnershipLost(subject, f"another writer appended: {e.description}") from e
                if e.err_code == 503:
                    # No responders: a leader election or a restart. Back off instead of
                    # burning the retries in milliseconds (about 6 s over 5 retries).
                    last_error = e
                    await asyncio.sleep(min(0.2 * 2**attempt, 3.0))
                    continue
                raise StoreFailed(f"event {index} on {subject} refused: {e.description}") from e
        raise StoreFailed(
            f"event {index} on {subject} not stored after {retries + 1} attempts: {last_error}"
        ) from last_error

    async def _stored_by_us(self, stream: str, subject: str, sent: dict[str, str]) -> int | None:
        """After "wrong last sequence": is the subject's last message the one we sent?"""
        msg = await direct_get_last(self._nc, stream, subject, timeout=self._timeout)
        if msg is None:
            return None
        seq, headers = msg
        if all(headers.get(k) == sent.get(k) for k in ("Genjobs-Index", "Genjobs-Writer")):
            return seq
        return None


async def direct_get_last(
    nc: NATS, stream: str, subject: str, *, timeout: float = 5.0
) -> tuple[int, dict[str, Any]] | None:
    """The last message on ``subject`` as (seq, headers), or None if the subject is empty.

    Raises:
        StoreFailed: the stream did not answer.
    """
    try:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}",
            msgspec.json.encode({"last_by_subj": subject}),
            timeout=timeout,
        )
    except Exception as e:  # nats.errors.TimeoutError / NoRespondersError
        raise StoreFailed(f"direct get of {subject} failed: {e!r}") from e
    headers = dict(reply.headers or {})
    status = headers.get("Status")
    if status == "404":
        return None
    if status is not None:
        raise StoreFailed(f"direct get of {subject}: status {status} {headers.get('Description')}")
    return int(headers["Nats-Sequence"]), headers
