"""Durable Streams stored in JetStream and KV: one subject per stream incarnation, one message
per append, state carried by the messages themselves.

Layout (docs/http.md, "Storage layout"):

* Stream ``<PREFIX>_DS``, subject ``<prefix>.ds.<incarnation>``: every append is one message,
  its body the appended bytes (a JSON stream stores the POST's values, an array flattened one
  level). Offsets are the messages' stream sequences. A close without data is an empty message.
* Bucket ``<prefix>-ds``: ``n.<base64url(name)>`` is the stream's record (incarnation, content
  type, TTL/expiry, fork, references, soft-deletion, owner), written with ``create`` and
  revision-checked updates; ``c.<incarnation>`` a snapshot of the folded state (a cache);
  ``a.<incarnation>`` the last access of a stream with a TTL.

The commit point of an append is its publish. Its producer tuple (``Producer-Id/Epoch/Seq``),
its ``Stream-Seq`` and its close flag travel as headers of the same message, so the state
that validates the next append is a fold of the subject's messages; the KV snapshot only saves
re-reading them. Every publish carries ``Nats-Expected-Last-Subject-Sequence`` = the last
sequence of the state it was validated against: a writer elsewhere that appended first makes
it fail, and the append is re-validated against the newer state and retried. A recreated
stream gets a new incarnation, hence a new subject: it never shows the old one's data.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

import msgspec
from msgspec.structs import replace
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from service.config import Settings
from service.directget import DirectGetClient, StoredMsg, client_for
from service.provision import provision_durable
from service.publisher import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    HDR_EXPECTED_LAST_SUBJ_SEQ,
    WRONG_LAST_SEQUENCE,
    FencedPublisher,
    PublishRejected,
    PublishTimeout,
)

from . import protocol as p

log = logging.getLogger("genjobs.http.durable")

# Headers of a stored message (the append's own state).
M_CLOSE: Final = "Ds-Close"
M_PRODUCER: Final = "Ds-Pid"
M_EPOCH: Final = "Ds-Pep"
M_PSEQ: Final = "Ds-Psq"
M_SEQ: Final = "Ds-Seq"
M_APPEND: Final = "Ds-Aid"

READ_BATCH: Final = 1000
READ_MAX_BYTES: Final = 4 * 1024 * 1024
"""A catch-up response stops after the message that crosses this many bytes (always one)."""
SNAPSHOT_EVERY: Final = 64
"""Appends between two state snapshots in KV."""
STATE_CACHE: Final = 10_000
MAX_FENCE_RETRIES: Final = 1000


class DsError(Exception):
    """An answer other than success: HTTP status, text, extra response headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# Records -------------------------------------------------------------------------------
class Segment(msgspec.Struct, frozen=True, array_like=True):
    """Messages of ``inc`` with ``lo < seq <= cap``, inherited by a fork."""

    inc: str
    lo: int
    cap: int


