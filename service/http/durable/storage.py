"""Durable Streams in JetStream: appends (validated, fenced, exactly once) and reads.

The commit point of an append is its publish. Its producer tuple (``Producer-Id/Epoch/Seq``),
its ``Stream-Seq`` and its close flag travel as headers of the same message, so the state
that validates the next append is a fold of the subject's messages; the KV snapshot only saves
re-reading them. Every publish carries ``Nats-Expected-Last-Subject-Sequence`` = the last
sequence of the state it was validated against: a writer elsewhere that appended first makes
it fail, and the append is re-validated against the newer state and retried. A refusal or a
duplicate verdict is only given on a state just re-read from the stream, never on this
process's cache alone. The storage layout is in :mod:`.model`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Container
from typing import Final

import nats.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from schemas import headers as hdr
from service.config import Settings
from service.nats.directget import (
    DirectGetClient,
    StoredMsg,
    client_for,
)
from service.nats.directget import transient as direct_get_transient
from service.nats.outage import TRANSIENT_ERRORS, OutagePolicy, retry
from service.nats.provision import provision_durable
from service.nats.publisher import (
    FencedPublisher,
    PublishRejected,
    PublishTimeout,
)

from .model import (
    M_APPEND,
    DsError,
    ReadResult,
    Source,
    StreamRecord,
    StreamState,
    decode_record,
    decode_snapshot,
    encode,
    key_name,
    name_key,
)

log = logging.getLogger("genjobs.http.durable")

READ_BATCH: Final = 10_000
"""Messages per catch-up response at most (with :data:`READ_MAX_BYTES`)."""
READ_MAX_BYTES: Final = 4 * 1024 * 1024
"""A catch-up response stops after the message that crosses this many bytes (always one)."""
SNAPSHOT_EVERY: Final = 64
"""Appends between two state snapshots in KV."""
STATE_CACHE: Final = 10_000
READ_RETRIES: Final = 20


class DurableStore:
    """Every read and write of Durable Streams data, over the project's NATS adapter.

    One per gateway process; any number of gateways may serve the same streams at once.
    """

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.s = settings
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.dg: DirectGetClient = client_for(nc)
        self.policy = OutagePolicy.from_settings(settings)
        self.clock: Callable[[], float] = time.time
        """Wall clock of TTLs and expiry (tests move it)."""
        self.publisher = FencedPublisher(nc, timeout=settings.publish_timeout, policy=self.policy)
        self.stream = settings.ds_stream_name
        self.kv_stream = f"KV_{settings.ds_bucket}"
        self.kv_prefix = f"$KV.{settings.ds_bucket}."
        self.kv: KeyValue
        self._states: OrderedDict[str, StreamState] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._tails: dict[str, int] = {}  # subject -> last sequence this process knows stored
        # incarnation -> last access known here / last written to KV (bounded like the states:
        # forgetting one only costs a KV read or write)
        self._access: OrderedDict[str, float] = OrderedDict()
        self._access_written: OrderedDict[str, float] = OrderedDict()

    async def open(self) -> None:
        """Provision the stream and bucket (idempotent) and start the publisher.

        Raises:
            ProvisionMismatch: one of them exists with other settings.
        """
        await provision_durable(self.js, self.s)
        self.kv = await self.js.key_value(self.s.ds_bucket)
        await self.publisher.start()

    async def close(self) -> None:
        await self.publisher.close()

    @property
    def max_payload(self) -> int:
        """The largest append body: the connection's max payload minus room for headers."""
        return max(0, int(self.nc.max_payload) - 4096)

    def subject(self, inc: str) -> str:
        return self.s.ds_subject(inc)

    async def kv_get(self, key: str) -> tuple[bytes, int] | None:
        """A key's value and revision (Direct Get on the bucket's stream); ``None``: no key."""
        m = await self.dg.last_msg(
            self.kv_stream, self.kv_prefix + key, timeout=self.s.request_timeout
        )
        if m is None or m.header(hdr.KV_OPERATION) is not None:
            return None
        return m.data, m.seq

    async def lookup(self, name: str) -> tuple[StreamRecord, int] | None:
        """The record of ``name`` and its revision; an outage (a leader election, a restart)
        is ridden out under the outage policy before it raises.

        Raises:
            DirectGetError, and the TRANSIENT_ERRORS: still unavailable after the budget.
        """
        key = name_key(name)
        return await retry(
            lambda: self._lookup_once(key),
            self.policy,
            what=f"durable stream record {name!r}",
            transient=_lookup_transient,
        )

    async def _lookup_once(self, key: str) -> tuple[StreamRecord, int] | None:
        got = await self.kv_get(key)
        if got is None:
            # Direct Get may be answered by a replica behind the leader: a stream created a
            # moment ago must not read as missing. Ask the leader before saying so.
            got = await self._kv_get_leader(key)
        if got is None:
            return None
        return decode_record(got[0]), got[1]

    async def _kv_get_leader(self, key: str) -> tuple[bytes, int] | None:
        try:
            m = await self.js.get_msg(self.kv_stream, subject=self.kv_prefix + key)
        except NotFoundError:
            return None
        if m.headers and m.headers.get(hdr.KV_OPERATION) is not None:
            return None
        return m.data or b"", int(m.seq or 0)

    async def update(self, name: str, rec: StreamRecord, rev: int) -> int | None:
        """Revision-checked write of a record; ``None``: it changed meanwhile."""
        try:
            return int(await self.kv.update(name_key(name), encode(rec), last=rev))
        except KeyWrongLastSequenceError:
            return None

    async def expired(self, rec: StreamRecord) -> bool:
        now = self.clock()
        if rec.expires_ts is not None and now >= rec.expires_ts:
            return True
        if rec.ttl is None:
            return False
        known = max(rec.created, self._access.get(rec.inc, 0.0))
        if now < known + rec.ttl:
            return False
        got = await self.kv_get("a." + rec.inc)  # another gateway may have seen it since
        if got is not None:
            known = max(known, float(got[0]))
            _bounded_put(self._access, rec.inc, known)
        return now >= known + rec.ttl

    async def touch(self, rec: StreamRecord) -> None:
        """Reset a TTL stream's sliding window (reads and writes do; HEAD does not).

        Writes at most every tenth of the TTL (and every minute at most), so a busy stream
        costs one KV write per window, not per request.
        """
        if rec.ttl is None:
            return
        now = self.clock()
        _bounded_put(self._access, rec.inc, now)
        last = self._access_written.get(rec.inc, rec.created)
        if now - last < min(60.0, rec.ttl / 10):
            return
        _bounded_put(self._access_written, rec.inc, now)
        await self.kv.put("a." + rec.inc, repr(now).encode())

    async def catch_up(
        self, rec: StreamRecord, st: StreamState, look_for: Container[str] = ()
    ) -> tuple[StreamState, dict[str, int]]:
        """Fold the messages stored after ``st.tail``; also reports the sequences of the
        messages carrying the append ids ``look_for`` among them."""
        found: dict[str, int] = {}
        subject = self.subject(rec.inc)
        while True:
            msgs, pending = await self.dg.get_batch(
                self.stream,
                subject,
                st.tail + 1,
                READ_BATCH,
                timeout=self.s.request_timeout,
                max_bytes=READ_MAX_BYTES,
            )
            for m in msgs:
                st.apply(m)
                aid = m.header(M_APPEND)
                if aid is not None and aid in look_for:
                    found[aid] = m.seq
            if not msgs or pending == 0:
                break
        self.remember(rec.inc, st)
        return st, found

    def remember(self, inc: str, st: StreamState) -> None:
        self._tails[self.subject(inc)] = st.tail
        self._states[inc] = st
        self._states.move_to_end(inc)
        while len(self._states) > STATE_CACHE:
            gone, _ = self._states.popitem(last=False)
            self._tails.pop(self.subject(gone), None)

    async def state(self, rec: StreamRecord) -> tuple[StreamState, bool]:
        """The stream's state as this process knows it, and whether it was just read."""
        st = self._states.get(rec.inc)
        if st is not None:
            return st, False
        got = await self.kv_get("c." + rec.inc)
        st = StreamState.of(decode_snapshot(got[0])) if got else StreamState()
        st, _ = await self.catch_up(rec, st)
        return st, True

    async def snapshot(self, rec: StreamRecord, st: StreamState) -> None:
        if st.unsnapped < SNAPSHOT_EVERY and not st.closed:
            return
        st.unsnapped = 0
        try:
            await self.kv.put("c." + rec.inc, encode(st.snapshot()))
        except nats.errors.Error as e:  # only a cache: the next snapshot or a re-fold covers it
            log.warning("state snapshot of %s not written: %r", rec.inc, e)

    def source(self, rec: StreamRecord) -> Source:
        return Source(
            stream=self.stream,
            subject=self.subject(rec.inc),
            live_subject=self.s.ds_live_subject(rec.inc),
            base=rec.base,
            segments=tuple((self.subject(g.inc), g.lo, g.cap) for g in rec.segments),
        )

    async def read(
        self,
        src: Source,
        after: int,
        *,
        max_bytes: int = READ_MAX_BYTES,
        max_msgs: int = READ_BATCH,
    ) -> ReadResult:
        """The messages after sequence ``after``: inherited segments first, then the
        stream's own; stops after the message that reaches ``max_bytes`` or ``max_msgs``.

        Direct Get may be answered by a replica a little behind the leader; a read that ends
        before what this process itself stored is read again (read-your-writes)."""
        stored = self._tails.get(src.subject, 0)
        for attempt in range(READ_RETRIES):
            res = await self._read(src, after, max_bytes=max_bytes, max_msgs=max_msgs)
            if not res.up_to_date or res.next_seq >= stored:
                return res
            await asyncio.sleep(0.002 * (attempt + 1))
        return res

    async def _read(self, src: Source, after: int, *, max_bytes: int, max_msgs: int) -> ReadResult:
        out: list[StoredMsg] = []
        size = 0
        x = after
        timeout = self.s.request_timeout
        for subject, lo, cap in src.segments:
            if x >= cap:
                continue
            start = max(x, lo) + 1
            while True:
                msgs, pending = await self.dg.get_batch(
                    src.stream,
                    subject,
                    start,
                    max_msgs - len(out),
                    timeout=timeout,
                    max_bytes=max(1, max_bytes - size),
                )
                beyond = False
                for m in msgs:
                    if m.seq > cap:
                        beyond = True
                        break
                    out.append(m)
                    size += len(m.data)
                    x = m.seq
                    if size >= max_bytes or len(out) >= max_msgs:
                        return ReadResult(out, x, False, False)
                if beyond or not msgs or pending == 0:
                    break
                start = x + 1
        # The stream's own subject, from the message *at* the offset when there is one: it
        # tells whether the stream was closed there without another request. Nothing at or
        # before the base belongs to this stream (a fork's source, a job's earlier run).
        x = max(x, src.base)
        probe = max(x, 1)
        last_seen: StoredMsg | None = None
        while True:
            msgs, pending = await self.dg.get_batch(
                src.stream,
                src.subject,
                probe,
                max_msgs - len(out) + 1,
                timeout=timeout,
                max_bytes=max(1, max_bytes - size),
            )
            for i, m in enumerate(msgs):
                last_seen = m
                if m.seq <= x:
                    continue
                out.append(m)
                size += len(m.data)
                x = m.seq
                if size >= max_bytes or len(out) >= max_msgs:
                    done = i == len(msgs) - 1 and pending == 0
                    return ReadResult(out, x, done, done and src.closes(m))
            if not msgs or pending == 0:
                break
            probe = x + 1
        if last_seen is None:
            last_seen = await self.dg.last_msg(src.stream, src.subject, timeout=timeout)
            if last_seen is not None and last_seen.seq > x:
                # Stored between the two requests: read again rather than skip it.
                return await self._read(src, after, max_bytes=max_bytes, max_msgs=max_msgs)
        closed = last_seen is not None and last_seen.seq > src.base and src.closes(last_seen)
        if out:
            return ReadResult(out, x, True, closed)
        tail = last_seen.seq if last_seen is not None else src.base
        return ReadResult(out, max(tail, src.base), True, closed)

    async def tail(self, src: Source) -> tuple[int, bool]:
        """The stream's tail sequence and whether it is closed."""
        last = await self.dg.last_msg(src.stream, src.subject, timeout=self.s.request_timeout)
        if last is None or last.seq <= src.base:
            return src.base, False
        return last.seq, src.closes(last)

    async def first_data_after(self, rec: StreamRecord, after: int) -> StoredMsg | None:
        """The first message with data after ``after`` (for a fork's sub-offset)."""
        x = after
        src = self.source(rec)
        while True:
            res = await self.read(src, x, max_msgs=64)
            for m in res.msgs:
                if m.data:
                    return m
            if res.up_to_date or not res.msgs:
                return None
            x = res.next_seq

    async def put_initial(
        self, subject: str, payload: bytes, headers: dict[str, str], last: int
    ) -> int:
        h = dict(headers)
        h[hdr.EXPECTED_LAST_SUBJECT_SEQ] = str(last)
        try:
            return await self.publisher.publish_once(subject, payload, h)
        except (PublishRejected, PublishTimeout) as e:
            raise DsError(503, f"stream storage unavailable: {e}") from e

    async def purge(self, inc: str) -> None:
        self._states.pop(inc, None)
        self._tails.pop(self.subject(inc), None)
        self._access.pop(inc, None)
        self._access_written.pop(inc, None)
        await self.js.purge_stream(self.stream, subject=self.subject(inc))
        for key in ("c." + inc, "a." + inc):  # no purge markers left behind, unlike kv.purge
            await self.js.purge_stream(self.kv_stream, subject=self.kv_prefix + key)

    async def names(self) -> AsyncIterator[str]:
        """Every stream name with a record (the sweeper's list)."""
        info = await self.js.stream_info(self.kv_stream, subjects_filter=self.kv_prefix + "n.*")
        for subject in info.state.subjects or {}:
            yield key_name(subject[len(self.kv_prefix) :])


def _bounded_put(cache: OrderedDict[str, float], key: str, value: float) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > STATE_CACHE:
        cache.popitem(last=False)


def _lookup_transient(e: Exception) -> bool | None:
    """An outage for a record lookup: a Direct Get timeout or 503, or the leader's get
    unanswered (backed off, as a 503 is)."""
    fast = direct_get_transient(e)
    if fast is None and isinstance(e, TRANSIENT_ERRORS):
        return True
    return fast
