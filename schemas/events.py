"""LibreChat's server-sent events: their kinds, validation, and the abort/error builders.

An event is carried through genjobs as the plain JSON object a LibreChat client receives in an
SSE ``data:`` line (docs/protocol.md, the event log). The Structs of ``schemas.event_shapes``
exist to *check* producer input (:func:`validate_event`) and to *build* the events genjobs
itself emits; events are never re-encoded from a Struct, because Structs drop the fields they
do not model and LibreChat keeps adding fields.

Where each shape comes from (LibreChat = danny-avila/LibreChat, agents = danny-avila/agents):

- ``created`` — ``{created: true, message: userMessage, streamId}``:
  ``packages/api/src/types/events.ts`` ``CreatedEvent``; emitted by the ``onStart`` callback of
  ``ResumableAgentController`` in ``api/server/controllers/agents/request.js``.
  ``GenerationJobManager.trackUserMessage`` reads ``message.{messageId, parentMessageId,
  conversationId, text}``.
- step events — ``{event: 'on_run_step' | 'on_run_step_delta' | 'on_run_step_completed' |
  'on_message_delta' | 'on_reasoning_delta' | 'on_agent_update', data}``: the ``StreamEvent``
  wrapper of ``packages/api/src/types/events.ts``; payloads from agents ``src/types/stream.ts``
  (``RunStep``, ``RunStepDeltaEvent``, ``{result: ToolEndEvent}``, ``MessageDeltaEvent``,
  ``ReasoningDeltaEvent``, ``AgentUpdate``) as consumed by ``createContentAggregator`` in agents
  ``src/stream.ts``, and the variants recorded in ``shared/fixtures/aggregation``.
- ``attachment`` — ``{event: 'attachment', data: attachment}``: ``writeAttachment`` in
  ``api/server/controllers/agents/callbacks.js`` and ``createMemoryCallback`` in
  ``packages/api/src/agents/memory.ts`` (``GenerationJobManager.emitChunk``).
- usage — ``{event: 'on_token_usage', data: UsageMetadata}``: ``UsageEvents.ON_TOKEN_USAGE`` in
  librechat-data-provider, emitted through ``emitChunk`` (see
  ``packages/api/src/stream/__tests__/usageResume.spec.ts``).
- ``final`` — ``{final: true, conversation, title, requestMessage, responseMessage}``:
  ``FinalEvent`` in ``packages/api/src/types/events.ts``; built in ``request.js`` (an aborted
  completion sets ``responseMessage.unfinished: true``).
- abort final — ``GenerationJobManager.abortJob`` in
  ``packages/api/src/stream/GenerationJobManager.ts``; see :func:`abort_final_event`.
- ``error`` — ``{error: message}``: ``GenerationJobManager.emitError(streamId, error: string)``,
  written as ``data: {"error": ...}`` by the ``/chat/stream/:streamId`` route in
  ``api/server/routes/agents/index.js``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgspec
from msgspec import Struct

from schemas import headers
from schemas.event_shapes import (
    AbortFinalEvent,
    AgentUpdateEvent,
    AttachmentEvent,
    ConversationRef,
    CreatedEvent,
    ErrorEvent,
    FinalEvent,
    FinalMessage,
    MessageDeltaEvent,
    OtherStepEvent,
    ReasoningDeltaEvent,
    RunStepCompletedEvent,
    RunStepDeltaEvent,
    RunStepEvent,
    TokenUsageEvent,
)
from schemas.usage import UsageRecord

HDR_KIND: Final = headers.KIND
HDR_INDEX: Final = headers.INDEX
HDR_WRITER: Final = headers.WRITER

ATTACHMENT_EVENT: Final = "attachment"
TOKEN_USAGE_EVENT: Final = "on_token_usage"


class EventKind(enum.StrEnum):
    """The ``Genjobs-Kind`` header: lets readers route an event without parsing its payload."""

    CREATED = "created"
    STEP = "step"
    ATTACHMENT = "attachment"
    USAGE = "usage"
    FINAL = "final"
    ERROR = "error"


TERMINAL_KINDS: Final = frozenset({EventKind.FINAL, EventKind.ERROR})


def is_terminal(kind: EventKind) -> bool:
    """Exactly one terminal event ends a job's log (docs/protocol.md, the event log)."""
    return kind in TERMINAL_KINDS


class StepEventName(enum.StrEnum):
    """The six events ``createContentAggregator`` folds into content parts."""

    RUN_STEP = "on_run_step"
    RUN_STEP_DELTA = "on_run_step_delta"
    RUN_STEP_COMPLETED = "on_run_step_completed"
    MESSAGE_DELTA = "on_message_delta"
    REASONING_DELTA = "on_reasoning_delta"
    AGENT_UPDATE = "on_agent_update"


_STEP_SHAPES: Final[dict[str, type[Struct]]] = {
    StepEventName.RUN_STEP: RunStepEvent,
    StepEventName.RUN_STEP_DELTA: RunStepDeltaEvent,
    StepEventName.RUN_STEP_COMPLETED: RunStepCompletedEvent,
    StepEventName.MESSAGE_DELTA: MessageDeltaEvent,
    StepEventName.REASONING_DELTA: ReasoningDeltaEvent,
    StepEventName.AGENT_UPDATE: AgentUpdateEvent,
}

_KIND_SHAPES: Final[dict[EventKind, type[Struct]]] = {
    EventKind.CREATED: CreatedEvent,
    EventKind.ATTACHMENT: AttachmentEvent,
    EventKind.USAGE: TokenUsageEvent,
    EventKind.FINAL: FinalEvent,
    EventKind.ERROR: ErrorEvent,
}

