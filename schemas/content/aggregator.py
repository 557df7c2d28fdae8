"""Content aggregation, equal in JSON value to ``createContentAggregator`` of ``@librechat/agents`` 3.9.2.

A resuming reader, an abort result and the ``status`` endpoint all need the content parts the
LibreChat client would have built from the events so far. The rules for that are the library's,
quirks included (holes, ignored events, partial updates), so this module ports its logic branch
by branch rather than re-deriving it. The fixtures in ``tests/fixtures/aggregation`` are the oracle.

Two things differ from a literal port, both for cost:

* Streamed strings (``text``, ``think``, tool-call ``args``) are kept as lists of pieces and joined
  when the content is read, so one event costs the same at token 10 and at token 100,000.
* Parts are rebuilt for a reader only when they changed since the last read (``content()``); the
  dicts handed out are never mutated afterwards, so a snapshot stays valid while streaming goes on.

And two for robustness, since producers are untrusted:

* Where the JS library throws a ``TypeError`` (a delta whose ``delta`` is null, a part whose
  ``type`` is not a string, ...), the event stops at that point, as it would in JS, leaving the
  changes already made; the rest is logged and counted in ``dropped_events``. A few shapes that
  JS would half-process before throwing (``tool_calls`` or ``agent_update`` that are not
  arrays/objects) are refused before any change.
* A step index that is not an integer (JS would store the part under a non-array property and,
  for ``NaN``, break every later slot) and a slot beyond ``max_slots`` are refused the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from schemas.content.js import (
    NO_META,
    UNDEFINED,
    Abandon,
    Rope,
    is_number,
    is_object,
    js_add,
    js_get,
    js_key,
    js_opt,
    js_str,
    min_index,
    non_empty,
    nullish,
    spread,
    truthy,
)

__all__ = ["UNDEFINED", "ContentAggregator", "parse_text_parts"]

_log = logging.getLogger(__name__)


class _TextSlot:
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
    def of(cls, current: Any, kind: str) -> _TextSlot:
        """The slot to update: ``current`` itself when it is one, else what JS reads from it."""
        if isinstance(current, _TextSlot) and current.kind == kind:
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


def _export(part: Any) -> Any:
    if isinstance(part, _TextSlot):
        return part.export()
    if not isinstance(part, dict):
        return part
    out = dict(part)
    call = out.get("tool_call")
    if isinstance(call, dict) and isinstance(call.get("args"), Rope):
        out["tool_call"] = {**call, "args": call["args"].value()}
    return out


class _ToolStep:
    """``ToolStepContentState``: which slots a tool step's calls and chunks went to."""

    __slots__ = ("call_ids", "chunk_indices", "indices", "unbound", "unclaimed")

    def __init__(self, index: int) -> None:
        # dicts used as insertion-ordered sets, like JS Set
        self.indices: dict[int, None] = {index: None}
        self.chunk_indices: dict[Any, int] = {}
        self.unclaimed: dict[int, None] = {index: None}
        self.unbound: dict[int, None] = {index: None}
        self.call_ids: dict[int, Any] = {}


def _take_first(indices: dict[int, None]) -> int | None:
    for index in indices:
        del indices[index]
        return index
    return None


class _Step:
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
            merged = [_with_completion(c, self.completions) for c in calls]
            merged += [
                done for call_id, done in self.completions.items() if call_id not in declared
            ]
            step["stepDetails"] = {**details, "tool_calls": merged}
        if all(call_id in self.completions for call_id in declared):
            step["status"] = "completed"
            if self.completed_at is not UNDEFINED:
                step["completed_at"] = self.completed_at
        return step


def _with_completion(call: Any, done: dict[str, dict[str, Any]]) -> Any:
    call_id = js_opt(call, "id")
    return {**call, **done[call_id]} if isinstance(call_id, str) and call_id in done else call


