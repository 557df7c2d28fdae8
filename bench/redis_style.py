"""The baseline: LibreChat's Redis job store, reduced to its hot paths, in Python.

LibreChat (``RedisJobStore`` + ``RedisEventTransport``) appends every chunk of a generation to
a Redis stream with ``XADD`` and fans it out to live readers with ``PUBLISH`` on the job's
channel: two commands per chunk, each awaited. A resuming reader gets its content by reading
the whole chunk log (``XRANGE``) and running the content aggregator over it, so resume cost
grows with the length of the generation. This module does exactly that with redis-py's
asyncio client against a real redis-server, so genjobs is compared with the design it
replaces, in the same language, on the same machine, in the same run.

The server runs without persistence (no RDB, no AOF): the baseline is given every advantage.
"""

from __future__ import annotations

from typing import Any

import msgspec
import redis.asyncio as aioredis

from schemas.content.aggregator import ContentAggregator

_decode = msgspec.json.decode


def chunks_key(job_id: str) -> str:
    return f"stream:{{{job_id}}}:chunks"


def channel(job_id: str) -> str:
    return f"stream:{{{job_id}}}:events"


class RedisStyleStore:
    """Per chunk: ``XADD`` to the job's chunk log, then ``PUBLISH`` to its channel."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.r = client

    async def append(self, job_id: str, payload: bytes) -> None:
        await self.r.xadd(chunks_key(job_id), {"event": payload})
        await self.r.publish(channel(job_id), payload)

    async def seed(self, job_id: str, payloads: list[bytes], batch: int = 500) -> None:
        """Write a whole chunk log fast (pipelined), for resume measurements only."""
        for i in range(0, len(payloads), batch):
            pipe = self.r.pipeline(transaction=False)
            for p in payloads[i : i + batch]:
                pipe.xadd(chunks_key(job_id), {"event": p})
            await pipe.execute()

    async def resume_state(self, job_id: str) -> dict[str, Any]:
        """LibreChat's way to resume: read every chunk, aggregate content and run steps."""
        entries: Any = await self.r.xrange(chunks_key(job_id), "-", "+")
        agg = ContentAggregator()
        for _id, fields in entries:
            ev = _decode(fields[b"event"])
            name = ev.get("event") if isinstance(ev, dict) else None
            if isinstance(name, str) and name.startswith("on_"):
                agg.apply(name, ev.get("data"))
        return {
            "aggregatedContent": agg.content_filtered(),
            "runSteps": agg.run_steps(),
            "chunks": len(entries),
        }