class ForkInfo(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    source_inc: str
    offset: int
    sub: int = 0
    chain: tuple[Segment, ...] = ()


class StreamRecord(msgspec.Struct, frozen=True, kw_only=True):
    inc: str
    content_type: str
    created: float
    ttl: int | None = None
    expires_at: str | None = None
    expires_ts: float | None = None
    fork: ForkInfo | None = None
    refs: tuple[str, ...] = ()
    deleted: bool = False
    tenant: str | None = None
    user: str | None = None

    @property
    def base(self) -> int:
        """The tail while the stream's own subject is empty."""
        return self.fork.offset if self.fork else 0

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self.fork.chain if self.fork else ()


class Snapshot(msgspec.Struct, kw_only=True):
    tail: int = 0
    closed: bool = False
    closed_by: tuple[str, int, int] | None = None
    stream_seq: str | None = None
    producers: dict[str, tuple[int, int]] = msgspec.field(default_factory=dict)


_rec_enc = msgspec.json.Encoder()
_rec_dec = msgspec.json.Decoder(StreamRecord)
_snap_dec = msgspec.json.Decoder(Snapshot)


@dataclass(slots=True)
class StreamState:
    """The fold of a stream's own messages up to ``tail`` (0: none folded)."""

    tail: int = 0
    closed: bool = False
    closed_by: tuple[str, int, int] | None = None
    stream_seq: str | None = None
    producers: dict[str, tuple[int, int]] = field(default_factory=dict)
    unsnapped: int = 0

    def apply(self, m: StoredMsg) -> None:
        pid = m.header(M_PRODUCER)
        tup: tuple[str, int, int] | None = None
        if pid is not None:
            tup = (pid, int(m.header(M_EPOCH) or 0), int(m.header(M_PSEQ) or 0))
            self.producers[pid] = (tup[1], tup[2])
        seq = m.header(M_SEQ)
        if seq is not None:
            self.stream_seq = seq
        if m.header(M_CLOSE) is not None:
            self.closed = True
            self.closed_by = tup
        self.tail = m.seq
        self.unsnapped += 1

    def snapshot(self) -> Snapshot:
        return Snapshot(
            tail=self.tail,
            closed=self.closed,
            closed_by=self.closed_by,
            stream_seq=self.stream_seq,
            producers=dict(self.producers),
        )

    @classmethod
    def of(cls, snap: Snapshot) -> StreamState:
        return cls(
            tail=snap.tail,
            closed=snap.closed,
            closed_by=snap.closed_by,
            stream_seq=snap.stream_seq,
            producers=dict(snap.producers),
        )


@dataclass(frozen=True, slots=True)
class Producer:
    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class AppendRequest:
    """One POST. ``payload`` is what gets stored (``None``: close only)."""

    payload: bytes | None
    close: bool = False
    producer: Producer | None = None
    stream_seq: str | None = None


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    status: int
    headers: dict[str, str]
    seq: int = 0
    stored: bool = False


@dataclass(slots=True)
class ReadResult:
    msgs: list[StoredMsg]
    """Messages consumed, in order (a close without data is a message with an empty body)."""
    next_seq: int
    up_to_date: bool
    closed: bool
    """The stream is closed and ``next_seq`` is its final offset (only with ``up_to_date``)."""


@dataclass(frozen=True, slots=True)
class CreateSpec:
    content_type: str | None
    ttl: int | None = None
    expires_at: str | None = None
    expires_ts: float | None = None
    closed: bool = False
    body: bytes = b""
    fork_from: str | None = None
    fork_offset: int | None = None
    fork_sub: int | None = None
    tenant: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class CreateOutcome:
    created: bool
    record: StreamRecord
    tail: int
    closed: bool


def name_key(name: str) -> str:
    return "n." + base64.urlsafe_b64encode(name.encode()).rstrip(b"=").decode("ascii")


def _key_name(key: str) -> str:
    raw = key[2:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


class DurableStore:
    """Every read and write of Durable Streams, over the project's NATS adapter.

    One per gateway process; any number of gateways may serve the same streams at once.
    """

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.s = settings
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.dg: DirectGetClient = client_for(nc)
        self.publisher = FencedPublisher(
            nc, timeout=settings.publish_timeout, outage_budget=settings.publish_outage_budget
        )
        self.stream = settings.ds_stream_name
        self.kv_stream = f"KV_{settings.ds_bucket}"
        self.kv_prefix = f"$KV.{settings.ds_bucket}."
        self.kv: KeyValue
        self._states: OrderedDict[str, StreamState] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._access: dict[str, float] = {}  # incarnation -> last access known here
        self._access_written: dict[str, float] = {}

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

    # --- KV -----------------------------------------------------------------------------

    async def _kv_get(self, key: str) -> tuple[bytes, int] | None:
        """A key's value and revision (Direct Get on the bucket's stream); ``None``: no key."""
        m = await self.dg.last_msg(
            self.kv_stream, self.kv_prefix + key, timeout=self.s.request_timeout
        )
        if m is None or m.header("KV-Operation") is not None:
            return None
        return m.data, m.seq

    async def lookup(self, name: str) -> tuple[StreamRecord, int] | None:
        got = await self._kv_get(name_key(name))
        if got is None:
            return None
        return _rec_dec.decode(got[0]), got[1]

    async def _update(self, name: str, rec: StreamRecord, rev: int) -> int | None:
        """Revision-checked write of a record; ``None``: it changed meanwhile."""
        try:
            return int(await self.kv.update(name_key(name), _rec_enc.encode(rec), last=rev))
        except KeyWrongLastSequenceError:
            return None

    # --- expiry -------------------------------------------------------------------------

    async def _expired(self, rec: StreamRecord) -> bool:
        now = time.time()
        if rec.expires_ts is not None and now >= rec.expires_ts:
            return True
        if rec.ttl is None:
            return False
        known = max(rec.created, self._access.get(rec.inc, 0.0))
        if now < known + rec.ttl:
            return False
        got = await self._kv_get("a." + rec.inc)  # another gateway may have seen it since
        if got is not None:
            known = max(known, float(got[0]))
            self._access[rec.inc] = known
        return now >= known + rec.ttl

    async def touch(self, rec: StreamRecord) -> None:
        """Reset a TTL stream's sliding window (reads and writes do; HEAD does not).

        Writes at most every tenth of the TTL (and every minute at most), so a busy stream
        costs one KV write per window, not per request.
        """
        if rec.ttl is None:
            return
        now = time.time()
        self._access[rec.inc] = now
        last = self._access_written.get(rec.inc, rec.created)
        if now - last < min(60.0, rec.ttl / 10):
            return
        self._access_written[rec.inc] = now
        await self.kv.put("a." + rec.inc, repr(now).encode())

    async def resolve(self, name: str, *, touch: bool) -> tuple[StreamRecord, int]:
        """The live record of ``name``; expires it on the way if its time has come.

        Raises:
            DsError: 404 no such stream (or it just expired), 410 soft-deleted.
        """
        got = await self.lookup(name)
        if got is None:
            raise DsError(404, "Stream not found")
        rec, rev = got
        if rec.deleted:
            raise DsError(410, "Stream is gone")
        if await self._expired(rec):
            gone = await self._expire(name, rec, rev)
            raise DsError(410, "Stream is gone") if gone else DsError(404, "Stream not found")
        if touch:
            await self.touch(rec)
        return rec, rev

    async def _expire(self, name: str, rec: StreamRecord, rev: int) -> bool:
        """Remove an expired stream; one with forks is soft-deleted. True: it is soft-deleted."""
        while True:
            if rec.refs:
                if rec.deleted or await self._update(name, replace(rec, deleted=True), rev):
                    return True
            elif await self._destroy(name, rec, rev):
                return False
            got = await self.lookup(name)
            if got is None or got[0].inc != rec.inc:
                return False
            rec, rev = got

    async def sweep(self) -> int:
        """Expire every stream whose time has come; returns how many were expired."""
        try:
            keys = await self.kv.keys(filters=["n.*"])
        except Exception as e:  # nats-py raises NoKeysError when the bucket is empty
            if type(e).__name__ == "NoKeysError":
                return 0
            raise
        expired = 0
        for key in keys:
            name = _key_name(key)
            got = await self.lookup(name)
            if got is None or got[0].deleted:
                continue
            rec, rev = got
            if (rec.ttl is not None or rec.expires_ts is not None) and await self._expired(rec):
                await self._expire(name, rec, rev)
                expired += 1
        return expired

    # --- state ----------------------------------------------------------------------------

    def _lock(self, inc: str) -> asyncio.Lock:
        lock = self._locks.get(inc)
        if lock is None:
            lock = self._locks[inc] = asyncio.Lock()
        return lock

    async def _catch_up(
        self, rec: StreamRecord, st: StreamState, look_for: str | None = None
    ) -> tuple[StreamState, int | None]:
        """Fold the messages stored after ``st.tail``; also reports the sequence of the
        message carrying append id ``look_for`` if it is among them."""
        found: int | None = None
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
                if look_for is not None and m.header(M_APPEND) == look_for:
                    found = m.seq
            if not msgs or pending == 0:
                break
        self._remember(rec.inc, st)
        return st, found

    def _remember(self, inc: str, st: StreamState) -> None:
        self._states[inc] = st
        self._states.move_to_end(inc)
        while len(self._states) > STATE_CACHE:
            self._states.popitem(last=False)

    async def _state(self, rec: StreamRecord) -> tuple[StreamState, bool]:
        """The stream's state as this process knows it, and whether it was just read."""
        st = self._states.get(rec.inc)
        if st is not None:
            return st, False
        got = await self._kv_get("c." + rec.inc)
        st = StreamState.of(_snap_dec.decode(got[0])) if got else StreamState()
        st, _ = await self._catch_up(rec, st)
        return st, True

    async def _snapshot(self, rec: StreamRecord, st: StreamState) -> None:
        if st.unsnapped < SNAPSHOT_EVERY and not st.closed:
            return
        st.unsnapped = 0
        await self.kv.put("c." + rec.inc, _rec_enc.encode(st.snapshot()))

    # --- append ---------------------------------------------------------------------------

    async def append(self, rec: StreamRecord, req: AppendRequest) -> AppendOutcome:
        """Validate against the stream's state and store, exactly once, fenced.

        Raises:
            DsError: 503 JetStream unavailable past the outage budget, 500 refused.
        """
        async with self._lock(rec.inc):
            st, fresh = await self._state(rec)
            append_id = uuid.uuid4().hex
            loop = asyncio.get_running_loop()
            first_failure: float | None = None
            backoff = BACKOFF_FIRST
            for _ in range(MAX_FENCE_RETRIES):
                verdict = _decide(st, req)
                if verdict is not None:
                    if fresh:
                        if isinstance(verdict, DsError):
                            raise verdict
                        return verdict
                    # A refusal or a duplicate must not rest on a stale cache: another
                    # gateway may have appended. Only a publish is fenced by the server.
                    st, _ = await self._catch_up(rec, st)
                    fresh = True
                    continue
                headers = _message_headers(req, append_id)
                headers[HDR_EXPECTED_LAST_SUBJ_SEQ] = str(st.tail)
                try:
                    seq = await self.publisher.publish_once(
                        self.subject(rec.inc), req.payload or b"", headers
                    )
                except PublishRejected as e:
                    if e.err_code == WRONG_LAST_SEQUENCE:
                        st, _ = await self._catch_up(rec, st)
                        fresh = True
                        continue
                    if not e.transient:
                        raise DsError(500, f"append refused: {e.description}") from e
                    error: Exception = e
                except PublishTimeout as e:
                    error = e
                    try:
                        st, landed = await self._catch_up(rec, st, look_for=append_id)
                    except Exception as read_error:
                        log.warning("read-back after an unanswered append failed: %r", read_error)
                    else:
                        fresh = True
                        if landed is not None:
                            return _success(req, landed, st)
                else:
                    st.apply(_as_stored(seq, headers))
                    self._remember(rec.inc, st)
                    await self._snapshot(rec, st)
                    return _success(req, seq, st)
                now = loop.time()
                first_failure = now if first_failure is None else first_failure
                if now - first_failure > self.s.publish_outage_budget:
                    raise DsError(503, f"stream storage unavailable: {error}") from error
                log.warning("append to %s failed: %r; retrying", rec.inc, error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            raise DsError(503, "append kept losing the race against other writers")

    # --- reads ----------------------------------------------------------------------------

    async def read(
        self,
        rec: StreamRecord,
        after: int,
        *,
        max_bytes: int = READ_MAX_BYTES,
        max_msgs: int = READ_BATCH,
    ) -> ReadResult:
        """The messages after sequence ``after``: inherited segments first, then the
        stream's own; stops after the message that reaches ``max_bytes`` or ``max_msgs``."""
        out: list[StoredMsg] = []
        size = 0
        x = after
        timeout = self.s.request_timeout
        for seg in rec.segments:
            if x >= seg.cap:
                continue
            start = max(x, seg.lo) + 1
            while True:
                msgs, pending = await self.dg.get_batch(
                    self.stream,
                    self.subject(seg.inc),
                    start,
                    max_msgs - len(out),
                    timeout=timeout,
                    max_bytes=max(1, max_bytes - size),
                )
                beyond = False
                for m in msgs:
                    if m.seq > seg.cap:
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
        # tells whether the stream was closed there without another request.
        subject = self.subject(rec.inc)
        probe = max(x, rec.base, 1)
        last_seen: StoredMsg | None = None
        while True:
            msgs, pending = await self.dg.get_batch(
                self.stream,
                subject,
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
                    closed = done and m.header(M_CLOSE) is not None
                    return ReadResult(out, x, done, closed)
            if not msgs or pending == 0:
                break
            probe = x + 1
        if last_seen is None:
            last_seen = await self.dg.last_msg(self.stream, subject, timeout=timeout)
            if last_seen is not None and last_seen.seq > x:
                # Stored between the two requests: read again rather than skip it.
                return await self.read(rec, after, max_bytes=max_bytes, max_msgs=max_msgs)
        closed = last_seen is not None and last_seen.header(M_CLOSE) is not None
        if out:  # nothing left after x but (for a fork) the gap up to its fork offset
            return ReadResult(out, max(x, rec.base), True, closed)
        tail = last_seen.seq if last_seen is not None else rec.base
        return ReadResult(out, max(tail, rec.base), True, closed)

    async def tail(self, rec: StreamRecord) -> tuple[int, bool]:
        """The stream's tail sequence and whether it is closed."""
        last = await self.dg.last_msg(
            self.stream, self.subject(rec.inc), timeout=self.s.request_timeout
        )
        if last is None:
            return rec.base, False
        return max(last.seq, rec.base), last.header(M_CLOSE) is not None

    async def first_data_after(self, rec: StreamRecord, after: int) -> StoredMsg | None:
        """The first message with data after ``after`` (for a fork's sub-offset)."""
        x = after
        while True:
            res = await self.read(rec, x, max_msgs=64)
            for m in res.msgs:
                if m.data:
                    return m
            if res.up_to_date or not res.msgs:
                return None
            x = res.next_seq

    # --- create ---------------------------------------------------------------------------

    async def create(self, name: str, spec: CreateSpec) -> CreateOutcome:
        """PUT: create ``name`` (201), or confirm an identical existing one (200).

        Raises:
            DsError: 409 different configuration or soft-deleted, 404 fork source missing,
                400 bad fork offset or sub-offset, 409 fork content type mismatch.
        """
        while True:
            got = await self.lookup(name)
            if got is not None:
                rec, rev = got
                if rec.deleted:
                    raise DsError(409, "Stream was deleted but still has active forks")
                if await self._expired(rec):
                    await self._expire(name, rec, rev)
                    continue
                return await self._confirm(rec, spec)
            outcome = await self._create_new(name, spec)
            if outcome is not None:
                return outcome

    async def _confirm(self, rec: StreamRecord, spec: CreateSpec) -> CreateOutcome:
        tail, closed = await self.tail(rec)
        want_ct = p.media_type(spec.content_type) or (
            None if spec.fork_from else p.DEFAULT_CONTENT_TYPE
        )
        same = (
            (want_ct is None or want_ct == p.media_type(rec.content_type))
            and (spec.closed == closed)
            and (spec.fork_from == (rec.fork.source if rec.fork else None))
        )
        if same and rec.fork is not None:
            same = (spec.fork_offset is None or spec.fork_offset == rec.fork.offset) and (
                (spec.fork_sub or 0) == rec.fork.sub
            )
        if same and not (spec.fork_from and spec.ttl is None and spec.expires_at is None):
            same = spec.ttl == rec.ttl and spec.expires_at == rec.expires_at
        if not same:
            raise DsError(409, "Stream already exists with different configuration")
        return CreateOutcome(False, rec, tail, closed)

    async def _create_new(self, name: str, spec: CreateSpec) -> CreateOutcome | None:
        """None: someone else created ``name`` meanwhile (the caller compares again)."""
        inc = uuid.uuid4().hex
        content_type = spec.content_type or p.DEFAULT_CONTENT_TYPE
        fork: ForkInfo | None = None
        prefix: bytes | None = None
        ttl, expires_at, expires_ts = spec.ttl, spec.expires_at, spec.expires_ts
        source: tuple[StreamRecord, int] | None = None
        if spec.fork_from is not None:
            source = await self._fork_source(spec.fork_from)
            src, _ = source
            if spec.content_type and p.media_type(spec.content_type) != p.media_type(
                src.content_type
            ):
                raise DsError(409, "Content type mismatch with source stream")
            content_type = spec.content_type or src.content_type
            src_tail, _ = await self.tail(src)
            offset = src_tail if spec.fork_offset is None else spec.fork_offset
            if offset > src_tail:
                raise DsError(400, "Fork offset beyond source stream length")
            if spec.fork_sub:
                prefix = await self._sub_offset_prefix(src, offset, spec.fork_sub)
            chain = [
                Segment(s.inc, s.lo, min(s.cap, offset)) for s in src.segments if s.lo < offset
            ]
            if offset > src.base:
                chain.append(Segment(src.inc, src.base, offset))
            fork = ForkInfo(
                source=spec.fork_from,
                source_inc=src.inc,
                offset=offset,
                sub=spec.fork_sub or 0,
                chain=tuple(c for c in chain if c.cap > c.lo),
            )
            if ttl is None and expires_at is None:  # a fork inherits its source's expiry
                ttl, expires_at, expires_ts = src.ttl, src.expires_at, src.expires_ts
        body: bytes | None = spec.body or None
        if body is not None and p.is_json(content_type):
            try:
                body = p.json_fragment(body, allow_empty=True)
            except p.JsonBodyError as e:
                raise DsError(400, str(e)) from e
        # The data goes in first, under a subject nothing points to yet; the record that
        # makes it visible is created last, so a reader never sees a half-made stream.
        parts = [x for x in (prefix, body) if x]
        tail = 0
        subject = self.subject(inc)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            headers = {M_CLOSE: "1"} if (spec.closed and last) else {}
            tail = await self._put_initial(subject, part, headers, tail)
        if spec.closed and not parts:
            tail = await self._put_initial(subject, b"", {M_CLOSE: "1"}, tail)
        rec = StreamRecord(
            inc=inc,
            content_type=content_type,
            created=time.time(),
            ttl=ttl,
            expires_at=expires_at,
            expires_ts=expires_ts,
            fork=fork,
            tenant=spec.tenant,
            user=spec.user,
        )
        if source is not None and not await self._add_ref(spec.fork_from or "", source, inc):
            await self._purge(inc)
            raise DsError(409, "Source stream was deleted while forking")
        try:
            await self.kv.create(name_key(name), _rec_enc.encode(rec))
        except KeyWrongLastSequenceError:
            await self._purge(inc)
            if fork is not None:
                await self._drop_ref(fork.source, fork.source_inc, inc)
            return None
        return CreateOutcome(True, rec, max(tail, rec.base), spec.closed)

    async def _put_initial(
        self, subject: str, payload: bytes, headers: dict[str, str], last: int
    ) -> int:
        h = dict(headers)
        h[HDR_EXPECTED_LAST_SUBJ_SEQ] = str(last)
        try:
            return await self.publisher.publish_once(subject, payload, h)
        except (PublishRejected, PublishTimeout) as e:
            raise DsError(503, f"stream storage unavailable: {e}") from e

    async def _fork_source(self, source: str) -> tuple[StreamRecord, int]:
        got = await self.lookup(source)
        if got is None:
            raise DsError(404, "Source stream not found")
        rec, rev = got
        if rec.deleted:
            raise DsError(409, "Source stream was deleted but still has active forks")
        if await self._expired(rec):
            await self._expire(source, rec, rev)
            raise DsError(404, "Source stream not found")
        return rec, rev

    async def _sub_offset_prefix(self, src: StreamRecord, offset: int, sub: int) -> bytes:
        first = await self.first_data_after(src, offset)
        if first is None:
            raise DsError(400, "Invalid fork sub-offset: no data past the fork offset")
        if p.is_json(src.content_type):
            try:
                return p.json_prefix(first.data, sub)
            except p.JsonBodyError as e:
                raise DsError(400, f"Invalid fork sub-offset: {e}") from e
        if sub > len(first.data):
            raise DsError(400, "Invalid fork sub-offset: overshoots the message length")
        return first.data[:sub]

    async def _add_ref(self, name: str, source: tuple[StreamRecord, int], inc: str) -> bool:
        rec, rev = source
        while True:
            if rec.deleted:
                return False
            if await self._update(name, replace(rec, refs=(*rec.refs, inc)), rev):
                return True
            got = await self.lookup(name)
            if got is None or got[0].inc != rec.inc:
                return False
            rec, rev = got

    # --- delete ---------------------------------------------------------------------------

    async def delete(self, name: str) -> None:
        """DELETE: remove the stream; one that forks still read is soft-deleted (410 after).

        Raises:
            DsError: 404 no such stream, 410 already soft-deleted.
        """
        while True:
            rec, rev = await self.resolve(name, touch=False)
            if rec.refs:
                if await self._update(name, replace(rec, deleted=True), rev):
                    return
            elif await self._destroy(name, rec, rev):
                return

    async def _destroy(self, name: str, rec: StreamRecord, rev: int) -> bool:
        """Remove record and data, then release the source's reference (cascading to a
        soft-deleted source nobody reads any more). False: the record changed meanwhile."""
        try:
            await self.kv.delete(name_key(name), last=rev)
        except KeyWrongLastSequenceError:
            return False
        await self._purge(rec.inc)
        if rec.fork is not None:
            await self._drop_ref(rec.fork.source, rec.fork.source_inc, rec.inc)
        return True

    async def _purge(self, inc: str) -> None:
        self._states.pop(inc, None)
        self._access.pop(inc, None)
        self._access_written.pop(inc, None)
        await self.js.purge_stream(self.stream, subject=self.subject(inc))
        for key in ("c." + inc, "a." + inc):  # no purge markers left behind, unlike kv.purge
            await self.js.purge_stream(self.kv_stream, subject=self.kv_prefix + key)

    async def _drop_ref(self, name: str, source_inc: str, child: str) -> None:
        while True:
            got = await self.lookup(name)
            if got is None or got[0].inc != source_inc:
                return
            rec, rev = got
            refs = tuple(r for r in rec.refs if r != child)
            if rec.deleted and not refs:
                if await self._destroy(name, rec, rev):
                    return
            elif await self._update(name, replace(rec, refs=refs), rev):
                return

    async def names(self) -> AsyncIterator[str]:
        """Every stream name with a record (for the sweeper and tests)."""
        try:
            keys = await self.kv.keys(filters=["n.*"])
        except Exception as e:
            if type(e).__name__ == "NoKeysError":
                return
            raise
        for key in keys:
            yield _key_name(key)


# Validation ------------------------------------------------------------------------------
def _decide(st: StreamState, req: AppendRequest) -> AppendOutcome | DsError | None:
    """The answer to ``req`` without storing anything (a success or an error), or ``None``:
    store it.

    Order as the specification's: closed, then the producer (a retried duplicate is a success
    even if its Stream-Seq would now conflict), then Stream-Seq.
    """
    try:
        return _verdict(st, req)
    except DsError as e:
        return e


def _verdict(st: StreamState, req: AppendRequest) -> AppendOutcome | None:
    tail = p.format_offset(st.tail)
    prod = req.producer
    if st.closed:
        if prod is not None and st.closed_by == (prod.id, prod.epoch, prod.seq):
            return AppendOutcome(
                204,
                {
                    p.H_NEXT_OFFSET: tail,
                    p.H_CLOSED: "true",
                    p.H_PRODUCER_EPOCH: str(prod.epoch),
                    p.H_PRODUCER_SEQ: str(prod.seq),
                },
            )
        if req.payload is None and prod is None:
            return AppendOutcome(204, {p.H_NEXT_OFFSET: tail, p.H_CLOSED: "true"})
        raise DsError(409, "Stream is closed", {p.H_CLOSED: "true", p.H_NEXT_OFFSET: tail})
    if prod is not None:
        state = st.producers.get(prod.id)
        if state is None:
            if prod.seq != 0:
                _gap(0, prod.seq)
        else:
            epoch, last = state
            if prod.epoch < epoch:
                raise DsError(403, "Stale producer epoch", {p.H_PRODUCER_EPOCH: str(epoch)})
            if prod.epoch > epoch:
                if prod.seq != 0:
                    raise DsError(400, "New epoch must start with sequence 0")
            elif prod.seq <= last:
                return AppendOutcome(
                    204,
                    {
                        p.H_NEXT_OFFSET: tail,
                        p.H_PRODUCER_EPOCH: str(prod.epoch),
                        p.H_PRODUCER_SEQ: str(last),
                    },
                )
            elif prod.seq != last + 1:
                _gap(last + 1, prod.seq)
    if (
        req.stream_seq is not None
        and st.stream_seq is not None
        and req.stream_seq.encode() <= st.stream_seq.encode()
    ):
        raise DsError(409, "Sequence conflict")
    return None


def _gap(expected: int, received: int) -> None:
    raise DsError(
        409,
        "Producer sequence gap",
        {p.H_PRODUCER_EXPECTED: str(expected), p.H_PRODUCER_RECEIVED: str(received)},
    )


def _message_headers(req: AppendRequest, append_id: str) -> dict[str, str]:
    h = {M_APPEND: append_id}
    if req.close:
        h[M_CLOSE] = "1"
    if req.producer is not None:
        h[M_PRODUCER] = req.producer.id
        h[M_EPOCH] = str(req.producer.epoch)
        h[M_PSEQ] = str(req.producer.seq)
    if req.stream_seq is not None:
        h[M_SEQ] = req.stream_seq
    return h


def _as_stored(seq: int, headers: dict[str, str]) -> StoredMsg:
    return StoredMsg(seq, b"", headers=headers)


def _success(req: AppendRequest, seq: int, st: StreamState) -> AppendOutcome:
    headers = {p.H_NEXT_OFFSET: p.format_offset(seq)}
    if req.producer is not None:
        headers[p.H_PRODUCER_EPOCH] = str(req.producer.epoch)
        headers[p.H_PRODUCER_SEQ] = str(req.producer.seq)
    if st.closed:
        headers[p.H_CLOSED] = "true"
    status = 200 if req.producer is not None and req.payload is not None else 204
    return AppendOutcome(status, headers, seq, stored=True)
