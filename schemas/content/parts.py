"""The pieces a content aggregation is built from: parts under construction, steps, tool steps,
and ``parseTextParts`` (``schemas/content/aggregator.py`` explains the port and its rules)."""

from __future__ import annotations

from typing import Any

from schemas.content.js import (
    UNDEFINED,
    Rope,
    js_opt,
    js_str,
    nullish,
    spread,
    truthy,
)


class TextSlot:
    """A ``text`` or ``think`` part under construction (the hot path of every stream)."""

    __slots__ = ("agent_id", "citations", "group_id", "kind", "rope", "tool_call_ids")

    def __init__(self, kind: str, rope: Rope, tool_call_ids: Any, citations: Any) -> None:
        self.kind = kind
        self.rope = rope
        self.tool_call_ids = tool_call_ids
        self.citations = citations
        self.agent_id: Any = UNDEFINED
        self.group_id: Any = UNDEFINED

    @classmethod
    def of(cls, current: Any, kind: str) -> TextSlot:
        """The slot to update: ``current`` itself when it is one, else what JS reads from it."""
        if isinstance(current, TextSlot) and current.kind == kind:
            return current
        base = js_opt(current, kind)
        rope = Rope(js_str(base) if truthy(base) else "")
        if kind == "think":
            return cls(kind, rope, UNDEFINED, UNDEFINED)
        ids = js_opt(current, "tool_call_ids")
        cites = js_opt(current, "citations")
        return cls(
            kind,
            rope,
            ids if truthy(ids) else UNDEFINED,
            list(cites) if isinstance(cites, list) else cites,
        )

    def export(self) -> dict[str, Any]:
        part: dict[str, Any] = {"type": self.kind, self.kind: self.rope.value()}
        if self.tool_call_ids is not UNDEFINED:
            part["tool_call_ids"] = self.tool_call_ids
        if self.citations is not UNDEFINED:
            cites = self.citations
            part["citations"] = list(cites) if isinstance(cites, list) else cites
        if self.agent_id is not UNDEFINED:
            part["agentId"] = self.agent_id
        if self.group_id is not UNDEFINED:
            part["groupId"] = self.group_id
        return part


def export_part(part: Any) -> Any:
    if isinstance(part, TextSlot):
        return part.export()
    if not isinstance(part, dict):
        return part
    out = dict(part)
    call = out.get("tool_call")
    if isinstance(call, dict) and isinstance(call.get("args"), Rope):
        out["tool_call"] = {**call, "args": call["args"].value()}
    return out


class ToolStep:
    """``ToolStepContentState``: which slots a tool step's calls and chunks went to."""

    __slots__ = ("call_ids", "chunk_indices", "indices", "unbound", "unclaimed")

    def __init__(self, index: int) -> None:
        # dicts used as insertion-ordered sets, like JS Set
        self.indices: dict[int, None] = {index: None}
        self.chunk_indices: dict[Any, int] = {}
        self.unclaimed: dict[int, None] = {index: None}
        self.unbound: dict[int, None] = {index: None}
        self.call_ids: dict[int, Any] = {}


def take_first(indices: dict[int, None]) -> int | None:
    for index in indices:
        del indices[index]
        return index
    return None


class Step:
    """A step as the library's ``stepMap`` holds it, plus what ``run_steps()`` reports."""

    __slots__ = ("completed_at", "completions", "data", "index")

    def __init__(self, data: dict[str, Any], index: int) -> None:
        self.data = data
        self.index = index
        self.completions: dict[str, dict[str, Any]] = {}  # tool_call of each completion
        self.completed_at: Any = UNDEFINED

    def export(self) -> dict[str, Any]:
        step = {**self.data, "index": self.index}
        if not self.completions:
            return step
        details = self.data["stepDetails"]
        calls = js_opt(details, "tool_calls") if js_opt(details, "type") == "tool_calls" else None
        calls = calls if isinstance(calls, list) else []
        declared = [call_id for c in calls if isinstance(call_id := js_opt(c, "id"), str)]
        if js_opt(details, "type") == "tool_calls":
            merged = [with_completion(c, self.completions) for c in calls]
            merged += [
                done for call_id, done in self.completions.items() if call_id not in declared
            ]
            step["stepDetails"] = {**details, "tool_calls": merged}
        if all(call_id in self.completions for call_id in declared):
            step["status"] = "completed"
            if self.completed_at is not UNDEFINED:
                step["completed_at"] = self.completed_at
        return step


def with_completion(call: Any, done: dict[str, dict[str, Any]]) -> Any:
    call_id = js_opt(call, "id")
    return {**call, **done[call_id]} if isinstance(call_id, str) and call_id in done else call


def type_of(part: Any) -> Any:
    return part.kind if isinstance(part, TextSlot) else js_opt(part, "type")


def part_get(part: Any, key: str) -> Any:
    if isinstance(part, TextSlot):
        return (
            part.agent_id if key == "agentId" else part.group_id if key == "groupId" else UNDEFINED
        )
    return js_opt(part, key)


def spread_or_empty(value: Any) -> list[Any]:
    return [] if nullish(value) else spread(value)


def parse_text_parts(parts: list[Any], skip_reasoning: bool = False) -> str:
    """``parseTextParts`` of librechat-data-provider 0.8.524 (without ``includeSteer``)."""
    result = ""
    for part in parts:
        part_type = js_opt(part, "type")
        if not truthy(part_type):
            continue
        if part_type == "text":
            value = part.get("text")
            value = value if isinstance(value, str) else js_opt(value, "value")
        elif part_type == "think" and not skip_reasoning:
            value = part.get("think")
            value = value if isinstance(value, str) else ""
        else:
            continue
        if not isinstance(value, str):
            result += js_str(value) if truthy(value) else ""
        elif result and value and result[-1] != " " and value[0] != " ":
            result += " " + value
        else:
            result += value
    return result
