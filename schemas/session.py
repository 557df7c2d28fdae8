"""Durable reader sessions: their errors, wire values and consumer names (no I/O).

The I/O lives in :mod:`service.sessions`; this module is what a caller needs to name a session,
handle its errors and read its events. Consumer names (deterministic, injective, always a valid
JetStream name): ``job_id`` and ``name`` must match ``[A-Za-z0-9_-]{1,128}`` (docs/protocol.md, Identifiers) and are
checked before anything reaches the server. The consumer is ``sess_<len(job_id)>_<job_id>_<name>``
when that is at most 128 characters (readable in ``nats consumer ls``; the length prefix makes
``("a_b", "c")`` and ``("a", "b_c")`` differ), else
``sess_h_<first 40 hex digits of sha256("<job_id>/<name>")>`` (``/`` occurs in neither part; a
readable name always has a digit after ``sess_``, so the two forms never meet).
"""

from __future__ import annotations

import hashlib
from typing import Final

import msgspec

from schemas.errors import BadRequest, Conflict, GenjobsError, InvalidId, NotFound, Unavailable
from schemas.events import TERMINAL_KINDS
from schemas.ids import ID_RE

__all__ = [
    "AckNotApplied",
    "InvalidSessionId",
    "NotDelivered",
    "SessionClosed",
    "SessionError",
    "SessionEvent",
    "SessionInfo",
    "SessionNotFound",
    "SessionUnavailable",
    "session_consumer_name",
    "validate_session_ids",
]

_READABLE_MAX: Final = 128


# Errors --------------------------------------------------------------------------------------


# Each error is also one of the shared service errors (schemas.errors), so the service API maps
# it to its code (invalid_id, not_found, unavailable, bad_request, conflict) without a table.


class SessionError(GenjobsError):
    """Something about session ``name`` on job ``job_id`` failed."""

    def __init__(self, job_id: str, name: str, message: str, **details: object) -> None:
        self.job_id = job_id
        self.name = name
        super().__init__(
            f"session {_shown(name)} on job {_shown(job_id)}: {message}",
            job_id=job_id,
            session=name,
            **details,
        )


def _shown(value: str) -> str:
    """Ids in messages: repr (an invalid one may hold a newline) and cut (it may be huge)."""
    return repr(value) if len(value) <= 40 else repr(value[:40] + "...")


class InvalidSessionId(SessionError, InvalidId, ValueError):
    """``job_id`` or ``name`` is not ``[A-Za-z0-9_-]{1,128}``; refused before any I/O."""

    def __init__(self, job_id: str, name: str, field: str) -> None:
        self.field = field
        super().__init__(
            job_id, name, f"invalid {field}: must match [A-Za-z0-9_-]{{1,128}}", field=field
        )


class SessionNotFound(SessionError, NotFound):
    """The session does not exist: never opened, deleted, or removed by the server after
    ``session_inactive`` seconds without a read. Opening it again starts from the first event."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(job_id, name, "not found (deleted or expired by inactivity)")


class SessionUnavailable(SessionError, Unavailable):
    """JetStream did not do what was asked (timeout, connection closed, stream missing, API
    error). The cause is chained; retrying may help."""


class SessionClosed(SessionError, BadRequest):
    """This :class:`DurableSession` object was closed; the server-side session is untouched."""

    def __init__(self, job_id: str, name: str) -> None:
        super().__init__(job_id, name, "session object is closed")


class NotDelivered(SessionError, BadRequest, ValueError):
    """An ack named a sequence this session has not been delivered yet.

    Refused because JetStream would ignore it (and an acknowledgement of unseen events would be a
    bug in the caller anyway)."""

    def __init__(self, job_id: str, name: str, seq: int, delivered_seq: int) -> None:
        self.seq = seq
        self.delivered_seq = delivered_seq
        super().__init__(
            job_id,
            name,
            f"cannot acknowledge seq {seq}: only delivered up to {delivered_seq}",
            seq=seq,
            delivered_seq=delivered_seq,
        )


class AckNotApplied(SessionError, Conflict):
    """The server kept ignoring an acknowledgement (acks racing on one session). The events stay
    pending and will be redelivered; nothing is lost."""

    def __init__(self, job_id: str, name: str, seq: int, ack_floor_seq: int) -> None:
        self.seq = seq
        self.ack_floor_seq = ack_floor_seq
        super().__init__(
            job_id,
            name,
            f"acknowledgement of seq {seq} not applied (ack floor {ack_floor_seq})",
            seq=seq,
            ack_floor_seq=ack_floor_seq,
        )


# Wire-facing values --------------------------------------------------------------------------


class SessionEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event as a session sees it. ``data`` is the LibreChat event JSON, untouched, so an SSE
    gateway can forward it without decoding. ``index`` is -1 and ``kind`` is ``""`` when a message
    lacks the headers (tolerant decoding: a foreign message must not wedge a session)."""

    seq: int
    index: int
    kind: str
    data: bytes

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


class SessionInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Server-side state of a session (stream sequences, not consumer sequences)."""

    job_id: str
    name: str
    consumer: str
    delivered_seq: int
    """Highest stream sequence delivered to this session (0: nothing yet)."""
    ack_floor_seq: int
    """Every event with ``seq <= ack_floor_seq`` is acknowledged."""
    num_pending: int
    """Events stored for the job and not delivered to this session yet."""
    num_ack_pending: int
    """Events delivered and not acknowledged: exactly what :meth:`DurableSession.pending` lists
    (unless some were removed from the stream meanwhile)."""
    num_redelivered: int


# Names ---------------------------------------------------------------------------------------


def validate_session_ids(job_id: str, name: str) -> None:
    """Refuse ids that could inject ``.``, ``*``, ``>`` or whitespace into subjects or names.

    ``fullmatch`` rather than ``match(...$)``: ``$`` also matches before a trailing newline.

    Raises:
        InvalidSessionId: either id does not match ``[A-Za-z0-9_-]{1,128}``.
    """
    if not isinstance(job_id, str) or ID_RE.fullmatch(job_id) is None:
        raise InvalidSessionId(str(job_id), str(name), "job_id")
    if not isinstance(name, str) or ID_RE.fullmatch(name) is None:
        raise InvalidSessionId(job_id, str(name), "name")


def session_consumer_name(job_id: str, name: str) -> str:
    """The durable consumer name of a session (the mapping is described in the module doc).

    Raises:
        InvalidSessionId: either id is invalid.
    """
    validate_session_ids(job_id, name)
    readable = f"sess_{len(job_id)}_{job_id}_{name}"
    if len(readable) <= _READABLE_MAX:
        return readable
    digest = hashlib.sha256(f"{job_id}/{name}".encode()).hexdigest()[:40]
    return f"sess_h_{digest}"
