"""The content array of an aggregation and the library's ``updateContent`` with its index
bookkeeping (slots, tool call ids, step metadata): what every event ends up calling.

:class:`ContentSlots` holds the state and the reads; :class:`~schemas.content.aggregator.
ContentAggregator` routes events to it (``schemas/content/aggregator.py`` explains the port and
its rules).
"""

from __future__ import annotations

from typing import Any

from schemas.content.js import (
    NO_META,
    UNDEFINED,
    Abandon,
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
from schemas.content.parts import (
    Step,
    TextSlot,
    ToolStep,
    export_part,
    parse_text_parts,
    part_get,
    spread_or_empty,
    type_of,
)


class ContentSlots:
    """The content parts, their exported view, and the indices that route deltas to them."""

    def __init__(self, *, max_slots: int = 100_000) -> None:
        self._max_slots = max_slots
        self._parts: list[Any] = []  # None (hole) | TextSlot | dict | other JSON value
        self._view: list[Any] = []  # exported parts, rebuilt for indices in _dirty
        self._dirty: set[int] = set()
        self._filled = 0
        self._meta: dict[int, dict[str, Any]] = {}
        self._steps: dict[Any, Step] = {}
        self._tool_index: dict[Any, int] = {}
        self._source_index: dict[Any, int] = {}
        self._tool_steps: dict[Any, ToolStep] = {}
        self._indexed_len = 0
        self._next = 0
        self.dropped_events = 0

    # -- reading -----------------------------------------------------------------------------

    def content(self) -> list[Any]:
        """The content array, ``None`` for holes; a new list of shared, never-mutated parts."""
        view, parts = self._view, self._parts
        if len(view) < len(parts):
            view.extend([None] * (len(parts) - len(view)))
        for index in self._dirty:
            view[index] = export_part(parts[index])
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
        current_type = "" if current is None else type_of(current)
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
            slot = TextSlot.of(current, "think")
            slot.rope.add(think)
            self._put_text(index, current, slot)
            return
        if part_type.startswith("agent_update") and not nullish(part.get("agent_update")):
            self._set(index, {"type": "agent_update", "agent_update": part["agent_update"]})
        elif part_type in ("toolCall", "toolResponse"):
            self._set(index, dict(part))
        elif part_type == "summary":
            merged = spread_or_empty(js_opt(current, "content")) + spread_or_empty(
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
        slot = TextSlot.of(current, "text")
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

    def _put_text(self, index: int, current: Any, slot: TextSlot) -> None:
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
        if isinstance(part, TextSlot):
            part.agent_id = meta.get("agentId", part.agent_id)
            part.group_id = meta.get("groupId", part.group_id)
        elif isinstance(part, dict):
            part.update(meta)
        self._dirty.add(index)

    def _index_part(self, index: int, part: Any) -> None:
        """``indexContentPart``: learn tool call ids and metadata carried by a part."""
        if part is None:
            return
        if type_of(part) == "tool_call":
            call_id = js_get(part_get(part, "tool_call"), "id")
            if not nullish(call_id) and call_id != "":
                self._tool_index[js_key(call_id)] = index
        self._remember_meta(index, part_get(part, "agentId"), part_get(part, "groupId"))

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

    def _register(self, state: ToolStep, index: int, call_id: Any) -> None:
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
