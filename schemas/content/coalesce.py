"""Merging consecutive text or reasoning deltas of one step into a single event (docs/protocol.md, the event log).

Under load a publisher may hold back the next event while a publish is in flight and fold later
deltas into it, so readers get fewer, larger messages. That is only allowed when the aggregate
(``actors.aggregator``, i.e. LibreChat's ``createContentAggregator``) is exactly what the
unmerged events give. The rules below are narrow enough to prove it:

1. Both events are ``on_message_delta``, or both ``on_reasoning_delta``, with the same string
   step id, and are exactly ``{"event", "data": {"id", "delta": {"content"}}}``. The library
   handles both names the same way: look the step up by id (nothing in between can change the
   step map, and an unknown step makes both a no-op) and feed each part of ``content`` (null,
   missing, one object or a list) to ``updateContent`` for that step's slot, in order. So one
   event with the parts of both, in order, does the same, unless a part makes the library throw
   half-way, which rule 2 excludes.
2. Every part is *safe*: an object of type ``"text"`` without a ``citations`` array, or of type
   ``"think"``. ``updateContent`` cannot throw on those whatever the slot holds (only spreading
   a slot's non-iterable ``citations`` could), so they are applied in full in either case.
   Parts with ``citations``, other types and non-object parts are never merged.
3. Adjacent *plain* parts, ``{"type": "text", "text": str}`` or ``{"type": "think", "think":
   str}`` with at most an integer provider ``index`` (which ``updateContent`` never reads) that
   is the same on both, are joined into one part. Such a part touches the slot only through its
   string: the slot's text (``|| ''``) plus the string, ``tool_call_ids`` dropped, ``citations``
   kept, the step's metadata applied, whatever the string is; so two of them in a row equal one
   with the strings joined. A part with ``tool_call_ids`` is kept as a part of its own, since
   whether ids survive depends on the parts after it.
4. ``on_run_step_delta`` is never merged: nameless tool-call chunks are routed by position and
   state, so their effect depends on how they are split.

Merging never mutates the parts of the events passed in; ``try_merge`` replaces the ``data`` of
the pending event with a new object.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PlainRun", "coalesce", "try_merge"]

_MERGEABLE = frozenset({"on_message_delta", "on_reasoning_delta"})


def _is_safe(part: Any) -> bool:
    """Rule 2: a part on which ``updateContent`` cannot throw, whatever the slot holds."""
    if type(part) is not dict:
        return False
    part_type = part.get("type")
    return part_type == "think" or (
        part_type == "text" and type(part.get("citations", None)) is not list
    )


def _is_plain(part: dict[str, Any]) -> bool:
    """Rule 3: a safe part whose whole effect is appending its string."""
    field = part["type"]
    if type(part.get(field)) is not str:
        return False
    return len(part) == 2 or (len(part) == 3 and type(part.get("index")) is int)


def _mergeable_parts(event: Any) -> list[dict[str, Any]] | None:
    """The delta's parts when the event may take part in a merge (rules 1 and 2), else None."""
    if type(event) is not dict or len(event) != 2 or event.get("event") not in _MERGEABLE:
        return None
    data = event.get("data")
    if type(data) is not dict or len(data) != 2 or type(data.get("id")) is not str:
        return None
    delta = data.get("delta")
    if type(delta) is not dict or (len(delta) != 0 and (len(delta) != 1 or "content" not in delta)):
        return None
    content = delta.get("content")
    if content is None:
        return []
    parts = content if type(content) is list else [content]
    for part in parts:
        if not _is_safe(part):
            return None
    return parts


