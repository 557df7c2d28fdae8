"""The actor's fast merge of plain deltas (PlainRun) must publish exactly what try_merge would.

Byte for byte (msgspec keeps key order), on random streams mixing plain deltas with every
shape the general rules treat differently, and without touching the producer's dicts.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from actors.outbox import Out
from schemas.content.coalesce import PlainRun, try_merge

encode = msgspec.json.Encoder().encode


def _part(rng: random.Random) -> Any:
    kind = rng.random()
    text = rng.choice(["a", "bc ", "", "ü✓", "12 "])
    if kind < 0.45:
        return {"type": "text", "text": text}
    if kind < 0.55:
        return {"type": "text", "index": rng.choice([0, 1]), "text": text}
    if kind < 0.62:
        return {"type": "think", "think": text}
    if kind < 0.68:
        return {"type": "text", "text": text, "citations": []}
    if kind < 0.73:
        return {"type": "text", "text": text, "tool_call_ids": ["t1"]}
    if kind < 0.76:
        return {"type": "image_url", "image_url": "x"}
    if kind < 0.78:
        return "not an object"
    return {"text": text, "type": "text"}  # other key order


def _event(rng: random.Random) -> dict[str, Any]:
    r = rng.random()
    name = "on_message_delta" if r < 0.75 else "on_reasoning_delta" if r < 0.85 else None
    if name is None:
        return rng.choice(
            [
                {"event": "on_run_step_delta", "data": {"id": "s1", "delta": {"type": "x"}}},
                {"event": "on_run_step", "data": {"id": "s2", "index": 0}},
                {"event": "on_message_delta", "data": {"id": "s1", "delta": {}}},
            ]
        )
    step = rng.choice(["s1", "s1", "s1", "s2"])
    shape = rng.random()
    if shape < 0.5:
        content: Any = [_part(rng)]
    elif shape < 0.8:
        content = _part(rng)
    else:
        content = [_part(rng) for _ in range(rng.randint(0, 3))]
    return {"event": name, "data": {"id": step, "delta": {"content": content}}}


def _general(events: list[dict[str, Any]]) -> list[bytes]:
    """The actor before PlainRun: copy the tail on the first merge attempt, then try_merge."""
    out: list[list[Any]] = []  # [event, owned]
    for ev in events:
        if out:
            tail = out[-1]
            if not tail[1]:
                tail[0], tail[1] = msgspec.json.decode(encode(tail[0])), True
            if try_merge(tail[0], ev):
                continue
        out.append([ev, False])
    return [encode(e) for e, _ in out]


def _actor(events: list[dict[str, Any]]) -> tuple[list[bytes], list[int]]:
    pending: list[Out] = []
    for ev in events:
        if pending and pending[-1].merge(ev):
            pending[-1].count += 1
            continue
        pending.append(Out(ev, "step"))
    for out in pending:
        out.settle()
    return [encode(o.event) for o in pending], [o.count for o in pending]


@pytest.mark.parametrize("seed", range(300))
def test_plain_runs_publish_what_try_merge_would(seed: int) -> None:
    rng = random.Random(seed)
    events = [_event(rng) for _ in range(rng.randint(1, 30))]
    before = [encode(e) for e in events]
    got, counts = _actor(events)
    assert got == _general(events)
    assert sum(counts) == len(events)
    assert [encode(e) for e in events] == before  # the producer's dicts are untouched


def test_a_plain_run_merges_and_only_builds_its_event_once_merged() -> None:
    first = {"event": "on_message_delta", "data": {"id": "s", "delta": {"content": "x"}}}
    first["data"]["delta"]["content"] = [{"type": "text", "text": "a"}]
    run = PlainRun.start(first)
    assert run is not None
    assert run.event() is first
    second = {"event": "on_message_delta", "data": {"id": "s", "delta": {"content": []}}}
    second["data"]["delta"]["content"] = {"type": "text", "text": "b"}
    assert run.add(second)
    other_step = {"event": "on_message_delta", "data": {"id": "t", "delta": {"content": []}}}
    assert not run.add(other_step)
    merged = run.event()
    assert merged == {
        "event": "on_message_delta",
        "data": {"id": "s", "delta": {"content": [{"type": "text", "text": "ab"}]}},
    }
    assert first["data"]["delta"]["content"] == [{"type": "text", "text": "a"}]
