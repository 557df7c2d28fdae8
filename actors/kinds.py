"""The ``Genjobs-Kind`` of an event payload (DESIGN §5), decided once by the owner."""

from __future__ import annotations

from typing import Any

KINDS = ("created", "step", "attachment", "usage", "final", "error")
TERMINAL_KINDS = frozenset({"final", "error"})


def classify(event: dict[str, Any]) -> str:
    """Kind of a LibreChat SSE payload.

    Raises:
        ValueError: the payload is not one of the shapes genjobs carries.
    """
    if event.get("final") is True:
        return "final"
    name = event.get("event")
    if isinstance(name, str):
        if name.startswith("on_"):
            return "step"
        if name == "attachment":
            return "attachment"
        raise ValueError(f"unknown event name {name!r}")
    if event.get("created") is True:
        return "created"
    if "error" in event:
        return "error"
    raise ValueError("event has none of final, created, error, or an 'event' name")
