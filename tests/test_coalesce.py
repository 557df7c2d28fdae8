"""Coalescing must never change the aggregate, and must actually merge where it may."""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas.content.aggregator import ContentAggregator
from schemas.content.coalesce import coalesce, try_merge

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "aggregation").glob("*.json"))
DELTAS = ("on_message_delta", "on_reasoning_delta")


def canon(value: Any) -> bytes:
    return msgspec.json.encode(value, order="sorted")


def load_events(path: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = msgspec.json.decode(path.read_bytes())["events"]
    return events


def aggregate(events: list[dict[str, Any]]) -> bytes:
    aggregator = ContentAggregator()
    for event in events:
        aggregator.apply_event(event)
    summary = [aggregator.content(), aggregator.text(), aggregator.run_steps()]
    return canon([*summary, aggregator.dropped_events])


def incrementally(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a publisher holding one pending event would send."""
    sent: list[dict[str, Any]] = []
    for event in events:
        if not (sent and try_merge(sent[-1], event)):
            sent.append(dict(event))
    return sent


def has_same_step_run(events: list[dict[str, Any]]) -> bool:
    return any(
        a["event"] == b["event"] and a["event"] in DELTAS and a["data"]["id"] == b["data"]["id"]
        for a, b in itertools.pairwise(events)
    )


def delta(name: str, step_id: str, content: Any) -> dict[str, Any]:
    return {"event": name, "data": {"id": step_id, "delta": {"content": content}}}


def text(t: str, **extra: Any) -> dict[str, Any]:
    return {"type": "text", "text": t, **extra}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_coalescing_leaves_the_aggregate_unchanged_and_merges_runs(path: Path) -> None:
    events = load_events(path)
    before = canon(events)
    merged = coalesce(events)
    assert aggregate(merged) == aggregate(events)
    assert canon(incrementally(events)) == canon(merged)
    assert canon(events) == before, "the input events were modified"
    if has_same_step_run(events):
        assert len(merged) < len(events)
    else:
        assert canon(merged) == before


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_tool_call_chunks_pass_through_untouched(path: Path) -> None:
    events = load_events(path)
    chunks = [e for e in events if e["event"] == "on_run_step_delta"]
    merged = coalesce(events)
    assert [e for e in merged if e["event"] == "on_run_step_delta"] == chunks
    assert all(
        a is b
        for a, b in zip(
            chunks, [e for e in merged if e["event"] == "on_run_step_delta"], strict=True
        )
    )


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_splitting_plain_deltas_and_coalescing_them_back_is_invisible(path: Path) -> None:
    rng = random.Random(path.stem)
    events = load_events(path)
    split: list[dict[str, Any]] = []
    for event in events:
        content = (
            event["data"].get("delta", {}).get("content") if event["event"] in DELTAS else None
        )
        if not (
            isinstance(content, list)
            and len(content) == 1
            and set(content[0]) == {"type", content[0]["type"]}
        ):
            split.append(event)
            continue
        field, value = content[0]["type"], content[0][content[0]["type"]]
        cuts = (
            sorted(rng.sample(range(1, len(value)), min(3, len(value) - 1)))
            if len(value) > 1
            else []
        )
        for start, end in zip([0, *cuts], [*cuts, len(value)], strict=True):
            split.append(
                delta(
                    event["event"], event["data"]["id"], [{"type": field, field: value[start:end]}]
                )
            )
    assert aggregate(split) == aggregate(events)
    assert aggregate(coalesce(split)) == aggregate(events)


def random_event(rng: random.Random, step_ids: list[str]) -> dict[str, Any]:
    sid = rng.choice(step_ids)
    kind = rng.random()
    if kind < 0.12:
        details: dict[str, Any] = {"type": "message_creation"}
        if rng.random() < 0.3:
            details = {
                "type": "tool_calls",
                "tool_calls": [{"id": f"c{sid}", "name": "t", "args": {}}],
            }
        data = {"id": sid, "index": rng.randrange(6), "stepDetails": details}
        if rng.random() < 0.3:
            data["agentId"] = rng.choice(["a1", "a2"])
        return {"event": "on_run_step", "data": data}
    if kind < 0.17:  # leaves odd objects in slots: typeless, odd citations, odd text
        summary = rng.choice(
            [{"citations": 5, "text": 3}, {"citations": None}, {"type": "text", "tool_call_ids": 0}]
        )
        result = {"id": sid, "type": "summary", "summary": summary}
        return {"event": "on_run_step_completed", "data": {"result": result}}
    if kind < 0.2:
        update = {"index": rng.randrange(6), "agentId": "a3"}
        return {
            "event": "on_agent_update",
            "data": {"type": "agent_update", "agent_update": update},
        }
    word = rng.choice(["", " ", "a", "bc", "é", "🙂", "\n"])
    part = rng.choice(
        [
            text(word),
            text(word),
            {"type": "think", "think": word},
            text(word, index=rng.randrange(2)),
            text(word, tool_call_ids=rng.choice([["c1"], [], None, 0])),
            {"type": "text", "tool_call_ids": ["c2"]},
            {"type": "text", "citations": [{"n": word}]},
            {"type": "text"},
            {"type": "think", "think": 3},
            "junk",
            None,
        ]
    )
    content = rng.choice([[part], [part, text(word)], part, None])
    return delta(rng.choice(DELTAS), sid, content)


@pytest.mark.parametrize("seed", range(300))
def test_random_streams_with_anomalies_aggregate_the_same_coalesced(seed: int) -> None:
    rng = random.Random(seed)
    step_ids = ["s1", "s2", "s3"]
    events = [random_event(rng, step_ids) for _ in range(60)]
    assert aggregate(coalesce(events)) == aggregate(events)
    assert aggregate(coalesce(events, max_chars=3)) == aggregate(events)


def test_plain_parts_of_one_step_fuse_into_one_part() -> None:
    pending = delta("on_message_delta", "s", [text("Hel")])
    assert try_merge(pending, delta("on_message_delta", "s", {"type": "text", "text": "lo"}))
    assert try_merge(pending, delta("on_message_delta", "s", None))
    assert pending == delta("on_message_delta", "s", [text("Hello")])


def test_merging_copies_instead_of_mutating_the_events() -> None:
    first_part, second = text("a"), delta("on_message_delta", "s", [text("b")])
    pending = delta("on_message_delta", "s", [first_part])
    assert try_merge(pending, second)
    assert first_part == text("a")
    assert second == delta("on_message_delta", "s", [text("b")])


@pytest.mark.parametrize(
    ("pending", "new"),
    [
        (delta("on_message_delta", "s", [text("a")]), delta("on_message_delta", "t", [text("b")])),
        (
            delta("on_message_delta", "s", [text("a")]),
            delta("on_reasoning_delta", "s", [text("b")]),
        ),
        (
            delta("on_message_delta", "s", [text("a")]),
            delta("on_message_delta", "s", [text("b", citations=[])]),
        ),
        (
            delta("on_message_delta", "s", [text("a")]),
            delta("on_message_delta", "s", [{"type": "image_url"}]),
        ),
        (delta("on_message_delta", "s", [text("a")]), delta("on_message_delta", "s", ["b"])),
        (delta("on_message_delta", "s", [text("a")]), delta("on_message_delta", "s", "b")),
        (
            delta("on_message_delta", "s", [text("a")]),
            {**delta("on_message_delta", "s", []), "extra": 1},
        ),
        (
            {"event": "on_run_step_delta", "data": {"id": "s", "delta": {}}},
            delta("on_message_delta", "s", []),
        ),
    ],
    ids=[
        "other-step",
        "other-event",
        "citations",
        "other-type",
        "non-object-part",
        "string-content",
        "extra-key",
        "tool-delta",
    ],
)
def test_merge_is_refused_where_it_is_not_provably_safe(
    pending: dict[str, Any], new: dict[str, Any]
) -> None:
    before = canon(pending)
    assert not try_merge(pending, new)
    assert canon(pending) == before


def test_tool_call_ids_part_is_merged_as_its_own_part() -> None:
    pending = delta("on_message_delta", "s", [text("a")])
    assert try_merge(pending, delta("on_message_delta", "s", [text("b", tool_call_ids=["c"])]))
    assert try_merge(pending, delta("on_message_delta", "s", [text("c")]))
    assert pending["data"]["delta"]["content"] == [
        text("a"),
        text("b", tool_call_ids=["c"]),
        text("c"),
    ]


def test_parts_with_different_provider_index_stay_apart() -> None:
    pending = delta("on_message_delta", "s", [text("a", index=0)])
    assert try_merge(
        pending, delta("on_message_delta", "s", [text("b", index=1), text("c", index=1)])
    )
    assert pending["data"]["delta"]["content"] == [text("a", index=0), text("bc", index=1)]


def test_max_chars_bounds_a_merged_event() -> None:
    events = [delta("on_message_delta", "s", [text("abc")]) for _ in range(5)]
    merged = coalesce(events, max_chars=7)
    assert [e["data"]["delta"]["content"][0]["text"] for e in merged] == ["abcabc", "abcabc", "abc"]
    assert not try_merge(dict(events[0]), events[1], max_chars=5)
