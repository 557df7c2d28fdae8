"""Cross-replica abort: a request on another replica until the producer stops, and the reply.

Replica A owns running jobs whose producers stream tokens (``rate`` per second each) and watch
``job.aborted`` as a LibreChat producer watches its AbortController. Replica B (its own NATS
connection) aborts them one at a time with a request on ``<prefix>.abort.<job_id>``, the
subject any replica or client uses. Two latencies per abort, from the moment B sends it:

* signal: the producer's wait on ``aborted`` returns (the generation can stop);
* reply: B holds the ``AbortResult`` (abort final stored, record and usage settled).

Both replicas share this process, so one clock serves both ends; the request still travels
through nats-server. Three blocks of fresh jobs; each figure is the median over blocks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec

from bench.common import (
    bench_settings,
    bounded_map,
    drop_prefix,
    encode,
    opening_events,
    percentile,
    token_event,
)
from service.client.producer import JobHandle
from service.server.replica import Replica

USER = "bench-user"


async def _block(owner: Replica, other: Replica, p: dict[str, Any], block: int) -> dict[str, Any]:
    s = owner.s
    handles: list[JobHandle] = await bounded_map(
        lambda i: owner.create_job(USER, job_id=f"b{block}job{i}"), range(p["jobs"])
    )
    signalled: dict[str, int] = {}
    started = asyncio.Semaphore(0)
    interval = 1.0 / p["rate"]

    async def producer(h: JobHandle) -> None:
        for ev in opening_events(h.job_id):
            await h.emit(ev)
        started.release()
        while True:
            try:
                async with asyncio.timeout(interval):
                    await h.aborted.wait()
            except TimeoutError:
                await h.emit(token_event())
                continue
            signalled[h.job_id] = time.monotonic_ns()
            return

    signal_ms: list[float] = []
    reply_ms: list[float] = []
    async with asyncio.TaskGroup() as tg:
        tasks = {h.job_id: tg.create_task(producer(h)) for h in handles}
        for _ in handles:
            await started.acquire()
        await asyncio.sleep(0.2)  # let every job stream a few tokens: aborts hit live jobs
        body = encode({"userId": USER})
        for h in handles:
            t0 = time.monotonic_ns()
            msg = await other.nc.request(s.abort_subject(h.job_id), body, timeout=5)
            t1 = time.monotonic_ns()
            result = msgspec.json.decode(msg.data)
            if not result.get("success"):
                raise RuntimeError(f"abort of {h.job_id} failed: {result}")
            async with asyncio.timeout(5):
                await tasks[h.job_id]
            reply_ms.append((t1 - t0) / 1e6)
            signal_ms.append((signalled[h.job_id] - t0) / 1e6)
    return {"signal": signal_ms, "reply": reply_ms}


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "abt")
    owner = Replica(s)
    other = Replica(s.with_(replica_id="r" + uuid.uuid4().hex[:12]))
    await owner.start()
    await other.start()
    try:
        blocks = [await _block(owner, other, p, b) for b in range(p["blocks"])]
        out: dict[str, Any] = {"jobs_per_block": p["jobs"], "rate": p["rate"]}
        for what in ("signal", "reply"):
            out[what] = {
                "p50_ms": [percentile(b[what], 50) for b in blocks],
                "p99_ms": [percentile(b[what], 99) for b in blocks],
                "max_ms": [max(b[what]) for b in blocks],
            }
        return out
    finally:
        await other.stop()
        await owner.stop()
        await drop_prefix(s)
