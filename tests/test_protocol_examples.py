"""Every JSON example of docs/protocol.md decodes with the strict decoder of the type it names.

The ``## Examples`` section gives one complete body per message, in fenced blocks whose info
string names the type (```` ```json AbortResult ````). Each is decoded strictly (no type
coercion) and must not carry a key the type does not know (a reply decoder ignores unknown keys,
so a misspelt field would otherwise pass). Inline JSON in the prose that parses as JSON must be
a valid body of some documented type; inline shapes with placeholders (``{"ok": true,
"nextIndex": N}``) are not JSON and are left to the examples.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import api, bookkeeping
from schemas.events import validate_event
from schemas.job import JobRecord
from service.server.api import SyncRequest

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
TEXT = DOC.read_text()

TYPES: dict[str, type[msgspec.Struct]] = {
    t.__name__: t
    for t in (
        JobRecord,
        SyncRequest,
        *api.REQUEST_TYPES.values(),
        api.StatusReply,
        api.ResumeSnapshot,
        api.AbortResult,
        api.CompletionResult,
        api.ActiveReply,
        api.CountsReply,
        api.SyncReply,
        api.ErrorBody,
        api.IngestBatch,
        api.IngestReply,
        api.AbortNotice,
        api.AbortSubjectBody,
        api.OwnerRequest,
        bookkeeping.UserIndexEntry,
        bookkeeping.CleanupOrder,
        bookkeeping.Heartbeat,
        bookkeeping.PresenceAnnouncement,
    )
}
WIRE_TYPES = set(TYPES) - {"CompletionResult"}  # the in-process result of complete()/fail()

BLOCK = re.compile(r"^```json(?: (\w+))?\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`(\{\"[^`]*\})`")


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group(1), m.group(2)) for m in BLOCK.finditer(TEXT)]


def keys_of(type_: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(type_)}


def strict(data: str, type_: type[msgspec.Struct]) -> Any:
    value = msgspec.json.decode(data, type=type_, strict=True)
    if type_ is api.IngestBatch:
        api.decode_ingest(data)  # the events too, as the gateway checks them
    return value


def test_every_json_block_names_a_known_type() -> None:
    found = blocks()
    assert found, "no JSON examples found in docs/protocol.md"
    for name, body in found:
        assert name in TYPES, f"a json block without a known type ({name!r}):\n{body}"


def test_every_wire_type_has_an_example() -> None:
    assert {name for name, _ in blocks()} >= WIRE_TYPES


@pytest.mark.parametrize(
    ("name", "body"), blocks(), ids=lambda v: v if isinstance(v, str) and len(v) < 30 else ""
)
def test_example_decodes_strictly_and_has_no_unknown_key(name: str, body: str) -> None:
    type_ = TYPES[name]
    strict(body, type_)
    unknown = set(json.loads(body)) - keys_of(type_)
    assert not unknown, f"{name} example has keys {type_.__name__} does not know: {unknown}"


def test_inline_json_in_the_prose_is_a_valid_body() -> None:
    checked = 0
    for text in INLINE.findall(TEXT):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue  # a shape with placeholders, not an example
        fits = []
        try:
            validate_event(obj)
            fits.append("event")  # a LibreChat event as the log stores it
        except ValueError:
            pass
        for name, type_ in TYPES.items():
            try:
                strict(text, type_)
            except (msgspec.DecodeError, ValueError):
                continue
            if set(obj) <= keys_of(type_):
                fits.append(name)
        assert fits, f"inline JSON in docs/protocol.md fits no documented type: {text}"
        checked += 1
    assert checked >= 2
