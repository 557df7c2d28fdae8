"""The shapes of LibreChat's server-sent events as msgspec Structs (see ``schemas.events``).

They exist to *check* producer input (``schemas.events.validate_event`` converts an event to
the Struct of its kind) and to *build* the events genjobs itself emits (the abort final); an
event is never re-encoded from a Struct, because Structs drop the fields they do not model and
LibreChat keeps adding fields. Where each shape comes from is listed in ``schemas.events``.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct, field

from schemas.usage import UsageRecord


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
