"""Durable Streams wire rules with no I/O: header names, offsets, validation, cursors, SSE framing.

Everything here follows the protocol's specification as the conformance suite checks it; the
storage mapping (what an offset *is*) is in :mod:`.storage` and docs/http.md.
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from datetime import UTC, datetime
from typing import Final

import msgspec

# Request and response headers -------------------------------------------------------------
H_NEXT_OFFSET: Final = "Stream-Next-Offset"
H_UP_TO_DATE: Final = "Stream-Up-To-Date"
H_CURSOR: Final = "Stream-Cursor"
H_CLOSED: Final = "Stream-Closed"
H_SEQ: Final = "Stream-Seq"
H_TTL: Final = "Stream-TTL"
H_EXPIRES_AT: Final = "Stream-Expires-At"
H_FORKED_FROM: Final = "Stream-Forked-From"
H_FORK_OFFSET: Final = "Stream-Fork-Offset"
H_FORK_SUB_OFFSET: Final = "Stream-Fork-Sub-Offset"
H_SSE_ENCODING: Final = "Stream-SSE-Data-Encoding"
H_PRODUCER_ID: Final = "Producer-Id"
H_PRODUCER_EPOCH: Final = "Producer-Epoch"
H_PRODUCER_SEQ: Final = "Producer-Seq"
H_PRODUCER_EXPECTED: Final = "Producer-Expected-Seq"
H_PRODUCER_RECEIVED: Final = "Producer-Received-Seq"

CORS_ALLOW_HEADERS: Final = ", ".join(
    [
        "content-type",
        "authorization",
        "if-none-match",
        H_SEQ,
        H_TTL,
        H_EXPIRES_AT,
        H_CLOSED,
        H_PRODUCER_ID,
        H_PRODUCER_EPOCH,
        H_PRODUCER_SEQ,
        H_FORKED_FROM,
        H_FORK_OFFSET,
        H_FORK_SUB_OFFSET,
    ]
)
CORS_EXPOSE_HEADERS: Final = ", ".join(
    [
        H_NEXT_OFFSET,
        H_CURSOR,
        H_UP_TO_DATE,
        H_CLOSED,
        H_PRODUCER_EPOCH,
        H_PRODUCER_SEQ,
        H_PRODUCER_EXPECTED,
        H_PRODUCER_RECEIVED,
        H_SSE_ENCODING,
        "etag",
        "content-type",
        "location",
    ]
)
CORS_ALLOW_METHODS: Final = "GET, POST, PUT, DELETE, HEAD, OPTIONS"

# Offsets --------------------------------------------------------------------------------
# An offset names a JetStream sequence: "everything after message N". Two fixed-width,
# zero-padded decimal fields joined by "_" so that string order is numeric order; the first is
# always 0 (reserved), the second is the sequence. 16 digits last 300 years at a million
# appends a second. "-1" (start) and "now" (tail) are sentinels and never minted.
OFFSET_START: Final = "-1"
OFFSET_NOW: Final = "now"
_OFFSET_RE: Final = re.compile(r"([0-9]{16})_([0-9]{16})")
BEYOND: Final = 10**16
"""What an offset with a non-zero first field decodes to: after every sequence we mint."""


def format_offset(seq: int) -> str:
    return f"0000000000000000_{seq:016d}"


ZERO_OFFSET: Final = format_offset(0)


def parse_offset(raw: str) -> int | None:
    """The sequence an offset we minted stands for; ``None`` if it is not one of ours."""
    m = _OFFSET_RE.fullmatch(raw)
    if m is None:
        return None
    return BEYOND if int(m.group(1)) else int(m.group(2))


# Header values ---------------------------------------------------------------------------
_DECIMAL_RE: Final = re.compile(r"0|[1-9][0-9]*")
_DIGITS_RE: Final = re.compile(r"[0-9]+")
MAX_SAFE_INTEGER: Final = 2**53 - 1


def parse_ttl(raw: str) -> int | None:
    """``Stream-TTL``: a decimal integer without sign, leading zeros, fraction or exponent."""
    return int(raw) if _DECIMAL_RE.fullmatch(raw) else None


def parse_sub_offset(raw: str) -> int | None:
    return int(raw) if _DECIMAL_RE.fullmatch(raw) else None


def parse_producer_int(raw: str) -> int | None:
    """``Producer-Epoch`` / ``Producer-Seq``: digits only, at most 2^53-1."""
    if not _DIGITS_RE.fullmatch(raw):
        return None
    value = int(raw)
    return value if value <= MAX_SAFE_INTEGER else None


def parse_expires_at(raw: str) -> float | None:
    """``Stream-Expires-At`` (RFC 3339 / ISO 8601) as a Unix timestamp; ``None`` if invalid."""
    text = raw.strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:  # no zone given: UTC, as every example in the specification
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def media_type(content_type: str | None) -> str:
    """The comparable part of a content type: before any ``;``, trimmed, lower case."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


_CT_RE: Final = re.compile(r"[\w-]+/[\w-]+")
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


