"""``genjobs aggregate FILE``: rebuild a recorded event stream's content offline.

This lets anyone check what a resuming reader or an abort result would contain for a stream,
without a server, and compare it with LibreChat's own aggregator output (the fixture format of
``tests/fixtures/aggregation`` is accepted as is; only its ``events`` are read).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from schemas.content.aggregator import ContentAggregator

__all__ = ["main"]

_PROG = "genjobs aggregate"
_encoder = msgspec.json.Encoder()


class InputError(Exception):
    """The input cannot be aggregated; the message is shown to the user as is."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Aggregate a recorded LibreChat event stream into content parts, exactly as "
            "@librechat/agents' createContentAggregator would, and print one JSON object with "
            "content, content_filtered, text, text_without_reasoning and runSteps."
        ),
        epilog=(
            'FILE is JSON with an "events" list of {"event": name, "data": payload} objects '
            "(the aggregation fixture format). Exit status: 0 on success, 2 on unreadable or "
            "invalid input."
        ),
    )
    parser.add_argument("file", metavar="FILE", help='the stream to aggregate, or "-" for stdin')
    return parser


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _events(raw: bytes, path: str) -> list[dict[str, Any]]:
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise InputError(f'{path} has no "events" list')
    events: list[dict[str, Any]] = document["events"]
    for position, event in enumerate(events):
        if not isinstance(event, dict):
            raise InputError(f"{path}: events[{position}] is not an object")
        if not isinstance(event.get("event"), str):
            raise InputError(f'{path}: events[{position}] has no string "event" name')
    return events


def aggregate(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary the command prints, for callers that already hold the events."""
    aggregator = ContentAggregator()
    for event in events:
        aggregator.apply_event(event)
    return {
        "content": aggregator.content(),
        "content_filtered": aggregator.content_filtered(),
        "text": aggregator.text(),
        "text_without_reasoning": aggregator.text_without_reasoning(),
        "runSteps": aggregator.run_steps(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit status (argparse exits 2 itself on bad usage)."""
    args = _parser().parse_args(argv)
    try:
        events = _events(_read(args.file), "stdin" if args.file == "-" else args.file)
    except InputError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(_encoder.encode(aggregate(events)) + b"\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
