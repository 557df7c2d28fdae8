"""LibreChat's server-sent events as msgspec types, their kinds, and the abort/error builders.

An event is carried through genjobs as the plain JSON object a LibreChat client receives in an
SSE ``data:`` line (docs/protocol.md, the event log). The Structs below exist to *check* producer input
(:func:`validate_event`) and to *build* the events genjobs itself emits; events are never
re-encoded from a Struct, because Structs drop the fields they do not model and LibreChat keeps
adding fields.

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
from typing import Any, Final, Literal

import msgspec
from msgspec import Struct, field

from schemas import headers
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


class _Wire(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Tolerant base: unknown fields are ignored, absent optionals stay absent."""


# -- step event payloads: every field optional, because the fixtures (the oracle) contain
# -- degenerate events the aggregator must still accept and ignore or half-apply.


class ContentPart(_Wire, frozen=True, kw_only=True):
    type: str | None = None
    text: str | None = None
    think: str | None = None
    citations: list[Any] | None = None
    tool_call_ids: list[str] | None = None
    index: int | None = None


class MessageDelta(_Wire, frozen=True, kw_only=True):
    # An array, a single part object, [], null or missing: all occur.
    content: list[ContentPart] | ContentPart | None = None
    tool_call_ids: list[str] | None = None


class MessageDeltaData(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    delta: MessageDelta | None = None


class MessageCreation(_Wire, frozen=True, kw_only=True):
    message_id: str | None = None
    content_type: str | None = None


class StepToolCall(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    name: str | None = None
    args: str | dict[str, Any] | None = None
    type: str | None = None


class StepDetails(_Wire, frozen=True, kw_only=True):
    type: str | None = None
    message_creation: MessageCreation | None = None
    tool_calls: list[StepToolCall] | None = None


class RunStepData(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    index: int | None = None
    type: str | None = None
    step_index: int | None = field(default=None, name="stepIndex")
    step_details: StepDetails | None = field(default=None, name="stepDetails")
    usage: dict[str, Any] | None = None
    status: str | None = None
    run_id: str | None = field(default=None, name="runId")
    agent_id: str | None = field(default=None, name="agentId")
    group_id: int | None = field(default=None, name="groupId")
    created_at: int | float | None = None


class ToolCallChunk(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    name: str | None = None
    args: str | dict[str, Any] | None = None
    index: int | None = None
    type: str | None = None


class ToolCallDelta(_Wire, frozen=True, kw_only=True):
    type: str | None = None
    tool_calls: list[ToolCallChunk] | None = None
    auth: str | None = None
    expires_at: int | float | None = None


class RunStepDeltaData(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    delta: ToolCallDelta | None = None


class CompletedToolCall(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    name: str | None = None
    args: str | dict[str, Any] | None = None
    output: str | None = None
    progress: int | float | None = None
    outcome: str | None = None


class ToolEndResult(_Wire, frozen=True, kw_only=True):
    id: str | None = None
    index: int | None = None
    type: str | None = None
    tool_call: CompletedToolCall | None = None
    completed_at: int | float | None = None


class RunStepCompletedData(_Wire, frozen=True, kw_only=True):
    result: ToolEndResult | None = None


class AgentUpdatePayload(_Wire, frozen=True, kw_only=True):
    index: int | None = None
    run_id: str | None = field(default=None, name="runId")
    agent_id: str | None = field(default=None, name="agentId")


class AgentUpdateData(_Wire, frozen=True, kw_only=True):
    type: str | None = None
    agent_update: AgentUpdatePayload | None = None


# -- whole events


class _Named(_Wire, frozen=True, kw_only=True, tag_field="event"):
    """``{event: <name>, data}``; the tag checks the name, the subclass the payload."""


class RunStepEvent(_Named, frozen=True, kw_only=True, tag="on_run_step"):
    data: RunStepData


class RunStepDeltaEvent(_Named, frozen=True, kw_only=True, tag="on_run_step_delta"):
    data: RunStepDeltaData


class RunStepCompletedEvent(_Named, frozen=True, kw_only=True, tag="on_run_step_completed"):
    data: RunStepCompletedData


class MessageDeltaEvent(_Named, frozen=True, kw_only=True, tag="on_message_delta"):
    data: MessageDeltaData


class ReasoningDeltaEvent(_Named, frozen=True, kw_only=True, tag="on_reasoning_delta"):
    data: MessageDeltaData


class AgentUpdateEvent(_Named, frozen=True, kw_only=True, tag="on_agent_update"):
    data: AgentUpdateData


class OtherStepEvent(_Wire, frozen=True, kw_only=True):
    """Any other ``on_*`` event (summaries, subagents, ...): passed through, not aggregated."""

    event: str
    data: Any = None


class AttachmentData(_Wire, frozen=True, kw_only=True):
    type: str | None = None
    file_id: str | None = None
    filename: str | None = None
    filepath: str | None = None
    tool_call_id: str | None = field(default=None, name="toolCallId")
    message_id: str | None = field(default=None, name="messageId")
    conversation_id: str | None = field(default=None, name="conversationId")


class AttachmentEvent(_Named, frozen=True, kw_only=True, tag="attachment"):
    data: AttachmentData


class TokenUsageEvent(_Named, frozen=True, kw_only=True, tag="on_token_usage"):
    data: UsageRecord


class CreatedMessage(_Wire, frozen=True, kw_only=True, rename="camel"):
    # messageId is the one field the job record cannot do without (SerializableJobData).
    message_id: str
    parent_message_id: str | None = None
    conversation_id: str | None = None
    text: str | None = None
    sender: str | None = None
    is_created_by_user: bool | None = None


class CreatedEvent(_Wire, frozen=True, kw_only=True, rename="camel"):
    created: Literal[True]
    message: CreatedMessage
    stream_id: str | None = None


class ConversationRef(_Wire, frozen=True, kw_only=True, rename="camel"):
    conversation_id: str | None = None


class FinalMessage(_Wire, frozen=True, kw_only=True, rename="camel"):
    message_id: str | None = None
    parent_message_id: str | None = None
    conversation_id: str | None = None
    text: str | None = None
    content: list[Any] | None = None
    sender: str | None = None
    endpoint: str | None = None
    model: str | None = None
    icon_url: str | None = field(default=None, name="iconURL")
    unfinished: bool | None = None
    error: bool | str | None = None
    is_created_by_user: bool | None = None


class FinalError(_Wire, frozen=True, kw_only=True):
    message: str


class FinalEvent(_Wire, frozen=True, kw_only=True, rename="camel"):
    final: Literal[True]
    conversation: ConversationRef | None = None
    title: str | None = None
    request_message: FinalMessage | None = None
    response_message: FinalMessage | None = None
    aborted: bool | None = None
    early_abort: bool | None = None
    error: FinalError | None = None


class AbortFinalEvent(Struct, frozen=True, kw_only=True, rename="camel"):
    """No ``omit_defaults``: LibreChat always sends these keys, ``null`` included."""

    final: Literal[True] = True
    conversation: ConversationRef | None
    title: str = "New Chat"
    request_message: FinalMessage | None
    response_message: FinalMessage | None
    aborted: Literal[True] = True
    early_abort: bool


class ErrorEvent(_Wire, frozen=True, kw_only=True):
    error: str


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
