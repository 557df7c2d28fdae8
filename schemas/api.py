"""Requests and replies of the ``genjobs`` service API (docs/protocol.md, the service API) and the remote-ingest batch (docs/protocol.md, remote producers).

Where the LibreChat shapes come from (danny-avila/LibreChat):

- status reply ``{active, status, aggregatedContent, createdAt}``:
  ``GenerationJobManager.getStreamInfo`` (``packages/api/src/stream/GenerationJobManager.ts``)
  and the ``/chat/status/:conversationId`` route (``api/server/routes/agents/index.js``);
  genjobs adds ``seq``, the stream sequence the content is as of.
- resume snapshot ``{runSteps, aggregatedContent, userMessage, responseMessageId,
  conversationId, sender}`` (+ ``iconURL``, ``model`` in later versions): ``ResumeState`` in
  ``packages/api/src/stream/interfaces/IJobStore.ts``, returned by
  ``GenerationJobManager.getResumeState`` and sent as the ``{sync: true, resumeState}`` event;
  genjobs adds ``status`` and ``seq`` (the reader continues from ``seq + 1``).
- ``AbortResult {success, jobData, content, finalEvent, text, collectedUsage}``: ``IJobStore.ts``;
  genjobs adds ``usageAlreadyClaimed`` (docs/protocol.md, deviation d).
- ``{activeJobIds}``: the ``/chat/active`` route; counts ``{running, complete, error, aborted}``:
  ``GenerationJobManager.getJobCountByStatus``.
- ingest metadata: ``GenerationJobMetadata`` in ``packages/api/src/types/stream.ts``, the fields
  ``GenerationJobManager.updateMetadata`` persists.

Requests forbid unknown fields, so a misspelt field is refused instead of silently ignored;
replies ignore them, so an older client keeps working against a newer replica. Ids are plain
``str`` here: endpoints check them with :mod:`schemas.ids` so that the error code is
``invalid_id``, not ``bad_request``.

Remote ingest batch (``genjobs.ingest.<job_id>``), applied by the owner in this order:

1. ``metadata`` — a patch of the job record (``responseMessageId``, ``sender``,
   ``conversationId``, ``userMessage``, ``endpoint``, ``iconURL``, ``model``, ``promptTokens``).
   Applied first, so the events of the same batch already see it. Takes no event index; applying
   the same patch twice changes nothing.
2. ``events`` — LibreChat events at indices ``firstIndex``, ``firstIndex + 1``, ... Terminal
   events are not allowed here.
3. ``usage`` — one :class:`~schemas.usage.UsageRecord` per model call, each stored as an
   ``{"event": "on_token_usage", "data": ...}`` event at the next indices. Usage travels in the
   indexed log so that a resent batch is recognised by its indices and usage is recorded
   exactly once, and so it survives the owner.
4. ``complete`` (a final event) or ``error`` (a message, stored as ``{"error": ...}``) at the next
   index; it ends the job.

A batch therefore spans ``len(events) + len(usage) + (1 if terminal)`` indices
(:attr:`IngestBatch.span`). Resending a batch whose indices are already stored is acknowledged
without storing anything twice; the reply's ``nextIndex`` is where the producer continues, and
``aborted: true`` tells it to stop generating.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final, TypeVar, cast

import msgspec
from msgspec import Meta, Struct, field

from schemas.events import EventKind, classify, validate_event
from schemas.job import JobRecord
from schemas.usage import Tokens, UsageRecord

NonNegative = Annotated[int, Meta(ge=0)]


class _Request(
    Struct,
    frozen=True,
    kw_only=True,
    omit_defaults=True,
    rename="camel",
    forbid_unknown_fields=True,
):
    """Strict: bad input is refused with a message that names the field."""


class _Reply(Struct, frozen=True, kw_only=True, rename="camel"):
    """Tolerant: unknown fields are ignored; every key is written, absent values as ``null``."""


# -- requests -----------------------------------------------------------------------------


class CreateRequest(_Request, frozen=True, kw_only=True):
    user_id: str
    conversation_id: str | None = None
    job_id: str | None = None
    tenant_id: str | None = None
    # Not an id (it never reaches a subject), but bounded: it is stored with the job.
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    replace: bool = False


class JobRequest(_Request, frozen=True, kw_only=True):
    """A request naming a job: the caller's identity travels with it (docs/protocol.md, Authorization)."""

    job_id: str
    user_id: str
    tenant_id: str | None = None


class StatusRequest(JobRequest, frozen=True, kw_only=True):
    pass


class ResumeRequest(JobRequest, frozen=True, kw_only=True):
    pass


class AbortRequest(JobRequest, frozen=True, kw_only=True):
    pass


class ActiveRequest(_Request, frozen=True, kw_only=True):
    user_id: str
    tenant_id: str | None = None