_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def classify(event: Mapping[str, Any]) -> EventKind:
    """The kind of a decoded event, decided the way LibreChat's client dispatches it.

    ``final`` wins over ``error`` because a final event may carry ``error: {message}`` (an abort
    landing during completion).

    Raises:
        ValueError: the object is none of LibreChat's event shapes (message says why).
    """
    if "final" in event:
        return EventKind.FINAL
    if "created" in event:
        return EventKind.CREATED
    if "event" in event:
        name = event["event"]
        if not isinstance(name, str):
            raise ValueError(f"`event` must be a string, got {_json_type(name)}")
        if name == ATTACHMENT_EVENT:
            return EventKind.ATTACHMENT
        if name == TOKEN_USAGE_EVENT:
            return EventKind.USAGE
        if name.startswith("on_"):
            return EventKind.STEP
        raise ValueError(
            f"unknown event name {name!r}: expected 'attachment' or an 'on_*' step event"
        )
    if "error" in event:
        return EventKind.ERROR
    keys = ", ".join(sorted(map(str, event))) or "none"
    raise ValueError(
        "not a LibreChat event: expected one of the keys final, created, event, error "
        f"(got keys: {keys})"
    )


def validate_event(obj: object) -> dict[str, Any]:
    """Check one producer event and return it unchanged, as the dict to carry.

    Accepts an already-parsed object or raw JSON bytes/str (decoded here).

    Raises:
        ValueError: not JSON, not an object, not a known event shape, or a field of the wrong
            type; the message names the offending path (``at `$.data.id```).
    """
    if isinstance(obj, (bytes, bytearray, memoryview, str)):
        try:
            obj = _DECODER.decode(obj)
        except msgspec.DecodeError as e:
            raise ValueError(f"event is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"event must be a JSON object, got {_json_type(obj)}")
    kind = classify(obj)
    if kind is EventKind.STEP:
        shape = _STEP_SHAPES.get(obj["event"], OtherStepEvent)
        label = str(obj["event"])
    else:
        shape = _KIND_SHAPES[kind]
        label = kind.value
    try:
        msgspec.convert(obj, shape)
    except msgspec.ValidationError as e:
        raise ValueError(f"invalid {label} event: {e}") from e
    return obj


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The JetStream payload: the event JSON exactly as an SSE ``data:`` line carries it."""
    return _ENCODER.encode(event)


def decode_event(data: bytes | str) -> dict[str, Any]:
    """Parse a stored payload; stored events were validated on the way in.

    Raises:
        ValueError: the payload is not a JSON object (a foreign message on the subject).
    """
    try:
        obj = _DECODER.decode(data)
    except msgspec.DecodeError as e:
        raise ValueError(f"event payload is not valid JSON: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"event payload must be a JSON object, got {_json_type(obj)}")
    return obj


def _user_message_dict(user_message: Mapping[str, Any] | Struct | None) -> dict[str, Any] | None:
    if user_message is None:
        return None
    if isinstance(user_message, Struct):
        built = msgspec.to_builtins(user_message)
        if not isinstance(built, dict):
            raise TypeError("user_message must encode to a JSON object")
        return built
    return dict(user_message)


def abort_final_event(
    *,
    user_message: Mapping[str, Any] | Struct | None,
    response_message_id: str | None,
    content: Sequence[Any],
    conversation_id: str | None,
    sender: str | None = None,
    endpoint: str | None = None,
    model: str | None = None,
    icon_url: str | None = None,
    early_abort: bool | None = None,
) -> dict[str, Any]:
    """LibreChat's abort final event, as ``GenerationJobManager.abortJob`` builds it.

    ``user_message`` is the job record's ``userMessage`` (camelCase keys, or a Struct that encodes
    to them); ``content`` the aggregated parts without holes, as LibreChat keeps them. ``early_abort`` defaults to LibreChat's rule: no content and no
    ``responseMessageId`` yet means nothing was saved, so ``conversation`` and
    ``responseMessage`` are ``null`` and the client goes back to a new chat. Otherwise
    ``responseMessage`` holds the content so far with ``unfinished: true`` and ``messageId`` =
    ``responseMessageId`` or ``<userMessageId>_``. ``endpoint``/``model``/``icon_url`` are not
    in LibreChat's event (its abort route adds them to the saved message); they are added to
    ``responseMessage`` only when given.
    """
    um = _user_message_dict(user_message)
    parts = list(content)
    early = early_abort if early_abort is not None else not parts and not response_message_id
    user_message_id: str | None = um.get("messageId") if um else None
    request_message = None
    if um is not None:
        text = um.get("text")
        request_message = FinalMessage(
            message_id=user_message_id,
            parent_message_id=um.get("parentMessageId"),
            conversation_id=conversation_id,
            text="" if text is None else text,
            is_created_by_user=True,
        )
    response_message = None
    if not early:
        response_message = FinalMessage(
            message_id=response_message_id or f"{user_message_id or 'aborted'}_",
            parent_message_id=user_message_id,
            conversation_id=conversation_id,
            content=parts,
            sender="AI" if sender is None else sender,
            endpoint=endpoint,
            model=model,
            icon_url=icon_url,
            unfinished=True,
            error=False,
            is_created_by_user=False,
        )
    built: dict[str, Any] = msgspec.to_builtins(
        AbortFinalEvent(
            conversation=None if early else ConversationRef(conversation_id=conversation_id),
            request_message=request_message,
            response_message=response_message,
            early_abort=early,
        )
    )
    return built


def error_event(message: str) -> dict[str, Any]:
    """LibreChat's terminal error event: the message is shown to the user as is."""
    return {"error": message}


def usage_event(record: UsageRecord) -> dict[str, Any]:
    """A usage record as a log event, so collected usage is as durable as the content."""
    return {"event": TOKEN_USAGE_EVENT, "data": msgspec.to_builtins(record)}
