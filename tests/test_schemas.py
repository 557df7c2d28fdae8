"""Wire types: round trips, strict refusal of bad input, and LibreChat's real event shapes."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import api, event_shapes, events, usage
from schemas.api import (
    AbortNotice,
    AbortRequest,
    AbortResult,
    AbortSubjectBody,
    ActiveReply,
    ActiveRequest,
    CompletionResult,
    CountsReply,
    CountsRequest,
    CreateRequest,
    ErrorBody,
    ErrorCode,
    ErrorDetail,
    IngestBatch,
    IngestMetadata,
    IngestReply,
    IngestUserMessage,
    JobRequest,
    OwnerRequest,
    ResumeRequest,
    ResumeSnapshot,
    StatusReply,
    StatusRequest,
    SyncReply,
)
from schemas.events import (
    EventKind,
    abort_final_event,
    classify,
    error_event,
    is_terminal,
    usage_event,
    validate_event,
)
from schemas.job import JobRecord, JobStatus
from schemas.usage import (
    InputTokenDetails,
    OutputTokenDetails,
    PromptTokensDetails,
    UsageRecord,
    UsageTotals,
    sum_usage,
)

_LOCAL = Path(__file__).parent / "fixtures" / "aggregation"
FIXTURE_DIR = _LOCAL if _LOCAL.is_dir() else Path("/work/shared/fixtures/aggregation")
FIXTURES = sorted(FIXTURE_DIR.glob("*.json"))

OPENAI = UsageRecord(
    input_tokens=1200,
    output_tokens=300,
    total_tokens=1500,
    input_token_details=InputTokenDetails(cache_read=800, cache_creation=100),
    output_token_details=OutputTokenDetails(reasoning=120),
    model="gpt-4.1",
    provider="openAI",
    agent_id="agent_1",
    usage_type="message",
)
ANTHROPIC = UsageRecord(
    input_tokens=100,
    output_tokens=42,
    cache_creation_input_tokens=500,
    cache_read_input_tokens=1000,
    model="claude-sonnet-4",
)
USER_MESSAGE = {"messageId": "u1", "parentMessageId": "p0", "conversationId": "c1", "text": "hi"}
CREATED = {
    "created": True,
    "message": {**USER_MESSAGE, "sender": "User", "isCreatedByUser": True, "files": []},
    "streamId": "c1",
}
FINAL = {
    "final": True,
    "conversation": {"conversationId": "c1", "title": "Greeting", "endpoint": "agents"},
    "title": "Greeting",
    "requestMessage": {**USER_MESSAGE, "isCreatedByUser": True},
    "responseMessage": {"messageId": "r1", "content": [{"type": "text", "text": "yo"}]},
}
ATTACHMENT = {
    "event": "attachment",
    "data": {"type": "memory", "toolCallId": "call_1", "messageId": "r1", "memory": {"k": "v"}},
}

# One fully populated instance of every Struct in the three modules.
SAMPLES: list[msgspec.Struct] = [
    OPENAI,
    ANTHROPIC,
    PromptTokensDetails(cached_tokens=7, cache_write_tokens=1),
    event_shapes.FinalMessage(message_id="r1", icon_url="https://i", error="boom", unfinished=True),
    event_shapes.ConversationRef(conversation_id="c1"),
    event_shapes.AttachmentData(file_id="f", filename="a.png", filepath="/p", conversation_id="c1"),
    UsageRecord(prompt_tokens=10, completion_tokens=2, prompt_tokens_details=PromptTokensDetails()),
    UsageTotals(input=1, output=2, cache_read=3, cache_write=4),
    msgspec.convert(CREATED, event_shapes.CreatedEvent),
    msgspec.convert(CREATED["message"], event_shapes.CreatedMessage),
    msgspec.convert(FINAL, event_shapes.FinalEvent),
    event_shapes.FinalEvent(
        final=True, aborted=True, early_abort=False, error=event_shapes.FinalError(message="x")
    ),
    event_shapes.FinalError(message="x"),
    event_shapes.AbortFinalEvent(
        conversation=None, request_message=None, response_message=None, early_abort=True
    ),
    event_shapes.ErrorEvent(error="Generation failed"),
    msgspec.convert(ATTACHMENT, event_shapes.AttachmentEvent),
    event_shapes.TokenUsageEvent(data=ANTHROPIC),
    event_shapes.OtherStepEvent(event="on_summarize_delta", data={"x": 1}),
    event_shapes.RunStepEvent(
        data=event_shapes.RunStepData(
            id="step_1",
            index=0,
            type="tool_calls",
            step_index=0,
            step_details=event_shapes.StepDetails(
                type="tool_calls",
                tool_calls=[
                    event_shapes.StepToolCall(id="call_1", name="web", args={}, type="tool_call")
                ],
                message_creation=event_shapes.MessageCreation(
                    message_id="msg_1", content_type="text"
                ),
            ),
            usage={"x": 1},
            status="in_progress",
            run_id="run",
            agent_id="agent_1",
            group_id=1,
            created_at=1767000000000,
        )
    ),
    event_shapes.RunStepDeltaEvent(
        data=event_shapes.RunStepDeltaData(
            id="step_1",
            delta=event_shapes.ToolCallDelta(
                type="tool_calls",
                tool_calls=[
                    event_shapes.ToolCallChunk(id="c", name="n", args='{"q', index=0, type="t")
                ],
                auth="https://auth",
                expires_at=1767000000,
            ),
        )
    ),
    event_shapes.RunStepCompletedEvent(
        data=event_shapes.RunStepCompletedData(
            result=event_shapes.ToolEndResult(
                id="step_1",
                index=0,
                type="tool_call",
                tool_call=event_shapes.CompletedToolCall(
                    id="c", name="n", args="{}", output="ok", progress=1, outcome="done"
                ),
                completed_at=1767000000001,
            )
        )
    ),
    event_shapes.MessageDeltaEvent(
        data=event_shapes.MessageDeltaData(
            id="step_2",
            delta=event_shapes.MessageDelta(
                content=[
                    event_shapes.ContentPart(
                        type="text", text="Hel", citations=[{"a": 1}], index=1
                    ),
                    event_shapes.ContentPart(type="text", tool_call_ids=["call_1"]),
                ],
                tool_call_ids=["call_1"],
            ),
        )
    ),
    event_shapes.ReasoningDeltaEvent(
        data=event_shapes.MessageDeltaData(
            id="step_3",
            delta=event_shapes.MessageDelta(
                content=event_shapes.ContentPart(type="think", think="hmm")
            ),
        )
    ),
    event_shapes.AgentUpdateEvent(
        data=event_shapes.AgentUpdateData(
            type="agent_update",
            agent_update=event_shapes.AgentUpdatePayload(index=4, run_id="run", agent_id="agent_2"),
        )
    ),
    CreateRequest(
        user_id="u",
        conversation_id="c",
        job_id="j",
        tenant_id="t",
        idempotency_key="k",
        replace=True,
    ),
    JobRequest(job_id="j", user_id="u", tenant_id="t"),
    StatusRequest(job_id="j", user_id="u"),
    ResumeRequest(job_id="j", user_id="u"),
    AbortRequest(job_id="j", user_id="u", tenant_id="t"),
    ActiveRequest(user_id="u", tenant_id="t"),
    CountsRequest(),
    StatusReply(
        active=True,
        status="running",
        aggregated_content=[None, {"type": "text"}],
        created_at=1,
        seq=9,
    ),
    ResumeSnapshot(
        run_steps=[{"id": "step_1"}],
        aggregated_content=[{"type": "text", "text": "a"}],
        status="running",
        seq=12,
        user_message=USER_MESSAGE,
        response_message_id="r1",
        conversation_id="c1",
        sender="GPT-4.1",
        icon_url="https://i",
        model="gpt-4.1",
    ),
    AbortResult(
        success=True,
        job_data=JobRecord(
            stream_id="c1",
            user_id="u1",
            status=JobStatus.ABORTED,
            created_at=1,
            sync_sent=False,
            owner="r1",
            lease_until=2,
            last_seq=9,
            last_index=4,
            first_seq=0,
            collected_usage=[{"input_tokens": 3}],
            usage_claimed=True,
            usage_claimed_by="abort",
            aborted_by="api",
        ),
        content=[{"type": "text", "text": "a"}],
        final_event={"final": True, "aborted": True},
        text="a",
        collected_usage=[msgspec.to_builtins(OPENAI), msgspec.to_builtins(ANTHROPIC)],
        usage_already_claimed=True,
    ),
    CompletionResult(
        success=True,
        status="complete",
        seq=7,
        collected_usage=[{"input_tokens": 3}],
        final_event={"final": True},
    ),
    SyncReply(sync_sent=True),
    AbortNotice(job_id="c1"),
    AbortSubjectBody(user_id="u1", tenant_id="t1"),
    OwnerRequest(job_id="c1", user_id="u1", tenant_id="t1", sync_sent=True, by="api"),
    ActiveReply(active_job_ids=["a", "b"]),
    CountsReply(running=1, complete=2, error=3, aborted=4),
    IngestUserMessage(message_id="u1", parent_message_id="p0", conversation_id="c1", text="hi"),
    IngestMetadata(
        response_message_id="r1",
        sender="AI",
        conversation_id="c1",
        user_message=IngestUserMessage(message_id="u1"),
        endpoint="agents",
        icon_url="https://i",
        model="gpt-4.1",
        prompt_tokens=12,
    ),
    IngestBatch(
        first_index=3,
        events=[CREATED],
        complete=FINAL,
        metadata=IngestMetadata(sender="AI"),
        usage=[OPENAI],
    ),
    IngestReply(ok=True, next_index=7, seq=42, aborted=True),
    ErrorDetail(code="not_found", message="no such job"),
    ErrorBody(error=ErrorDetail(code="conflict", message="running")),
]


def _all_structs() -> set[type[msgspec.Struct]]:
    found = set()
    for module in (event_shapes, usage, api):
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(obj, msgspec.Struct)
                and obj.__module__ == module.__name__
                and not obj.__name__.startswith("_")
            ):
                found.add(obj)
    return found


def _nested(value: object) -> list[msgspec.Struct]:
    """Every Struct instance inside ``value``, parents first."""
    if isinstance(value, msgspec.Struct):
        out = [value]
        for name in value.__struct_fields__:
            out += _nested(getattr(value, name))
        return out
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _nested(item)]
    return []


def _one_per_type() -> list[msgspec.Struct]:
    seen: dict[type[msgspec.Struct], msgspec.Struct] = {}
    for sample in _nested(SAMPLES):
        seen.setdefault(type(sample), sample)
    return list(seen.values())


def test_every_struct_has_a_round_trip_sample() -> None:
    assert _all_structs() <= {type(s) for s in _one_per_type()}


@pytest.mark.parametrize("sample", _one_per_type(), ids=lambda s: type(s).__name__)
def test_every_struct_round_trips_through_json(sample: msgspec.Struct) -> None:
    wire = msgspec.json.encode(sample)
    assert msgspec.json.decode(wire, type=type(sample)) == sample


def test_absent_optionals_are_absent_not_null() -> None:
    assert api.encode(ResumeRequest(job_id="j", user_id="u")) == b'{"jobId":"j","userId":"u"}'
    assert msgspec.json.encode(UsageRecord(input_tokens=1)) == b'{"input_tokens":1}'
    assert msgspec.json.encode(OPENAI).count(b'"agentId":"agent_1"') == 1


def test_reply_keys_are_always_written_as_librechat_sends_them() -> None:
    body = json.loads(api.encode(AbortResult.failed()))
    assert body == {
        "success": False,
        "jobData": None,
        "content": [],
        "finalEvent": None,
        "text": "",
        "collectedUsage": [],
        "usageAlreadyClaimed": False,
    }


REQUESTS: list[tuple[type[msgspec.Struct], dict[str, Any]]] = [
    (CreateRequest, {"userId": "u"}),
    (StatusRequest, {"jobId": "j", "userId": "u"}),
    (ResumeRequest, {"jobId": "j", "userId": "u"}),
    (AbortRequest, {"jobId": "j", "userId": "u"}),
    (ActiveRequest, {"userId": "u"}),
    (IngestBatch, {"firstIndex": 0}),
]


@pytest.mark.parametrize(("type_", "good"), REQUESTS, ids=lambda x: getattr(x, "__name__", ""))
def test_requests_refuse_unknown_fields(type_: type[msgspec.Struct], good: dict[str, Any]) -> None:
    msgspec.json.decode(json.dumps(good), type=type_)
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        msgspec.json.decode(json.dumps({**good, "bogus": 1}), type=type_)


@pytest.mark.parametrize(("type_", "good"), REQUESTS, ids=lambda x: getattr(x, "__name__", ""))
def test_requests_refuse_wrong_types(type_: type[msgspec.Struct], good: dict[str, Any]) -> None:
    key = next(iter(good))
    with pytest.raises(msgspec.ValidationError, match=f"at `\\$.{key}`"):
        msgspec.json.decode(json.dumps({**good, key: [1]}), type=type_)


@pytest.mark.parametrize(("type_", "good"), REQUESTS, ids=lambda x: getattr(x, "__name__", ""))
def test_requests_refuse_missing_required_fields(
    type_: type[msgspec.Struct], good: dict[str, Any]
) -> None:
    key = next(iter(good))
    rest = {k: v for k, v in good.items() if k != key}
    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{key}`"):
        msgspec.json.decode(json.dumps(rest), type=type_)


def test_counts_request_refuses_any_field() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"userId":"u"}', type=CountsRequest)


def test_nested_request_parts_are_strict_too() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"unknown field `color` - at `\$.metadata`"):
        msgspec.json.decode(b'{"firstIndex":0,"metadata":{"color":1}}', type=IngestBatch)
    with pytest.raises(msgspec.ValidationError, match="missing required field `messageId`"):
        msgspec.json.decode(b'{"firstIndex":0,"metadata":{"userMessage":{}}}', type=IngestBatch)
    with pytest.raises(msgspec.ValidationError, match=r">= 0 - at `\$.firstIndex`"):
        msgspec.json.decode(b'{"firstIndex":-1}', type=IngestBatch)


def test_decode_reports_bad_input_as_value_error_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"invalid StatusRequest: Expected `str`, got `int`"):
        api.decode(b'{"jobId":1,"userId":"u"}', StatusRequest)
    with pytest.raises(ValueError, match="invalid CreateRequest: JSON is malformed"):
        api.decode(b'{"userId":}', CreateRequest)
    with pytest.raises(TypeError):
        api.decode(b"{}", event_shapes.ErrorEvent)


def test_an_empty_body_reads_as_an_empty_object() -> None:
    assert api.decode(b"", CountsRequest) == CountsRequest()
    assert api.decode(b"  ", CountsRequest) == CountsRequest()


def test_every_endpoint_has_a_request_type() -> None:
    assert set(api.REQUEST_TYPES) == {"create", "status", "resume", "abort", "active", "counts"}


def test_replies_ignore_fields_added_later() -> None:
    reply = api.decode(b'{"ok":true,"nextIndex":4,"newThing":{"a":1}}', IngestReply)
    assert reply == IngestReply(ok=True, next_index=4)
    assert not reply.aborted
    status = api.decode(
        b'{"active":false,"status":"complete","createdAt":1,"seq":3,"streamId":"x"}', StatusReply
    )
    assert status.aggregated_content == []


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_every_fixture_event_is_a_valid_step_event(path: Path) -> None:
    recorded = json.loads(path.read_bytes())
    assert recorded["events"]
    for event in recorded["events"]:
        assert classify(event) is EventKind.STEP
        assert validate_event(event) is event


def test_fixtures_were_found() -> None:
    assert len(FIXTURES) >= 18


@pytest.mark.parametrize(
    ("event", "kind"),
    [
        (CREATED, EventKind.CREATED),
        (FINAL, EventKind.FINAL),
        ({"final": True, "error": {"message": "late abort"}}, EventKind.FINAL),
        ({"error": "Generation failed"}, EventKind.ERROR),
        (ATTACHMENT, EventKind.ATTACHMENT),
        ({"event": "on_token_usage", "data": {"input_tokens": 1}}, EventKind.USAGE),
        ({"event": "on_summarize_delta", "data": {"x": 1}}, EventKind.STEP),
    ],
    ids=lambda x: x.value if isinstance(x, EventKind) else "",
)
def test_librechat_shapes_are_classified_and_accepted(
    event: dict[str, Any], kind: EventKind
) -> None:
    assert classify(event) is kind
    assert validate_event(event) is event
    assert is_terminal(kind) == (kind in (EventKind.FINAL, EventKind.ERROR))


def test_validated_events_keep_fields_genjobs_does_not_model() -> None:
    event = {"event": "on_message_delta", "data": {"id": "s", "future": [1]}, "extra": True}
    assert events.decode_event(events.encode_event(validate_event(event))) == event
    assert validate_event(json.dumps(CREATED).encode()) == CREATED


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ([1, 2], "must be a JSON object, got array"),
        ("not json", "not valid JSON"),
        ({"sync": True}, "expected one of the keys final, created, event, error"),
        ({"event": 3, "data": {}}, "`event` must be a string, got number"),
        ({"event": "title", "data": {}}, "unknown event name 'title'"),
        ({"event": "on_message_delta"}, "missing required field `data`"),
        (
            {"event": "on_message_delta", "data": "x"},
            r"Expected `object`, got `str` - at `\$.data`",
        ),
        (
            {"event": "on_run_step", "data": {"index": "0"}},
            r"invalid on_run_step event: Expected `int \| null`, got `str` - at `\$.data.index`",
        ),
        (
            {"event": "on_message_delta", "data": {"delta": {"content": "hi"}}},
            r"at `\$.data.delta.content`",
        ),
        ({"created": True, "message": {}}, "missing required field `messageId`"),
        ({"created": False, "message": {"messageId": "u"}}, r"at `\$.created`"),
        ({"final": "yes"}, r"invalid final event: .* at `\$.final`"),
        ({"error": {"message": "x"}}, r"invalid error event: Expected `str`"),
        ({"event": "attachment", "data": None}, r"invalid attachment event"),
        ({"event": "on_token_usage", "data": {"input_tokens": -5}}, r"\$.data.input_tokens"),
    ],
)
def test_bad_producer_events_are_refused_with_a_precise_message(bad: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_event(bad)


def test_openai_usage_normalises_cache_details() -> None:
    assert OPENAI.totals() == UsageTotals(input=1200, output=300, cache_read=800, cache_write=100)
    raw = msgspec.convert(
        {
            "prompt_tokens": 50,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 30, "audio_tokens": 0},
        },
        UsageRecord,
    )
    assert raw.totals() == UsageTotals(input=50, output=5, cache_read=30, cache_write=0)


def test_anthropic_usage_normalises_top_level_cache_fields() -> None:
    assert ANTHROPIC.totals() == UsageTotals(input=100, output=42, cache_read=1000, cache_write=500)


def test_usage_reads_zero_in_one_spelling_as_librechat_does() -> None:
    mixed = UsageRecord(
        input_tokens=10,
        input_token_details=InputTokenDetails(cache_read=0, cache_creation=0),
        cache_read_input_tokens=4,
        cache_creation_input_tokens=2,
    )
    assert mixed.totals() == UsageTotals(input=10, output=0, cache_read=4, cache_write=2)


def test_sum_usage_adds_every_call() -> None:
    total = sum_usage([OPENAI, ANTHROPIC, UsageRecord()])
    assert total == UsageTotals(input=1300, output=342, cache_read=1800, cache_write=600)
    assert total.total == 1642
    assert sum_usage([]) == UsageTotals()


def test_usage_drops_unknown_fields_and_refuses_negative_counts() -> None:
    record = usage.decode_usage(b'{"input_tokens":3,"service_tier":"flex"}')
    assert record == UsageRecord(input_tokens=3)
    with pytest.raises(msgspec.ValidationError, match=r">= 0 - at `\$.output_tokens`"):
        usage.decode_usage(b'{"output_tokens":-1}')
    listed = usage.decode_usage_list(usage.encode_usage([OPENAI, ANTHROPIC]))
    assert listed == [OPENAI, ANTHROPIC]
    assert usage.usage_from_builtins(msgspec.to_builtins(OPENAI)) == OPENAI


def test_abort_before_anything_was_generated_is_an_early_abort() -> None:
    final = abort_final_event(
        user_message=USER_MESSAGE, response_message_id=None, content=[], conversation_id="c1"
    )
    assert final == {
        "final": True,
        "conversation": None,
        "title": "New Chat",
        "requestMessage": {
            "messageId": "u1",
            "parentMessageId": "p0",
            "conversationId": "c1",
            "text": "hi",
            "isCreatedByUser": True,
        },
        "responseMessage": None,
        "aborted": True,
        "earlyAbort": True,
    }
    assert classify(final) is EventKind.FINAL
    assert validate_event(final) is final


def test_abort_with_content_returns_the_unfinished_response() -> None:
    content = [{"type": "text", "text": "Hel"}]
    final = abort_final_event(
        user_message=USER_MESSAGE,
        response_message_id=None,
        content=content,
        conversation_id="c1",
        sender="GPT-4.1",
        endpoint="openAI",
        model="gpt-4.1",
    )
    assert final["earlyAbort"] is False
    assert final["conversation"] == {"conversationId": "c1"}
    assert final["responseMessage"] == {
        "messageId": "u1_",
        "parentMessageId": "u1",
        "conversationId": "c1",
        "content": content,
        "sender": "GPT-4.1",
        "endpoint": "openAI",
        "model": "gpt-4.1",
        "unfinished": True,
        "error": False,
        "isCreatedByUser": False,
    }
    validate_event(final)


def test_abort_uses_the_response_message_id_and_librechat_defaults() -> None:
    final = abort_final_event(
        user_message=event_shapes.CreatedMessage(message_id="u9"),
        response_message_id="r9",
        content=[],
        conversation_id=None,
    )
    assert final["earlyAbort"] is False  # a responseMessageId means a response row exists
    assert final["conversation"] == {}
    assert final["requestMessage"] == {"messageId": "u9", "text": "", "isCreatedByUser": True}
    assert final["responseMessage"]["messageId"] == "r9"
    assert final["responseMessage"]["sender"] == "AI"
    assert final["responseMessage"]["content"] == []
    anonymous = abort_final_event(
        user_message=None,
        response_message_id=None,
        content=[{"type": "text", "text": "x"}],
        conversation_id="c",
    )
    assert anonymous["requestMessage"] is None
    assert anonymous["responseMessage"]["messageId"] == "aborted_"
    forced = abort_final_event(
        user_message=USER_MESSAGE,
        response_message_id="r1",
        content=[{"type": "text", "text": "x"}],
        conversation_id="c1",
        early_abort=True,
    )
    assert forced["earlyAbort"] is True
    assert forced["responseMessage"] is None


def test_error_and_usage_builders_produce_classifiable_events() -> None:
    err = error_event("interrupted: replica shutting down")
    assert err == {"error": "interrupted: replica shutting down"}
    assert is_terminal(classify(validate_event(err)))
    used = usage_event(ANTHROPIC)
    assert used["event"] == "on_token_usage"
    assert classify(validate_event(used)) is EventKind.USAGE
    assert msgspec.convert(used["data"], UsageRecord) == ANTHROPIC


def test_decode_event_refuses_foreign_payloads() -> None:
    with pytest.raises(ValueError, match="must be a JSON object, got array"):
        events.decode_event(b"[]")
    with pytest.raises(ValueError, match="not valid JSON"):
        events.decode_event(b"{")


def test_header_names_and_kinds_are_the_documented_ones() -> None:
    assert events.HDR_KIND == "Genjobs-Kind"
    assert events.HDR_INDEX == "Genjobs-Index"
    assert {k.value for k in EventKind} == {
        "created",
        "step",
        "attachment",
        "usage",
        "final",
        "error",
    }


def test_ingest_batch_span_counts_events_usage_and_terminal() -> None:
    assert IngestBatch(first_index=0).span == 0
    batch = IngestBatch(first_index=5, events=[CREATED, ATTACHMENT], usage=[OPENAI], error="x")
    assert batch.terminal
    assert batch.span == 4


def test_ingest_batch_ends_a_job_one_way_only() -> None:
    with pytest.raises(msgspec.ValidationError, match="not both"):
        msgspec.json.decode(
            b'{"firstIndex":0,"complete":{"final":true},"error":"x"}', type=IngestBatch
        )
    with pytest.raises(msgspec.ValidationError, match="must be a final event"):
        msgspec.json.decode(b'{"firstIndex":0,"complete":{"error":"x"}}', type=IngestBatch)
    with pytest.raises(msgspec.ValidationError, match=r"length >= 1 - at `\$.error`"):
        msgspec.json.decode(b'{"firstIndex":0,"error":""}', type=IngestBatch)


def test_decode_ingest_checks_every_event() -> None:
    good = IngestBatch(
        first_index=0,
        events=[CREATED, ATTACHMENT, *json.loads(FIXTURES[0].read_bytes())["events"]],
        usage=[OPENAI],
        complete=FINAL,
    )
    assert api.decode_ingest(api.encode(good)) == good
    bad = {"firstIndex": 0, "events": [CREATED, {"event": "on_run_step", "data": {"id": 1}}]}
    with pytest.raises(ValueError, match=r"^events\[1\]: invalid on_run_step event: .*\$.data.id"):
        api.decode_ingest(json.dumps(bad))
    terminal = {"firstIndex": 0, "events": [{"error": "x"}]}
    with pytest.raises(ValueError, match=r"events\[0\]: a terminal event goes in"):
        api.decode_ingest(json.dumps(terminal))
    broken_final = {"firstIndex": 0, "complete": {"final": True, "title": 5}}
    with pytest.raises(ValueError, match=r"^complete: invalid final event"):
        api.decode_ingest(json.dumps(broken_final))


def test_error_codes_are_the_documented_ones() -> None:
    assert [c.value for c in ErrorCode] == [
        "bad_request",
        "invalid_id",
        "forbidden",
        "not_found",
        "conflict",
        "too_large",
        "unavailable",
    ]
    assert ErrorCode.NOT_FOUND.status == 404
    assert json.loads(api.error_body(ErrorCode.FORBIDDEN, "not your job")) == {
        "error": {"code": "forbidden", "message": "not your job"}
    }
