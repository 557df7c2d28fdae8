"""The abort final event and abort text, from what a job's record and aggregator hold.

The event's shape is LibreChat's (``schemas.events.abort_final_event``); this module only maps a
job record onto it, so the owner and a replica taking over a dead owner's job build the same
event.
"""

from __future__ import annotations

from typing import Any

from schemas.events import abort_final_event


def parse_text(content: list[Any]) -> str:
    """LibreChat's ``parseTextParts``: text and think parts in order, one space between two
    parts unless either side of the join already has one."""
    out = ""
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        piece: Any = None
        if kind == "text":
            piece = part.get("text")
        elif kind == "think":
            piece = part.get("think")
        if not isinstance(piece, str) or not piece:
            continue
        if out and not out.endswith(" ") and not piece.startswith(" "):
            out += " "
        out += piece
    return out


def build_abort_final(job: dict[str, Any], content: list[Any]) -> dict[str, Any]:
    """LibreChat's abort final for ``job`` (a record as JSON) with ``content`` generated so far.

    ``earlyAbort`` follows LibreChat's rule: no content and no responseMessageId yet.
    """
    return abort_final_event(
        user_message=job.get("userMessage"),
        response_message_id=job.get("responseMessageId"),
        content=content,
        conversation_id=job.get("conversationId"),
        sender=job.get("sender"),
    )