class ContentAggregator:
    """Builds LibreChat content parts from step events, one event at a time.

    Owned by one actor: not thread-safe, and the lists and dicts it returns are shared, so treat
    them as read-only.
    """

    def __init__(self, *, max_slots: int = 100_000) -> None:
        self._max_slots = max_slots
        self._parts: list[Any] = []  # None (hole) | _TextSlot | dict | other JSON value
        self._view: list[Any] = []  # exported parts, rebuilt for indices in _dirty
        self._dirty: set[int] = set()
        self._filled = 0
        self._meta: dict[int, dict[str, Any]] = {}
        self._steps: dict[Any, _Step] = {}
        self._tool_index: dict[Any, int] = {}
        self._source_index: dict[Any, int] = {}
        self._tool_steps: dict[Any, _ToolStep] = {}
        self._indexed_len = 0
        self._next = 0
        self.dropped_events = 0
        self._handlers: dict[str, Callable[[Any], None]] = {
            "on_run_step": self._on_run_step,
            "on_message_delta": self._on_delta,
            "on_reasoning_delta": self._on_delta,
            "on_run_step_delta": self._on_step_delta,
            "on_run_step_completed": self._on_completed,
            "on_agent_update": self._on_agent_update,
            "on_summarize_delta": self._on_summarize_delta,
            "on_summarize_complete": self._on_summarize_complete,
        }

    # -- reading -----------------------------------------------------------------------------

    def content(self) -> list[Any]:
        """The content array, ``None`` for holes; a new list of shared, never-mutated parts."""
        view, parts = self._view, self._parts
        if len(view) < len(parts):
            view.extend([None] * (len(parts) - len(view)))
        for index in self._dirty:
            view[index] = _export(parts[index])
        self._dirty.clear()
        return list(view)

    def content_filtered(self) -> list[Any]:
        """The content without holes: what LibreChat keeps and saves."""
        return [part for part in self.content() if part is not None]

    def run_steps(self) -> list[dict[str, Any]]:
        """Each step once, in first-announced order, as a resuming client needs it.

        A step is its latest ``on_run_step`` payload (a re-announcement replaces it, as
        LibreChat's ``accumulateRunStep`` does) with ``index`` set to the content slot the
        aggregator routes its deltas to, so a client rebuilding its step map from this list
        keeps writing to the right slots. Completions (``on_run_step_completed`` for an
        announced step) are merged into the matching ``stepDetails.tool_calls`` entry by tool
        call id (a completed call that was not declared is appended), and the step gets
        ``status: "completed"`` (and the latest ``completed_at``) once every declared call has
        completed, which is when the library's graph closes a step.
        """
        return [step.export() for step in self._steps.values()]

    def text(self) -> str:
        """``parseTextParts(content)``: text and reasoning, as LibreChat's abort result has it."""
        return parse_text_parts(self.content_filtered())

    def text_without_reasoning(self) -> str:
        return parse_text_parts(self.content_filtered(), skip_reasoning=True)

    def has_content(self) -> bool:
        """Whether any part exists: LibreChat's abort is ``earlyAbort`` when none does."""
        return self._filled > 0

    # -- applying events ---------------------------------------------------------------------

    def apply_event(self, event: dict[str, Any]) -> None:
        """Apply one wire event ``{"event": name, "data": ...}``; other events are ignored."""
        name = event.get("event") if isinstance(event, dict) else None
        if isinstance(name, str):
            self.apply(name, event.get("data", UNDEFINED))

    def apply(self, event_name: str, data: Any) -> None:
        """Apply one event's payload; unknown event names are ignored, like the library does."""
        handler = self._handlers.get(event_name)
        if handler is None:
            return
        try:
            handler(data)
        except Abandon as exc:
            self.dropped_events += 1
            _log.warning("aggregator stopped a malformed %s event: %s", event_name, exc)

    def _on_delta(self, data: Any) -> None:
        step = self._steps.get(js_key(js_get(data, "id")))
        if step is None:
            return
        content = js_get(js_get(data, "delta"), "content")
        if nullish(content):
            return
        index = step.index
        for part in content if isinstance(content, list) else (content,):
            if not self._append_token(index, part):
                self._update(index, part)

    def _append_token(self, index: int, part: Any) -> bool:
        """``updateContent`` for the common case, a bare text/think part on a slot of its kind.

        For such a part the library's only effects are: the string appended, ``tool_call_ids``
        dropped (text only; no citations come in), the step's metadata applied afresh.
        """
        parts = self._parts
        current = parts[index] if index < len(parts) else None
        if type(current) is not _TextSlot or type(part) is not dict:
            return False
        kind = current.kind
        piece = part.get(kind)
        if part.get("type") != kind or type(piece) is not str:
            return False
        if len(part) != 2 and not (len(part) == 3 and "index" in part):
            return False
        if piece:
            current.rope.add(piece)
        current.tool_call_ids = UNDEFINED
        self._put_text(index, current, current)
        return True

    def _on_run_step(self, data: Any) -> None:
        details = js_get(data, "stepDetails")
        is_tool_step = js_get(details, "type") == "tool_calls"
        calls = js_get(details, "tool_calls") if is_tool_step else UNDEFINED
        if not (nullish(calls) or isinstance(calls, list)):
            raise Abandon("stepDetails.tool_calls is not an array")
        self._sync_seeded()
        source_index = js_get(data, "index")
        call_indices: list[int] = []
        if isinstance(calls, list) and calls:
            for position, call in enumerate(calls):
                index = self._tool_call_index(js_get(call, "id"))
                if index is None:
                    index = (
                        self._resolve_source(source_index) if position == 0 else self._allocate()
                    )
                elif position == 0:
                    self._source_index[js_key(source_index)] = index
                call_indices.append(index)
            step_index = call_indices[0]
        else:
            step_index = self._resolve_source(source_index)
        key = js_key(js_get(data, "id"))
        step = self._steps.get(key)
        if step is None:
            self._steps[key] = step = _Step(data, step_index)
        else:
            step.data, step.index = data, step_index
        self._set_meta(step_index, data)
        summary = js_get(data, "summary")
        if not nullish(summary):
            self._update(step_index, summary)
        if not is_tool_step:
            return
        state = self._tool_steps.get(key) or _ToolStep(step_index)
        self._register(state, step_index, UNDEFINED)
        for position, call in enumerate(calls or ()):
            index = call_indices[position] if position < len(call_indices) else step_index
            call_id = js_get(call, "id")
            call_id = "" if nullish(call_id) else call_id
            self._register(state, index, call_id)
            tool_call = {"args": js_get(call, "args"), "name": js_get(call, "name"), "id": call_id}
            self._set_meta(index, data)
            self._update(index, {"type": "tool_call", "tool_call": tool_call})
        self._tool_steps[key] = state

    def _on_step_delta(self, data: Any) -> None:
        key = js_key(js_get(data, "id"))
        step = self._steps.get(key)
        if step is None:
            return
        delta = js_get(data, "delta")
        chunks = js_get(delta, "tool_calls") if js_get(delta, "type") == "tool_calls" else None
        if not truthy(chunks):
            return
        if not isinstance(chunks, list):
            raise Abandon("delta.tool_calls is not an array")
        state = self._tool_steps.get(key) or _ToolStep(step.index)
        for chunk in chunks:
            self._tool_chunk(step, state, chunk, js_get(delta, "auth"), js_get(delta, "expires_at"))
        self._tool_steps[key] = state

    def _tool_chunk(self, step: _Step, state: _ToolStep, chunk: Any, auth: Any, exp: Any) -> None:
        chunk_index = js_get(chunk, "index")
        chunk_index = chunk_index if is_number(chunk_index) else None
        call_id = js_get(chunk, "id")
        explicit = None if nullish(call_id) or call_id == "" else call_id
        index = self._tool_call_index(explicit)
        if index is None and chunk_index is not None:
            index = state.chunk_indices.get(chunk_index)
        sole = next(iter(state.indices)) if len(state.indices) == 1 else None
        if (
            index is None
            and explicit is None
            and sole is not None
            and (chunk_index is None or sole in state.call_ids or sole in state.unclaimed)
        ):
            index = sole
        if index is None:
            if chunk_index is None and explicit is None:
                _log.debug("tool call chunk with neither id nor index ignored")
                return
            index = _take_first(state.unclaimed if explicit is None else state.unbound)
            if index is None:
                index = self._allocate()
        self._register(state, index, UNDEFINED if explicit is None else explicit)
        if chunk_index is not None:
            state.chunk_indices[chunk_index] = index
            state.unclaimed.pop(index, None)
            state.unbound.pop(index, None)
        tool_call: dict[str, Any] = {
            "args": "" if nullish(args := js_get(chunk, "args")) else args,
            "name": js_get(chunk, "name"),
            "id": explicit if explicit is not None else state.call_ids.get(index, UNDEFINED),
            "auth": auth,
            "expires_at": exp,
        }
        self._set_meta(index, step.data)
        self._update(index, {"type": "tool_call", "tool_call": tool_call})

    def _on_completed(self, data: Any) -> None:
        result = js_get(data, "result")
        key = js_key(js_get(result, "id"))
        step = self._steps.get(key)
        if js_get(result, "type") == "summary" and "summary" in result:
            if step is not None:
                self._set(step.index, result["summary"])
                self._apply_meta(step.index)
            return
        if not isinstance(result, dict | list):
            raise Abandon("'in' on a completion result that is not an object")
        if not isinstance(result, dict) or "tool_call" not in result:
            return
        tool_call = result["tool_call"]
        index = self._tool_call_index(js_get(tool_call, "id"))
        if index is None and step is not None:
            state = self._tool_steps.get(key)
            if state is not None and len(state.indices) == 1:
                index = next(iter(state.indices))
            elif state is None:
                details = step.data["stepDetails"]
                declared = (
                    js_get(details, "tool_calls")
                    if js_get(details, "type") == "tool_calls"
                    else None
                )
                if (len(declared) if isinstance(declared, list | str) else 0) <= 1:
                    index = step.index
        if index is None:
            _log.debug("completion for an unknown step and tool call ignored")
            return
        if step is not None:
            self._set_meta(index, step.data)
        self._update(index, {"type": "tool_call", "tool_call": tool_call}, final=True)
        if (
            step is not None
            and isinstance(tool_call, dict)
            and isinstance(tool_call.get("id"), str)
        ):
            step.completions[tool_call["id"]] = tool_call
            done_at = result.get("completed_at", UNDEFINED)
            if is_number(done_at) and not (
                is_number(step.completed_at) and step.completed_at > done_at
            ):
                step.completed_at = done_at

    def _on_agent_update(self, data: Any) -> None:
        update = js_opt(data, "agent_update")
        if not truthy(update):
            return
        if not isinstance(update, dict):
            raise Abandon("agent_update is not an object")
        index = self._resolve_source(update.get("index", UNDEFINED))
        self._update(index, {**data, "agent_update": {**update, "index": index}})

    def _on_summarize_delta(self, data: Any) -> None:
        step = self._steps.get(js_key(js_get(data, "id")))
        if step is not None:
            self._update(step.index, js_get(js_get(data, "delta"), "summary"))

    def _on_summarize_complete(self, data: Any) -> None:
        summary = js_get(data, "summary")
        boundary = js_opt(summary, "boundary")
        if not truthy(boundary):
            return
        step = self._steps.get(js_key(js_get(boundary, "messageId")))
        if step is not None:
            self._set(step.index, summary)
            self._apply_meta(step.index)

    # -- the library's updateContent and its index bookkeeping --------------------------------

    def _update(self, index: int, part: Any, final: bool = False) -> None:
        if not isinstance(part, dict):  # falsy, or a primitive/array whose .type is undefined
            return
        part_type = part.get("type")
        if not truthy(part_type):
            return
        current = self._parts[index] if index < len(self._parts) else None
        if not truthy(current) and part_type != "tool_call":
            current = {"type": part_type}
            self._set(index, current)
        if not isinstance(part_type, str):
            raise Abandon(f"content part type {part_type!r} is not a string")
        current_type = "" if current is None else _part_type(current)
        if not part_type.startswith(js_str("" if nullish(current_type) else current_type)):
            return  # content type mismatch
        text = part.get("text")
        text = text if isinstance(text, str) else None
        cites = part.get("citations")
        cites = cites if isinstance(cites, list) else None
        if part_type.startswith("text") and (text is not None or cites is not None):
            self._update_text(index, current, part.get("tool_call_ids"), text, cites)
            return  # a new object in the library, so its metadata is fresh, not re-applied
        if part_type.startswith("think") and isinstance(think := part.get("think"), str):
            slot = _TextSlot.of(current, "think")
            slot.rope.add(think)
            self._put_text(index, current, slot)
            return
        if part_type.startswith("agent_update") and not nullish(part.get("agent_update")):
            self._set(index, {"type": "agent_update", "agent_update": part["agent_update"]})
        elif part_type in ("toolCall", "toolResponse"):
            self._set(index, dict(part))
        elif part_type == "summary":
            merged = _spread_or_empty(js_opt(current, "content")) + _spread_or_empty(
                part.get("content")
            )
            self._set(index, {**part, "content": merged})
        elif part_type == "image_url" and "image_url" in part:
            # the library copies the current part, not the incoming image
            self._set(index, dict(current) if isinstance(current, dict) else {})
        elif (
            part_type == "tool_call"
            and "tool_call" in part
            and not self._update_tool_call(index, current, part["tool_call"], final)
        ):
            return
        self._apply_meta(index)

    def _update_text(self, index: int, current: Any, ids: Any, text: Any, cites: Any) -> None:
        slot = _TextSlot.of(current, "text")
        if cites is not None:  # first: spreading odd citations throws before any change
            old = slot.citations
            if isinstance(old, list):  # the slot's own copy
                old.extend(cites)
            else:
                slot.citations = list(cites) if old is UNDEFINED else spread(old) + cites
        if text:
            slot.rope.add(text)
        if truthy(ids):
            slot.tool_call_ids = ids
        elif text is not None:
            slot.tool_call_ids = UNDEFINED
        self._put_text(index, current, slot)

    def _put_text(self, index: int, current: Any, slot: _TextSlot) -> None:
        """Store a text/think update with the metadata the library's new object would get."""
        if slot is not current:
            self._set(index, slot)
        meta = self._meta.get(index, NO_META)
        slot.agent_id = meta.get("agentId", UNDEFINED)
        slot.group_id = meta.get("groupId", UNDEFINED)
        self._dirty.add(index)

    def _update_tool_call(self, index: int, current: Any, incoming: Any, final: bool) -> bool:
        """The ``tool_call`` branch; False where the library returns before applying metadata."""
        name, call_id, args = (
            js_get(incoming, "name"),
            js_get(incoming, "id"),
            js_get(incoming, "args"),
        )
        if (nullish(name) or name == "") and not final:
            return False
        existing = js_opt(current, "tool_call")
        progress = js_opt(existing, "progress")
        if not final and is_number(progress) and progress == 1:
            return False
        new_id = non_empty(call_id, js_opt(existing, "id"))  # these may throw: before any change
        new_id = "" if new_id is UNDEFINED else new_id
        new_name = non_empty(name, js_opt(existing, "name"))
        old_args = js_opt(existing, "args")
        if final or is_object(old_args) or is_object(args):
            new_args = args
        else:
            new_args = js_add("" if nullish(old_args) else old_args, "" if nullish(args) else args)
        if final and nullish(new_args) and not nullish(old_args):
            new_args = old_args
        old_id = js_opt(existing, "id")
        if (
            not nullish(old_id)
            and old_id != ""
            and old_id != new_id
            and self._tool_index.get(js_key(old_id)) == index
        ):
            del self._tool_index[js_key(old_id)]
        call: dict[str, Any] = {"id": new_id, "name": "" if new_name is UNDEFINED else new_name}
        if new_args is not UNDEFINED:
            call["args"] = new_args
        call["type"] = "tool_call"
        auth = js_get(incoming, "auth")
        auth = js_opt(existing, "auth") if nullish(auth) else auth
        expires = js_get(incoming, "expires_at")
        expires = js_opt(existing, "expires_at") if nullish(expires) else expires
        if not nullish(auth):
            call["auth"] = auth
            if expires is not UNDEFINED:
                call["expires_at"] = expires
        if final:
            call["progress"] = 1
            if (output := js_get(incoming, "output")) is not UNDEFINED:
                call["output"] = output
            if not nullish(outcome := js_get(incoming, "outcome")):
                call["outcome"] = outcome
        new_part = {"type": "tool_call", "tool_call": call}
        self._set(index, new_part)
        self._index_part(index, new_part)
        self._indexed_len = max(self._indexed_len, index + 1)
        return True

    def _set(self, index: int, value: Any) -> None:
        parts = self._parts
        if index >= len(parts):
            if index >= self._max_slots:
                raise Abandon(f"content index {index} is beyond max_slots={self._max_slots}")
            parts.extend([None] * (index + 1 - len(parts)))
        if (parts[index] is None) != (value is None):
            self._filled += -1 if value is None else 1
        parts[index] = value
        self._dirty.add(index)

    def _set_meta(self, index: int, step: Any) -> None:
        """``setContentMeta``: remember the step's agent and parallel group for this slot."""
        self._remember_meta(index, js_opt(step, "agentId"), js_opt(step, "groupId"))

    def _remember_meta(self, index: int, agent: Any, group: Any) -> None:
        has_agent = not nullish(agent) and agent != ""
        if has_agent or not nullish(group):
            meta = self._meta.setdefault(index, {})
            if has_agent:
                meta["agentId"] = agent
            if not nullish(group):
                meta["groupId"] = group

    def _apply_meta(self, index: int) -> None:
        """``applyContentMetadata``, which mutates the part in place."""
        meta = self._meta.get(index)
        part = self._parts[index] if index < len(self._parts) else None
        if not meta or part is None:
            return
        if isinstance(part, _TextSlot):
            part.agent_id = meta.get("agentId", part.agent_id)
            part.group_id = meta.get("groupId", part.group_id)
        elif isinstance(part, dict):
            part.update(meta)
        self._dirty.add(index)

    def _index_part(self, index: int, part: Any) -> None:
        """``indexContentPart``: learn tool call ids and metadata carried by a part."""
        if part is None:
            return
        if _part_type(part) == "tool_call":
            call_id = js_get(_part_get(part, "tool_call"), "id")
            if not nullish(call_id) and call_id != "":
                self._tool_index[js_key(call_id)] = index
        self._remember_meta(index, _part_get(part, "agentId"), _part_get(part, "groupId"))

    def _sync_seeded(self) -> None:
        for index in range(self._indexed_len, len(self._parts)):
            self._index_part(index, self._parts[index])
        self._indexed_len = len(self._parts)
        self._next = max(self._next, len(self._parts))

    def _tool_call_index(self, call_id: Any) -> int | None:
        if call_id is None or call_id is UNDEFINED or call_id == "":
            return None
        self._sync_seeded()
        return self._tool_index.get(js_key(call_id))

    def _allocate(self, minimum: int = 0) -> int:
        self._sync_seeded()
        index = max(self._next, minimum)
        self._next = index + 1
        return index

    def _resolve_source(self, source_index: Any) -> int:
        key = js_key(source_index)
        index = self._source_index.get(key)
        if index is None:
            index = self._allocate(min_index(source_index))
            self._source_index[key] = index
        return index

    def _register(self, state: _ToolStep, index: int, call_id: Any) -> None:
        """``registerToolContentIndex``: bind a slot to a tool step, and to a call id if given."""
        if index not in state.indices:
            state.indices[index] = state.unclaimed[index] = state.unbound[index] = None
        if nullish(call_id) or call_id == "":
            return
        old = state.call_ids.get(index)
        if old is not None and old != call_id and self._tool_index.get(js_key(old)) == index:
            del self._tool_index[js_key(old)]
        self._tool_index[js_key(call_id)] = index
        state.call_ids[index] = call_id
        state.unbound.pop(index, None)


def _part_type(part: Any) -> Any:
    return part.kind if isinstance(part, _TextSlot) else js_opt(part, "type")


def _part_get(part: Any, key: str) -> Any:
    if isinstance(part, _TextSlot):
        return (
            part.agent_id if key == "agentId" else part.group_id if key == "groupId" else UNDEFINED
        )
    return js_opt(part, key)


def _spread_or_empty(value: Any) -> list[Any]:
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
