"""Durable Streams records and state: what is in KV and in a stored message's headers.

Storage layout (docs/http.md, "Storage layout"):

* Stream ``<PREFIX>_DS``, subject ``<prefix>.ds.<incarnation>``: every append is one message,
  its body the appended bytes (a JSON stream stores the POST's values, an array flattened one
  level). Offsets are the messages' stream sequences. A close without data is an empty message.
* Bucket ``<prefix>-ds``: ``n.<base64url(name)>`` is the stream's record (incarnation, content
  type, TTL/expiry, fork, references, soft-deletion, owner), written with ``create`` and
  revision-checked updates; ``c.<incarnation>`` a snapshot of the folded state (a cache);
  ``a.<incarnation>`` the last access of a stream with a TTL.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Final

import msgspec

from schemas import headers as hdr
from service.nats.directget import StoredMsg

# Headers of a stored message (the append's own state).
M_CLOSE: Final = hdr.DS_CLOSE
M_PRODUCER: Final = hdr.DS_PRODUCER
M_EPOCH: Final = hdr.DS_EPOCH
M_PSEQ: Final = hdr.DS_PSEQ
M_SEQ: Final = hdr.DS_SEQ
M_APPEND: Final = hdr.DS_APPEND


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

    def copy(self) -> StreamState:
        return StreamState(
            tail=self.tail,
            closed=self.closed,
            closed_by=self.closed_by,
            stream_seq=self.stream_seq,
            producers=dict(self.producers),
            unsnapped=self.unsnapped,
        )

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
class Source:
    """Where a readable stream's messages are: its own subject (messages after ``base``), the
    segments it inherits (``(subject, lo, cap)``: messages with ``lo < seq <= cap``) read
    first, and what marks its end. A Durable Stream's end is a message with ``Ds-Close``; a
    genjobs job's is its terminal event (``close_kinds`` of ``Genjobs-Kind``)."""

    stream: str
    subject: str
    live_subject: str
    base: int = 0
    segments: tuple[tuple[str, int, int], ...] = ()
    close_kinds: frozenset[str] | None = None

    def closes(self, m: StoredMsg) -> bool:
        if self.close_kinds is None:
            return m.header(M_CLOSE) is not None
        return m.header(hdr.KIND) in self.close_kinds


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


def key_name(key: str) -> str:
    raw = key[2:]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()


_encoder: Final = msgspec.json.Encoder()
encode = _encoder.encode
decode_record = msgspec.json.Decoder(StreamRecord).decode
decode_snapshot = msgspec.json.Decoder(Snapshot).decode
