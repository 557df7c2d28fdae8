"""The job record in KV ``genjobs-jobs`` (docs/protocol.md, KV buckets) and the job lifecycle.

Field names on the wire are LibreChat's ``SerializableJobData`` camelCase; ours are added with
defaults so older records still decode. The lifecycle's transitions live here and nowhere else.
"""

from __future__ import annotations

import enum
import time
from typing import Any

import msgspec


def now_ms() -> int:
    """The records' clock (``createdAt``, ``completedAt``): wall time in milliseconds."""
    return int(time.time() * 1000)


class JobStatus(enum.StrEnum):
    RUNNING = "running"
    COMPLETE = "complete"
    ERROR = "error"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return self is not JobStatus.RUNNING


# running -> complete | error | aborted; nothing leaves a terminal status (a new generation
# under the same id is a new record with a new createdAt, not a transition).
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.RUNNING: frozenset({JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.ABORTED}),
    JobStatus.COMPLETE: frozenset(),
    JobStatus.ERROR: frozenset(),
    JobStatus.ABORTED: frozenset(),
}


def can_transition(src: JobStatus, dst: JobStatus) -> bool:
    return dst in TRANSITIONS[src]


class IllegalTransition(ValueError):
    """A status change the table does not allow (e.g. ending a job that has ended)."""


def transition(src: JobStatus, dst: JobStatus) -> JobStatus:
    """Every status change goes through here. Returns ``dst``.

    Raises:
        IllegalTransition: ``TRANSITIONS`` does not allow ``src -> dst``.
    """
    if not can_transition(src, dst):
        raise IllegalTransition(f"a job cannot go from {src.value} to {dst.value}")
    return dst


class UserMessage(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    message_id: str
    parent_message_id: str | None = None
    conversation_id: str | None = None
    text: str | None = None


class JobRecord(msgspec.Struct, kw_only=True, omit_defaults=True, rename="camel"):
    """One job. ``createdAt`` (ms) doubles as the generation epoch of a reused job id.

    Optional LibreChat fields are absent when unset (as in JavaScript); the fields every reader
    relies on (``syncSent``, ``owner``, ``lastSeq``, usage) have no default so they are always
    written.
    """

    stream_id: str
    user_id: str
    status: JobStatus
    created_at: int
    tenant_id: str | None = None
    completed_at: int | None = None
    conversation_id: str | None = None
    error: str | None = None
    user_message: dict[str, Any] | None = None
    response_message_id: str | None = None
    sender: str | None = None
    sync_sent: bool
    endpoint: str | None = None
    icon_u_r_l: str | None = msgspec.field(default=None, name="iconURL")
    model: str | None = None
    prompt_tokens: int | None = None
    # ours ------------------------------------------------------------------------------
    owner: str
    lease_until: int
    last_seq: int
    last_index: int
    first_seq: int
    """Stream sequence before this generation's first event (readers of a reused id start here)."""
    idempotency_key: str | None = None
    collected_usage: list[dict[str, Any]]
    usage_claimed: bool
    usage_claimed_by: str | None = None
    aborted_by: str | None = None
    ingest_next: int = 0
    """The next producer index a remote producer's ingest batch starts at (docs/protocol.md):
    kept in the record so that a replica adopting the job (service/server/handoff.py) recognises
    resent batches exactly as the previous owner would."""

    @property
    def job_id(self) -> str:
        return self.stream_id


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(JobRecord)


def encode_record(rec: JobRecord) -> bytes:
    return _enc.encode(rec)


def decode_record(data: bytes) -> JobRecord:
    """Raises: msgspec.DecodeError / ValidationError on a corrupt record."""
    return _dec.decode(data)


# Fields a producer may set through metadata updates (docs/protocol.md, job records).
METADATA_FIELDS = {
    "responseMessageId": "response_message_id",
    "sender": "sender",
    "endpoint": "endpoint",
    "iconURL": "icon_u_r_l",
    "model": "model",
    "promptTokens": "prompt_tokens",
    "conversationId": "conversation_id",
    "userMessage": "user_message",
}


def apply_metadata(rec: JobRecord, fields: dict[str, Any]) -> None:
    """Set the producer's metadata fields (``METADATA_FIELDS``, and ``syncSent``) on ``rec``."""
    for key, value in fields.items():
        attr = METADATA_FIELDS.get(key)
        if attr is not None:
            setattr(rec, attr, value)
        elif key == "syncSent":
            rec.sync_sent = bool(value)


def track_user_message(rec: JobRecord, message: Any) -> bool:
    """Keep the user message of a ``created`` event, as LibreChat's ``trackUserMessage`` does;
    True if ``rec`` changed."""
    if not isinstance(message, dict):
        return False
    rec.user_message = {
        k: message[k]
        for k in ("messageId", "parentMessageId", "conversationId", "text")
        if k in message
    }
    if rec.conversation_id is None and isinstance(message.get("conversationId"), str):
        rec.conversation_id = message["conversationId"]
    return True
