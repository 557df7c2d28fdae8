"""The abort final event and abort text, from what a job's record and aggregator hold.

The event's shape is LibreChat's (``schemas.events.abort_final_event``); this module only maps a
job record onto it, so the owner and a replica taking over a dead owner's job build the same
event.
"""

from __future__ import annotations

from typing import Any

from schemas.content.aggregator import parse_text_parts as parse_text
from schemas.events import abort_final_event

__all__ = ["build_abort_final", "parse_text"]


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
