"""A deterministic simulated LLM run in LibreChat's event shapes (for the demo, tests, bench).

It produces what an agent run streams: a ``created`` event, a reasoning step with think deltas,
a tool call (announced, streamed as chunks, completed with output), then a text step with text
deltas — all with stable ids so runs can be compared exactly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

WORDS = [
    "Resumable",
    "streams",
    "keep",
    "a",
    "generation",
    "alive",
    "while",
    "readers",
    "come",
    "and",
    "go;",
    "each",
    "event",
    "is",
    "stored",
    "once,",
    "in",
    "order,",
    "and",
    "every",
    "reader",
    "resumes",
    "exactly",
    "where",
    "it",
    "left",
    "off.",
]


def created_event(
    job_id: str, user_message_id: str = "user-msg-1", text: str = "Hello"
) -> dict[str, Any]:
    return {
        "created": True,
        "message": {
            "messageId": user_message_id,
            "parentMessageId": "00000000-0000-0000-0000-000000000000",
            "conversationId": job_id,
            "text": text,
        },
        "streamId": job_id,
    }


def run_step(
    step_id: str,
    index: int,
    kind: str = "message_creation",
    calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    details: dict[str, Any]
    if kind == "tool_calls":
        details = {"type": "tool_calls", "tool_calls": calls or []}
    else:
        details = {"type": "message_creation", "message_creation": {"message_id": f"msg_{step_id}"}}
    return {
        "event": "on_run_step",
        "data": {
            "stepIndex": index,
            "id": step_id,
            "type": kind,
            "index": index,
            "stepDetails": details,
            "usage": None,
        },
    }


def text_delta(step_id: str, text: str) -> dict[str, Any]:
    return {
        "event": "on_message_delta",
        "data": {"id": step_id, "delta": {"content": [{"type": "text", "text": text}]}},
    }


def think_delta(step_id: str, text: str) -> dict[str, Any]:
    return {
        "event": "on_reasoning_delta",
        "data": {"id": step_id, "delta": {"content": [{"type": "think", "think": text}]}},
    }


def tool_chunk(step_id: str, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
    chunk: dict[str, Any] = {"args": args, "index": 0, "type": "tool_call_chunk"}
    if call_id:
        chunk["id"] = call_id
    if name:
        chunk["name"] = name
    return {
        "event": "on_run_step_delta",
        "data": {"id": step_id, "delta": {"type": "tool_calls", "tool_calls": [chunk]}},
    }


def tool_completed(step_id: str, call_id: str, name: str, args: str, output: str) -> dict[str, Any]:
    return {
        "event": "on_run_step_completed",
        "data": {
            "result": {
                "id": step_id,
                "index": 0,
                "type": "tool_call",
                "tool_call": {
                    "args": args,
                    "name": name,
                    "id": call_id,
                    "output": output,
                    "progress": 1,
                },
            }
        },
    }


def generation(
    job_id: str, tokens: int = 60, *, with_tool: bool = True, reasoning: int = 8
) -> Iterator[dict[str, Any]]:
    """The events of one run: created, reasoning, optional tool call, then ``tokens`` text deltas."""
    yield created_event(job_id)
    index = 0
    if reasoning:
        yield run_step("step_think", index)
        for i in range(reasoning):
            yield think_delta("step_think", f"thought {i}. ")
        index += 1
    if with_tool:
        args = json.dumps({"query": "resumable streams"})
        yield run_step(
            "step_tool",
            index,
            "tool_calls",
            [{"id": "call_1", "name": "web_search", "args": {}, "type": "tool_call"}],
        )
        yield tool_chunk("step_tool", "call_1", "web_search", args[: len(args) // 2])
        yield tool_chunk("step_tool", None, None, args[len(args) // 2 :])
        yield tool_completed("step_tool", "call_1", "web_search", args, "3 results")
        index += 1
    yield run_step("step_text", index)
    for i in range(tokens):
        yield text_delta("step_text", WORDS[i % len(WORDS)] + " ")


def final_event(job_id: str, content: list[Any] | None = None) -> dict[str, Any]:
    return {
        "final": True,
        "conversation": {"conversationId": job_id, "title": "Demo"},
        "title": "Demo",
        "requestMessage": {"messageId": "user-msg-1", "conversationId": job_id},
        "responseMessage": {
            "messageId": "user-msg-1_",
            "conversationId": job_id,
            "content": content or [],
        },
    }


def usage_openai(prompt: int = 100, completion: int = 50, cached: int = 20) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "input_tokens": prompt,
        "output_tokens": completion,
        "total_tokens": prompt + completion,
        "input_token_details": {"cache_read": cached},
    }


def usage_anthropic(prompt: int = 100, completion: int = 50) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4",
        "input_tokens": prompt,
        "output_tokens": completion,
        "cache_creation_input_tokens": 10,
        "cache_read_input_tokens": 30,
    }
