"""The aggregator against LibreChat's recorded output, and its incremental guarantees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.content.aggregator import ContentAggregator, parse_text_parts

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "aggregation").glob("*.json"))


def canon(value: Any) -> bytes:
    """Exact JSON identity: key order ignored, but ``1`` != ``true`` != ``1.0`` and absent != null."""
    return msgspec.json.encode(value, order="sorted")


def load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = msgspec.json.decode(path.read_bytes())
    return document


def aggregate(events: list[dict[str, Any]]) -> ContentAggregator:
    aggregator = ContentAggregator()
    for event in events:
        aggregator.apply_event(event)
    return aggregator


def step(step_id: str, index: Any, **extra: Any) -> dict[str, Any]:
    details = extra.pop("details", {"type": "message_creation"})
    return {
        "event": "on_run_step",
        "data": {"id": step_id, "index": index, "stepDetails": details, **extra},
    }


def text(step_id: str, *texts: str) -> dict[str, Any]:
    parts = [{"type": "text", "text": t} for t in texts]
    return {"event": "on_message_delta", "data": {"id": step_id, "delta": {"content": parts}}}


def test_there_are_128_fixtures() -> None:
    assert len(FIXTURES) == 128


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_content_equals_librechat_output(path: Path) -> None:
    fixture = load(path)
    aggregator = aggregate(fixture["events"])
    assert canon(aggregator.content()) == canon(fixture["expected"]["content"])
    assert canon(aggregator.content_filtered()) == canon(fixture["expected"]["content_filtered"])


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_text_equals_parse_text_parts(path: Path) -> None:
    fixture = load(path)
    aggregator = aggregate(fixture["events"])
    assert aggregator.text() == fixture["expected"]["text"]
    assert aggregator.text_without_reasoning() == fixture["expected"]["text_without_reasoning"]


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_reading_mid_stream_matches_a_fresh_aggregator_and_keeps_earlier_snapshots(
    path: Path,
) -> None:
    events = load(path)["events"]
    cuts = sorted({len(events) * k // 7 for k in range(1, 7)})
    live = ContentAggregator()
    snapshots: list[tuple[list[Any], bytes, list[Any], bytes]] = []
    done = 0
    for cut in cuts:
        for event in events[done:cut]:
            live.apply_event(event)
        done = cut
        content, steps = live.content(), live.run_steps()
        fresh = aggregate(events[:cut])
        assert canon(content) == canon(fresh.content())
        assert canon(steps) == canon(fresh.run_steps())
        assert live.text() == fresh.text()
        assert live.has_content() == bool(fresh.content_filtered())
        snapshots.append((content, canon(content), steps, canon(steps)))
    for event in events[done:]:
        live.apply_event(event)
    assert canon(live.content()) == canon(aggregate(events).content())
    for content, content_bytes, steps, steps_bytes in snapshots:
        assert canon(content) == content_bytes, "a part handed out earlier was mutated"
        assert canon(steps) == steps_bytes, "a run step handed out earlier was mutated"


def test_has_content_turns_true_with_the_first_part_only() -> None:
    aggregator = ContentAggregator()
    aggregator.apply_event(step("s1", 0))
    aggregator.apply_event(text("unknown", "ignored"))
    assert not aggregator.has_content()
    aggregator.apply_event(text("s1", "hi"))
    assert aggregator.has_content()


def test_deltas_of_unknown_steps_leave_no_trace() -> None:
    aggregator = aggregate([text("nope", "x"), step("s1", 2), text("nope", "y")])
    assert aggregator.content() == []
    assert aggregator.dropped_events == 0


def test_text_accumulates_across_deltas_and_reads_between_them() -> None:
    aggregator = aggregate([step("s1", 0), text("s1", "Hel", "lo")])
    assert aggregator.content() == [{"type": "text", "text": "Hello"}]
    aggregator.apply_event(text("s1", " world"))
    assert aggregator.content() == [{"type": "text", "text": "Hello world"}]


def test_completion_without_output_has_no_output_key_not_null() -> None:
    call = {"id": "c1", "name": "search", "args": {}}
    details = {"type": "tool_calls", "tool_calls": [call]}
    done = {"id": "s1", "type": "tool_call", "tool_call": {"id": "c1", "name": "search"}}
    aggregator = aggregate(
        [
            step("s1", 0, details=details),
            {"event": "on_run_step_completed", "data": {"result": done}},
        ]
    )
    (part,) = aggregator.content()
    assert part["tool_call"]["progress"] == 1
    assert "output" not in part["tool_call"]
    assert "args" in part["tool_call"]  # kept from the announcement: the completion had none


def test_a_malformed_event_stops_where_the_library_throws_and_is_counted() -> None:
    aggregator = aggregate([step("s1", 0), text("s1", "ok")])
    bad_delta = {"event": "on_message_delta", "data": {"id": "s1", "delta": None}}
    bad_part = {
        "event": "on_message_delta",
        "data": {"id": "s1", "delta": {"content": [{"type": "text", "text": "!"}, {"type": 7}]}},
    }
    aggregator.apply_event(bad_delta)
    aggregator.apply_event(bad_part)
    aggregator.apply_event({"event": "on_run_step", "data": None})
    assert aggregator.dropped_events == 3
    assert aggregator.content() == [{"type": "text", "text": "ok!"}]  # the part before the throw


def test_non_integer_step_index_is_refused() -> None:
    aggregator = aggregate(
        [step("s1", 0), {"event": "on_run_step", "data": step("s2", 1.5)["data"]}]
    )
    assert aggregator.dropped_events == 1
    assert [s["id"] for s in aggregator.run_steps()] == ["s1"]


def test_slots_beyond_max_slots_are_refused() -> None:
    aggregator = ContentAggregator(max_slots=10)
    aggregator.apply_event(step("s1", 50))
    aggregator.apply_event(text("s1", "x"))
    assert aggregator.content() == []
    assert aggregator.dropped_events == 1


def test_run_steps_are_first_seen_with_content_index_and_merged_completion() -> None:
    call = {"id": "c1", "name": "search", "args": {}, "type": "tool_call"}
    tools = {"type": "tool_calls", "tool_calls": [call]}
    result = {
        "id": "t1",
        "index": 0,
        "type": "tool_call",
        "tool_call": {"id": "c1", "name": "search", "args": '{"q":1}', "output": "found"},
        "completed_at": 42,
    }
    aggregator = aggregate(
        [
            step("m1", 5, status="in_progress"),
            step("t1", 1, details=tools, status="in_progress"),  # behind the cursor: slot 6
            {"event": "on_run_step_completed", "data": {"result": result}},
            step("m1", 5, status="again"),  # re-announced: replaces, keeps its place
        ]
    )
    steps = aggregator.run_steps()
    assert [(s["id"], s["index"], s["status"]) for s in steps] == [
        ("m1", 5, "again"),
        ("t1", 6, "completed"),
    ]
    assert aggregator.content()[6]["tool_call"]["output"] == "found"
    (merged,) = steps[1]["stepDetails"]["tool_calls"]
    assert merged == {
        "id": "c1",
        "name": "search",
        "args": '{"q":1}',
        "type": "tool_call",
        "output": "found",
    }
    assert steps[1]["completed_at"] == 42
    assert call == {"id": "c1", "name": "search", "args": {}, "type": "tool_call"}  # input intact


def test_a_step_with_two_calls_completes_when_both_have() -> None:
    calls = [{"id": "a", "name": "x", "args": {}}, {"id": "b", "name": "y", "args": {}}]
    details = {"type": "tool_calls", "tool_calls": calls}

    def done(call_id: str) -> dict[str, Any]:
        tool_call = {"id": call_id, "name": "x", "output": call_id}
        return {
            "event": "on_run_step_completed",
            "data": {"result": {"id": "t", "tool_call": tool_call}},
        }

    aggregator = aggregate([step("t", 0, details=details), done("a")])
    assert "status" not in aggregator.run_steps()[0]
    aggregator.apply_event(done("b"))
    assert aggregator.run_steps()[0]["status"] == "completed"


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "a b"),
        ([{"type": "text", "text": "a "}, {"type": "text", "text": "b"}], "a b"),
        ([{"type": "text", "text": "a"}, {"type": "text", "text": " b"}], "a b"),
        ([{"type": "text", "text": ""}, {"type": "text", "text": "b"}], "b"),
        ([{"type": "think", "think": "t"}, {"type": "text", "text": "b"}], "t b"),
        ([{"type": "tool_call", "tool_call": {}}, {"type": "text", "text": "b"}], "b"),
        ([{"type": "text", "text": {"value": "v"}}, {"type": "text"}], "v"),
    ],
)
def test_parse_text_parts_joins_with_one_space_where_none_is(
    parts: list[dict[str, Any]], expected: str
) -> None:
    assert parse_text_parts(parts) == expected


def test_parse_text_parts_can_skip_reasoning() -> None:
    parts = [{"type": "think", "think": "t"}, {"type": "text", "text": "b"}]
    assert parse_text_parts(parts, skip_reasoning=True) == "b"


def test_events_that_are_not_step_events_are_ignored() -> None:
    aggregator = aggregate(
        [{"created": True, "message": {}}, {"final": True}, {"event": "attachment", "data": {}}]
    )
    assert aggregator.content() == []
    assert aggregator.run_steps() == []
    assert aggregator.dropped_events == 0


def test_a_streamed_call_not_declared_at_announcement_is_appended_to_its_step() -> None:
    details = {"type": "tool_calls", "tool_calls": []}
    first = {"id": "c9", "name": "calc", "args": '{"x":', "index": 0, "type": "tool_call_chunk"}
    nameless = {"args": "1}", "index": 0}
    call = {"id": "c9", "name": "calc", "args": '{"x":1}', "output": "1"}
    done = {"id": "t", "type": "tool_call", "tool_call": call}

    def chunks(*calls: dict[str, Any]) -> dict[str, Any]:
        return {
            "event": "on_run_step_delta",
            "data": {"id": "t", "delta": {"type": "tool_calls", "tool_calls": list(calls)}},
        }

    aggregator = aggregate([step("t", 0, details=details), chunks(first), chunks(nameless)])
    (part,) = aggregator.content()
    assert part["tool_call"]["args"] == '{"x":'  # the library drops nameless chunks' args
    aggregator.apply_event({"event": "on_run_step_completed", "data": {"result": done}})
    (part,) = aggregator.content()
    assert part["tool_call"]["args"] == '{"x":1}'
    (run_step,) = aggregator.run_steps()
    assert run_step["stepDetails"]["tool_calls"] == [call]
    assert run_step["status"] == "completed"


def test_summaries_replace_or_extend_the_step_slot() -> None:
    boundary = {"messageId": "s1"}
    aggregator = aggregate(
        [
            step("s1", 0, summary={"type": "summary", "content": [{"type": "text", "text": "a"}]}),
            {
                "event": "on_summarize_delta",
                "data": {"id": "s1", "delta": {"summary": {"type": "summary", "content": ["b"]}}},
            },
        ]
    )
    assert aggregator.content() == [
        {"type": "summary", "content": [{"type": "text", "text": "a"}, "b"]}
    ]
    final = {"type": "summary", "content": ["final"], "boundary": boundary}
    aggregator.apply_event({"event": "on_summarize_complete", "data": {"summary": final}})
    assert aggregator.content() == [final]
