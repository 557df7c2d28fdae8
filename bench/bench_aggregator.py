"""Throughput of the aggregator and of coalescing on the 5,000-delta fixture.

The aggregator runs once per event inside a job's actor, so its per-event cost bounds how many
tokens per second one replica can take. Besides the plain rate, the stream is replayed ten
times over (50,000 deltas into one text part) to show the rate does not fall as content grows,
and ``content()`` is read every 1,000 events as a resuming reader would.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from schemas.content.aggregator import ContentAggregator
from schemas.content.coalesce import coalesce

DEFAULT_FIXTURE = (
    Path(__file__).resolve().parent.parent / "tests/fixtures/aggregation/09_long_stream.json"
)


def _aggregate(events: list[dict[str, Any]], read_every: int = 0) -> float:
    aggregator = ContentAggregator()
    start = time.perf_counter()
    for position, event in enumerate(events, 1):
        aggregator.apply_event(event)
        if read_every and position % read_every == 0:
            aggregator.content()
    aggregator.content()
    return time.perf_counter() - start


def _coalesce(events: list[dict[str, Any]]) -> float:
    start = time.perf_counter()
    coalesce(events)
    return time.perf_counter() - start


def _rates(count: int, seconds: list[float]) -> dict[str, float]:
    rates = [count / s for s in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "stdev": statistics.stdev(rates) if len(rates) > 1 else 0.0,
    }


def run(fixture_path: str = str(DEFAULT_FIXTURE), repeat: int = 5) -> dict[str, Any]:
    """Events per second (median, min, max, stdev over ``repeat`` runs) for each measurement."""
    events: list[dict[str, Any]] = msgspec.json.decode(Path(fixture_path).read_bytes())["events"]
    long = events[:1] + events[1:] * 10
    return {
        "fixture": Path(fixture_path).name,
        "events": len(events),
        "repeat": repeat,
        "aggregate_events_per_s": _rates(len(events), [_aggregate(events) for _ in range(repeat)]),
        "aggregate_10x_with_reads_events_per_s": _rates(
            len(long), [_aggregate(long, read_every=1000) for _ in range(repeat)]
        ),
        "coalesce_events_per_s": _rates(len(events), [_coalesce(events) for _ in range(repeat)]),
        "coalesced_events": len(coalesce(events)),
    }


def main(argv: list[str]) -> int:
    result = run(argv[0] if argv else str(DEFAULT_FIXTURE))
    print(f"{result['fixture']}: {result['events']} events, {result['repeat']} runs each")
    for key, value in result.items():
        if isinstance(value, dict):
            print(
                f"  {key:40} median {value['median']:>12,.0f}   "
                f"min {value['min']:>12,.0f}   max {value['max']:>12,.0f}"
            )
    print(f"  coalesced into {result['coalesced_events']} events")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