class CountsRequest(_Request, frozen=True, kw_only=True):
    pass


# -- replies ------------------------------------------------------------------------------


class StatusReply(_Reply, frozen=True, kw_only=True):
    active: bool
    status: str
    """``running | complete | error | aborted`` (:class:`schemas.job.JobStatus` values)."""
    aggregated_content: list[Any] = field(default_factory=list)
    created_at: int
    seq: int


class ResumeSnapshot(Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    """A job's resume state as of ``seq``: the content of exactly the events up to ``seq``,
    so a reader continuing at ``seq + 1`` gets neither a gap nor a duplicate. Also the value of
    KV ``genjobs-snapshots``. ``omit_defaults``: what LibreChat leaves ``undefined`` is absent,
    as in its ``ResumeState``."""

    run_steps: list[dict[str, Any]]
    aggregated_content: list[Any]
    status: str
    seq: int
    index: int = -1
    """``Genjobs-Index`` of the event at ``seq`` (-1: none yet)."""
    created_at: int | None = None
    """The job's ``createdAt`` (its generation): a stored snapshot of an older generation of a
    reused id is not this job's."""
    user_message: dict[str, Any] | None = None
    response_message_id: str | None = None
    conversation_id: str | None = None
    sender: str | None = None
    icon_url: str | None = field(default=None, name="iconURL")
    model: str | None = None


class AbortResult(_Reply, frozen=True, kw_only=True):
    """``jobData`` is the job record as LibreChat's ``SerializableJobData`` JSON (``null`` when
    there was no job), ``finalEvent`` the abort final event that was published."""

    success: bool
    job_data: JobRecord | None
    content: list[Any]
    final_event: dict[str, Any] | None
    text: str
    collected_usage: list[dict[str, Any]]
    """:class:`~schemas.usage.UsageRecord` objects as the producer recorded them."""
    usage_already_claimed: bool = False
    """True when an earlier abort (or the completion) already returned this job's usage: do not
    bill it again."""

    @classmethod
    def failed(cls) -> AbortResult:
        """LibreChat's reply when there was nothing to abort."""
        return cls(
            success=False,
            job_data=None,
            content=[],
            final_event=None,
            text="",
            collected_usage=[],
        )


class CompletionResult(_Reply, frozen=True, kw_only=True):
    """What the producer's ``complete``/``fail`` returns: the terminal event and the usage,
    handed out here once."""

    success: bool
    status: str
    seq: int
    collected_usage: list[dict[str, Any]]
    final_event: dict[str, Any]


class AbortSubjectBody(Struct, frozen=True, kw_only=True, rename="camel"):
    """A message on ``<prefix>.abort.<job>``: a request ``{userId, tenantId?}`` (``userId``
    required), or a notice (``notice`` set) that replicas ignore. Unknown fields are ignored:
    every subscriber of the subject sees every message on it."""

    user_id: str | None = None
    tenant_id: str | None = None
    notice: str | None = None


class OwnerRequest(_Request, frozen=True, kw_only=True):
    """A replica asking a job's owner (``<prefix>.rpc.<owner>.<op>``, internal): ``snapshot``
    (``{jobId}``), ``sync`` (``{jobId, syncSent}``), ``abort`` (``{jobId, userId, tenantId?,
    by}``; ``by`` is what the user did, recorded as ``abortedBy``)."""

    job_id: str
    user_id: str | None = None
    tenant_id: str | None = None
    sync_sent: bool | None = None
    by: str | None = None


class SyncReply(_Reply, frozen=True, kw_only=True):
    sync_sent: bool


class AbortNotice(_Reply, frozen=True, kw_only=True):
    """Published on ``<prefix>.abort.<job>`` after a job was aborted, whoever handled it, for
    remote producers watching that subject. Replicas ignore it."""

    notice: str = "aborted"
    job_id: str


class ActiveReply(_Reply, frozen=True, kw_only=True):
    active_job_ids: list[str]


class CountsReply(_Reply, frozen=True, kw_only=True):
    running: int
    complete: int
    error: int
    aborted: int


# -- remote ingest (docs/protocol.md, remote producers) --------------------------------------------------------------


class IngestUserMessage(_Request, frozen=True, kw_only=True):
    message_id: str
    parent_message_id: str | None = None
    conversation_id: str | None = None
    text: str | None = None


class IngestMetadata(_Request, frozen=True, kw_only=True):
    response_message_id: str | None = None
    sender: str | None = None
    conversation_id: str | None = None
    user_message: IngestUserMessage | None = None
    endpoint: str | None = None
    icon_url: str | None = field(default=None, name="iconURL")
    model: str | None = None
    prompt_tokens: Tokens | None = None


class IngestBatch(_Request, frozen=True, kw_only=True):
    first_index: NonNegative | None = None
    """Required with ``events`` or ``usage``; a terminal-only batch (``complete`` or ``error``
    alone, maybe with ``metadata``) may omit it: there is only one terminal."""
    events: list[dict[str, Any]] = field(default_factory=list)
    complete: dict[str, Any] | None = None
    error: Annotated[str, Meta(min_length=1)] | None = None
    metadata: IngestMetadata | None = None
    usage: list[UsageRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Raised here, msgspec reports it as a ValidationError of the decode.
        if self.complete is not None and self.error is not None:
            raise ValueError("a batch ends a job with `complete` or `error`, not both")
        if self.complete is not None and self.complete.get("final") is not True:
            raise ValueError("`complete` must be a final event (`final: true`)")
        if self.first_index is None and (self.events or self.usage or not self.terminal):
            raise ValueError(
                "Object missing required field `firstIndex` (only a batch that just ends the "
                "job, with `complete` or `error` and no `events` or `usage`, may omit it)"
            )

    @property
    def terminal(self) -> bool:
        return self.complete is not None or self.error is not None

    @property
    def span(self) -> int:
        """How many event indices this batch occupies, starting at ``first_index``."""
        return len(self.events) + len(self.usage) + (1 if self.terminal else 0)


class IngestReply(Struct, frozen=True, kw_only=True, omit_defaults=True, rename="camel"):
    ok: bool
    next_index: int
    seq: int | None = None
    """Stream sequence of the batch's last stored event (absent when it stored none)."""
    aborted: bool = False


# -- errors -------------------------------------------------------------------------------


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    INVALID_ID = "invalid_id"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"

    @property
    def status(self) -> int:
        """The HTTP-style number for the micro ``Nats-Service-Error-Code`` header."""
        return _STATUS[self]


_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.INVALID_ID: 400,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
}


class ErrorDetail(_Reply, frozen=True, kw_only=True):
    code: str
    """An :class:`ErrorCode` value; ``str`` so a client survives codes added later."""
    message: str


class ErrorBody(_Reply, frozen=True, kw_only=True):
    error: ErrorDetail


# -- codecs, built once -------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()

REQUEST_TYPES: Final[dict[str, type[_Request]]] = {
    "create": CreateRequest,
    "status": StatusRequest,
    "resume": ResumeRequest,
    "abort": AbortRequest,
    "active": ActiveRequest,
    "counts": CountsRequest,
}
"""Endpoint name (``genjobs.api.<name>``) -> request type."""

_CODEC_TYPES: Final[tuple[type[Struct], ...]] = (
    *REQUEST_TYPES.values(),
    IngestBatch,
    StatusReply,
    ResumeSnapshot,
    AbortResult,
    CompletionResult,
    ActiveReply,
    CountsReply,
    SyncReply,
    AbortNotice,
    AbortSubjectBody,
    OwnerRequest,
    IngestReply,
    ErrorBody,
)
_DECODERS: Final[dict[type[Struct], msgspec.json.Decoder[Any]]] = {
    t: msgspec.json.Decoder(t) for t in _CODEC_TYPES
}

S = TypeVar("S", bound=Struct)


def encode(obj: Struct) -> bytes:
    return _ENCODER.encode(obj)


def decode(data: bytes | str, type_: type[S]) -> S:
    """Decode a request or reply body; an empty body reads as ``{}`` (``nats req ... ''``).

    Raises:
        ValueError: not JSON, or not of the type's shape; the message names the field.
    """
    decoder = _DECODERS.get(type_)
    if decoder is None:
        raise TypeError(f"{type_.__name__} is not a service API type")
    if not data.strip():
        data = b"{}"
    try:
        return cast(S, decoder.decode(data))
    except msgspec.DecodeError as e:  # ValidationError is a DecodeError
        raise ValueError(f"invalid {type_.__name__}: {e}") from e


def decode_ingest(data: bytes | str) -> IngestBatch:
    """Decode a batch and check every event in it, so nothing malformed reaches the log.

    Raises:
        ValueError: the batch or one of its events is malformed; the message says which
            (``events[3]: invalid on_message_delta event: ... - at `$.data.id```).
    """
    batch = decode(data, IngestBatch)
    for i, event in enumerate(batch.events):
        try:
            validate_event(event)
        except ValueError as e:
            raise ValueError(f"events[{i}]: {e}") from e
        if classify(event) in (EventKind.FINAL, EventKind.ERROR):
            raise ValueError(f"events[{i}]: a terminal event goes in `complete` or `error`")
    if batch.complete is not None:
        try:
            validate_event(batch.complete)
        except ValueError as e:
            raise ValueError(f"complete: {e}") from e
    return batch


def error_body(code: ErrorCode, message: str) -> bytes:
    """The error reply body (docs/protocol.md, Errors)."""
    return encode(ErrorBody(error=ErrorDetail(code=code.value, message=message)))