def _fuse(part_lists: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """All parts in order as new objects, runs of joinable plain parts joined (rule 3)."""
    fused: list[dict[str, Any]] = []
    pieces: list[str] = []  # strings of fused[-1] when it is plain
    for parts in part_lists:
        for part in parts:
            plain = _is_plain(part)
            if plain and pieces and _joinable(fused[-1], part):
                pieces.append(part[part["type"]])
                continue
            _flush(fused, pieces)
            fused.append(dict(part))
            pieces = [part[part["type"]]] if plain else []
    _flush(fused, pieces)
    return fused


def _joinable(last: dict[str, Any], part: dict[str, Any]) -> bool:
    return bool(last["type"] == part["type"] and last.get("index") == part.get("index"))


def _flush(fused: list[dict[str, Any]], pieces: list[str]) -> None:
    if len(pieces) > 1:
        fused[-1][fused[-1]["type"]] = "".join(pieces)


def _size(parts: list[dict[str, Any]]) -> int:
    return sum(len(text) for part in parts if type(text := part.get(part["type"])) is str)


def _same_run(pending: dict[str, Any], new: dict[str, Any]) -> bool:
    return bool(pending["event"] == new["event"] and pending["data"]["id"] == new["data"]["id"])


def try_merge(
    pending: dict[str, Any], new: dict[str, Any], *, max_chars: int | None = None
) -> bool:
    """Fold ``new`` into ``pending`` when that provably leaves the aggregate unchanged.

    Returns True when merged (``pending["data"]`` is then a new object and ``new`` should be
    dropped), False when ``new`` must be published as its own event. ``max_chars`` caps the
    merged event's text so it stays within a message size limit.
    """
    before = _mergeable_parts(pending)
    if before is None:
        return False
    after = _mergeable_parts(new)
    if after is None or not _same_run(pending, new):
        return False
    if max_chars is not None and _size(before) + _size(after) > max_chars:
        return False
    pending["data"] = {"id": pending["data"]["id"], "delta": {"content": _fuse([before, after])}}
    return True


def coalesce(events: list[dict[str, Any]], *, max_chars: int | None = None) -> list[dict[str, Any]]:
    """The events with every mergeable run folded into one event, as ``try_merge`` would.

    The input events are not modified; events that are not merged are returned as they are.
    """
    out: list[dict[str, Any]] = []
    run: list[list[dict[str, Any]]] = []  # parts of the mergeable run ending at out[-1]
    run_size = 0
    for event in events:
        parts = _mergeable_parts(event)
        if parts is not None and run:
            size = _size(parts)
            within = max_chars is None or run_size + size <= max_chars
            if within and _same_run(out[-1], event):
                run.append(parts)
                run_size += size
                continue
        _close_run(out, run)
        out.append(event)
        run = [] if parts is None else [parts]
        run_size = 0 if parts is None else _size(parts)
    _close_run(out, run)
    return out


def _close_run(out: list[dict[str, Any]], run: list[list[dict[str, Any]]]) -> None:
    if len(run) > 1:
        first = out[-1]
        out[-1] = {
            "event": first["event"],
            "data": {"id": first["data"]["id"], "delta": {"content": _fuse(run)}},
        }


class PlainRun:
    """A run of *simple* deltas of one step kept as strings until it is published.

    The common case under load is a stream of single-part plain deltas (rule 3) of one step:
    ``{"event": <delta>, "data": {"id": <str>, "delta": {"content": <one plain part or a list
    of one>}}}``. Folding each with :func:`try_merge` re-validates and rebuilds the whole
    pending event per token; this keeps the first event untouched plus the strings, and
    :meth:`event` builds exactly what successive :func:`try_merge` calls would have built
    (same keys, same order). Anything else is left to :func:`try_merge`.
    """

    __slots__ = ("_field", "_first", "_key", "_part", "pieces")

    def __init__(
        self, first: dict[str, Any], part: dict[str, Any], key: tuple[Any, ...], text: str
    ) -> None:
        self._first = first
        self._part = part
        self._field: str = part["type"]
        self._key = key
        self.pieces = [text]

    @classmethod
    def start(cls, event: dict[str, Any]) -> PlainRun | None:
        """A run holding ``event`` when it is a simple delta, else None."""
        simple = _simple(event)
        return None if simple is None else cls(event, *simple)

    def add(self, event: dict[str, Any]) -> bool:
        """Append ``event``'s text when it is a simple delta joinable to the run's."""
        simple = _simple(event)
        if simple is None or simple[1] != self._key:
            return False
        self.pieces.append(simple[2])
        return True

    def event(self) -> dict[str, Any]:
        """The run as one event: the first event itself if nothing was added, else a new one."""
        if len(self.pieces) == 1:
            return self._first
        part = dict(self._part)
        part[self._field] = "".join(self.pieces)
        merged = dict(self._first)
        merged["data"] = {"id": self._key[1], "delta": {"content": [part]}}
        return merged


def _simple(event: dict[str, Any]) -> tuple[dict[str, Any], tuple[Any, ...], str] | None:
    """(its part, run key, text) when ``event`` is a single-part plain delta (rules 1-3)."""
    if type(event) is not dict or len(event) != 2:
        return None
    name = event.get("event")
    data = event.get("data")
    if name not in _MERGEABLE or type(data) is not dict or len(data) != 2:
        return None
    step_id = data.get("id")
    delta = data.get("delta")
    if type(step_id) is not str or type(delta) is not dict or len(delta) != 1:
        return None
    part = delta.get("content")
    if type(part) is list:
        if len(part) != 1:
            return None
        part = part[0]
    if type(part) is not dict:
        return None
    field = part.get("type")
    if field != "text" and field != "think":
        return None
    text = part.get(field)
    if type(text) is not str:
        return None
    if len(part) == 2:
        index = None
    elif len(part) == 3 and type(part.get("index")) is int:
        index = part["index"]
    else:
        return None
    return part, (name, step_id, field, index), text
