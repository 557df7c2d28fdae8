"""LibreChat's abort final event and abort text, built from what the owner knows.

Shapes follow LibreChat's abort path (GenerationJobManager.abortJob and the agents abort
controller): ``aborted: true``; when nothing was generated, ``earlyAbort: true`` and
``conversation: null``; otherwise a ``responseMessage`` holding the content so far with
``unfinished: true``, whose ``messageId`` is the job's responseMessageId or ``<userMessageId>_``.
"""

from __future__ import annotations

from typing import Any


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


def build_abort_final(job: dict[str, Any], content: list[Any], early: bool) -> dict[str, Any]:
    """The final event an aborted job ends with."""
    user_message = job.get("userMessage") or {}
    user_id = user_message.get("messageId") if isinstance(user_message, dict) else None
    conversation_id = job.get("conversationId")
    message_id = job.get("responseMessageId") or (f"{user_id}_" if user_id else None)
    event: dict[str, Any] = {
        "final": True,
        "aborted": True,
        "requestMessage": user_message or None,
    }
    if early:
        event["earlyAbort"] = True
        event["conversation"] = None
        event["responseMessage"] = None
        return event
    response: dict[str, Any] = {
        "messageId": message_id,
        "parentMessageId": user_id,
        "conversationId": conversation_id,
        "content": content,
        "isCreatedByUser": False,
        "unfinished": True,
        "error": False,
    }
    for key in ("sender", "endpoint", "model", "iconURL"):
        if job.get(key) is not None:
            response[key] = job[key]
    event["conversation"] = {"conversationId": conversation_id} if conversation_id else None
    event["responseMessage"] = response
    return event