def creation_content_type(raw: str | None) -> str | None:
    """The content type a PUT gives its stream; ``None`` when absent or not a media type."""
    if raw is None or not _CT_RE.match(raw.strip()):
        return None
    return raw.strip()


def is_json(content_type: str) -> bool:
    return media_type(content_type) == "application/json"


def is_text(content_type: str) -> bool:
    """Text-compatible types go over SSE as UTF-8 text; every other type as base64."""
    mt = media_type(content_type)
    return mt.startswith("text/") or mt == "application/json"


# JSON mode ------------------------------------------------------------------------------
class JsonBodyError(ValueError):
    """A JSON-mode body is not valid JSON, or is an empty array where one is not allowed."""


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _parse_json(data: bytes) -> object:
    """JSON as ``JSON.parse`` takes it. msgspec first (fast); what it refuses but JSON allows
    (a number beyond a double's range, a lone surrogate escape) through the standard library,
    without its non-JSON extensions (NaN, Infinity).

    Raises:
        JsonBodyError: not JSON.
    """
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as e:
        error: Exception = e
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise JsonBodyError(f"Invalid JSON: {error}") from error


def json_fragment(body: bytes, *, allow_empty: bool) -> bytes | None:
    """What one POST (or PUT body) of a JSON stream stores: its values, comma separated.

    A top-level array is flattened one level (its inner text is stored, so ``[a,b]`` is two
    values); any other value is stored as sent. The stored bytes are the request's own bytes,
    never re-serialised. ``None``: an empty array, allowed on create only.

    Raises:
        JsonBodyError: invalid JSON, or an empty array when ``allow_empty`` is false.
    """
    value = _parse_json(body)
    text = body.strip(b" \t\r\n")
    if isinstance(value, list):
        if not value:
            if allow_empty:
                return None
            raise JsonBodyError("Empty arrays are not allowed")
        return text[1:-1].strip(b" \t\r\n")
    return text


def json_values(fragment: bytes) -> list[object]:
    """The values a stored JSON fragment holds.

    Raises:
        JsonBodyError: the fragment does not parse (stored by something else).
    """
    values = _parse_json(b"[" + fragment + b"]")
    assert isinstance(values, list)
    return values


def json_prefix(fragment: bytes, count: int) -> bytes:
    """The first ``count`` values of a stored fragment, as a fragment.

    Raises:
        JsonBodyError: fewer values than ``count``, or the fragment does not parse.
    """
    values = json_values(fragment)
    if count > len(values):
        raise JsonBodyError(f"sub-offset {count} overshoots the {len(values)} values")
    return b",".join(msgspec.json.encode(v) for v in values[:count])


def json_body(fragments: list[bytes]) -> bytes:
    """A JSON-mode response body: every value of the range in one array."""
    return b"[" + b",".join(fragments) + b"]"


# Cursors (CDN collapsing) ------------------------------------------------------------------
CURSOR_EPOCH: Final = 1728432000.0  # 2024-10-09T00:00:00Z
CURSOR_INTERVAL: Final = 20


def response_cursor(client_cursor: str | None, now: float | None = None) -> str:
    """The cursor of a live response: the current 20 s interval number since the epoch, or,
    when the client's cursor is not behind it, the client's plus 1-3600 s of jitter."""
    current = int(((time.time() if now is None else now) - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if not client_cursor:
        return str(current)
    try:
        theirs = int(client_cursor)
    except ValueError:
        return str(current)
    if theirs < current:
        return str(current)
    jitter = random.randint(1, 3600)
    return str(theirs + max(1, -(-jitter // CURSOR_INTERVAL)))


# SSE ------------------------------------------------------------------------------------
_LINE_BREAK_RE: Final = re.compile(r"\r\n|\r|\n")
_control_encoder: Final = msgspec.json.Encoder()


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event; every line of ``payload`` becomes its own ``data:`` line, so no payload
    can end the event early or inject another (CR, LF and CRLF all count as line breaks).
    No space after ``data:``: clients strip exactly one, which would eat a payload's own."""
    lines = _LINE_BREAK_RE.split(payload)
    return ("event: " + kind + "\n" + "".join("data:" + ln + "\n" for ln in lines) + "\n").encode()


def sse_data(payload: bytes, *, content_type: str) -> bytes:
    """A data event: UTF-8 text for text and JSON streams, base64 for every other type."""
    if is_text(content_type):
        return sse_event("data", payload.decode("utf-8", "replace"))
    return sse_event("data", base64.b64encode(payload).decode("ascii"))


def sse_control(next_offset: str, *, cursor: str | None, up_to_date: bool, closed: bool) -> bytes:
    """A control event; a closed stream's final one carries no cursor (clients stop there)."""
    body: dict[str, object] = {"streamNextOffset": next_offset}
    if closed:
        body["streamClosed"] = True
    else:
        if cursor is not None:
            body["streamCursor"] = cursor
        if up_to_date:
            body["upToDate"] = True
    return sse_event("control", _control_encoder.encode(body).decode())
