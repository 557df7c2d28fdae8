"""Shared test helpers: replicas with teardown checks, a reference aggregate, readers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from schemas.content.aggregator import ContentAggregator
from service.config import Settings
from service.server.replica import Replica


@asynccontextmanager
async def running_replica(settings: Settings, **changes: Any) -> AsyncIterator[Replica]:
    """A started replica; on exit it is stopped and must leave no actor behind."""
    replica = Replica(settings.with_(**changes) if changes else settings)
    await replica.start()
    try:
        yield replica
    finally:
        await replica.stop()
        assert len(replica.registry) == 0, "actors left running after stop()"


def aggregate(events: Iterable[dict[str, Any]]) -> list[Any]:
    agg = ContentAggregator()
    for ev in events:
        if isinstance(ev.get("event"), str) and ev["event"].startswith("on_"):
            agg.apply(ev["event"], ev.get("data"))
    return agg.content_filtered()


def decode(data: bytes) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.json.decode(data)
    return out


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    """Poll a server-side condition (e.g. a KV key expiring) until true, within a timeout."""
    async with asyncio.timeout(timeout):
        while not await predicate():  # noqa: ASYNC110 - the server offers no event for TTL expiry
            await asyncio.sleep(interval)
