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

Three modules, by concern: this one routes each event to its handler (``on_run_step``,
deltas, completions, agent updates, summaries); ``schemas/content/slots.py`` is the content
array and the library's ``updateContent`` with its index bookkeeping; ``schemas/content/parts.py``
the parts under construction, steps and ``parseTextParts``. JS value semantics are
``schemas/content/js.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from schemas.content.js import (
    UNDEFINED,
    Abandon,
    is_number,
    js_get,
    js_key,
    js_opt,
    nullish,
    truthy,
)
from schemas.content.parts import (
    Step,
    TextSlot,
    ToolStep,
    parse_text_parts,
    take_first,
)
from schemas.content.slots import ContentSlots

__all__ = ["UNDEFINED", "ContentAggregator", "parse_text_parts"]

_log = logging.getLogger(__name__)


class ContentAggregator(ContentSlots):
    """Builds LibreChat content parts from step events, one event at a time.

    Owned by one actor: not thread-safe, and the lists and dicts it returns are shared, so treat
    them as read-only. The content array and ``updateContent`` are
    :class:`~schemas.content.slots.ContentSlots`; this class routes each event to them.
    """

    def __init__(self, *, max_slots: int = 100_000) -> None:
        super().__init__(max_slots=max_slots)
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
        if type(current) is not TextSlot or type(part) is not dict:
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
            self._steps[key] = step = Step(data, step_index)
        else:
            step.data, step.index = data, step_index
        self._set_meta(step_index, data)
        summary = js_get(data, "summary")
        if not nullish(summary):
            self._update(step_index, summary)
        if not is_tool_step:
            return
        state = self._tool_steps.get(key) or ToolStep(step_index)
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
        state = self._tool_steps.get(key) or ToolStep(step.index)
        for chunk in chunks:
            self._tool_chunk(step, state, chunk, js_get(delta, "auth"), js_get(delta, "expires_at"))
        self._tool_steps[key] = state

    def _tool_chunk(self, step: Step, state: ToolStep, chunk: Any, auth: Any, exp: Any) -> None:
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
            index = take_first(state.unclaimed if explicit is None else state.unbound)
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
