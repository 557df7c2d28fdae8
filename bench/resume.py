"""Resume snapshots by job length, against the Redis way; and a late reader catching up.

Resume (docs/protocol.md, resume): a reader asks *another* replica than the owner for the snapshot, as an
SSE gateway would: one KV read of the record, then the owner answers from memory. Jobs of
100, 1,000 and 10,000 LibreChat-shaped events (``service.simulate.generation``: created,
reasoning, a tool call, then text deltas). Baseline: LibreChat's resume from Redis (read the
whole chunk log with ``XRANGE`` and aggregate it) over the same events.

Catch-up: a reader that joins a finished 5,000-event job at seq 0 and reads until it holds the
terminal event (Direct Get batches, then live). The job is written with a flush per event so
the log really holds 5,000 messages (coalescing would otherwise merge the deltas).

Samples are taken in three interleaved blocks; each figure is the median over the blocks of
that block's percentile, with the blocks' range as spread.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench.common import bench_settings, drop_prefix, encode, percentile
from service.client.reader import LiveHub, read_all
from service.server.replica import Replica
from service.simulate import final_event, generation

USER = "bench-user"


def _events(job_id: str, n: int) -> list[dict[str, Any]]:
    """Exactly ``n`` events of a LibreChat agent run (15 are not text deltas)."""
    evs = list(generation(job_id, tokens=max(1, n - 15)))
    assert len(evs) == n, (len(evs), n)
    return evs


async def _seed_coalesced(replica: Replica, job_id: str, n: int) -> dict[str, Any]:
    h = await replica.create_job(USER, job_id=job_id)
    for ev in _events(job_id, n):
        await h.emit(ev)
        await asyncio.sleep(0)
    seq = await h.flush()
    return {"events": n, "seq": seq}


async def _seed_one_message_each(replica: Replica, job_id: str, n: int) -> int:
    h = await replica.create_job(USER, job_id=job_id)
    for ev in _events(job_id, n):
        await h.emit(ev)
        await h.flush()
    await h.complete(final_event(job_id))
    return n + 1


def _block_stats(blocks: list[list[float]]) -> dict[str, list[float]]:
    return {
        "p50_ms": [percentile(b, 50) for b in blocks],
        "p99_ms": [percentile(b, 99) for b in blocks],
        "n": [float(len(b)) for b in blocks],
    }


async def _redis_resume(cfg: dict[str, Any], sizes: list[int], p: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.redis_style import RedisStyleStore

    client = aioredis.Redis.from_url(cfg["redis_url"])
    try:
        await client.flushall()
        store = RedisStyleStore(client)
        for n in sizes:
            await store.seed(f"job{n}", [encode(ev) for ev in _events(f"job{n}", n)])
        out: dict[str, Any] = {}
        samples: dict[int, list[list[float]]] = {n: [] for n in sizes}
        for _block in range(p["blocks"]):
            for n in sizes:
                times: list[float] = []
                end = time.perf_counter() + p["redis_budget_s"]
                while len(times) < p["samples"] and (len(times) < 3 or time.perf_counter() < end):
                    t = time.perf_counter()
                    state = await store.resume_state(f"job{n}")
                    times.append((time.perf_counter() - t) * 1000)
                    if state["chunks"] != n:
                        raise RuntimeError(f"redis resume read {state['chunks']} of {n} chunks")
                samples[n].append(times)
        for n in sizes:
            out[str(n)] = _block_stats(samples[n])
        return out
    finally:
        await client.aclose()


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    sizes: list[int] = p["sizes"]
    s = bench_settings(cfg["nats_url"], "res")
    owner = Replica(s)
    other = Replica(s.with_(replica_id="r" + uuid.uuid4().hex[:12]))
    await owner.start()
    await other.start()
    try:
        seeded, catch_events = await asyncio.gather(
            asyncio.gather(*(_seed_coalesced(owner, f"job{n}", n) for n in sizes)),
            _seed_one_message_each(owner, "catchup", p["catchup_events"]),
        )
        remote: dict[int, list[list[float]]] = {n: [] for n in sizes}
        local: dict[int, list[list[float]]] = {n: [] for n in sizes}
        catch: list[list[float]] = []
        for _block in range(p["blocks"]):
            for n in sizes:
                for ops, into in ((other.ops, remote), (owner.ops, local)):
                    times = []
                    for _ in range(p["samples"]):
                        t = time.perf_counter()
                        snap = await ops.resume(f"job{n}", USER)
                        times.append((time.perf_counter() - t) * 1000)
                    if not snap.get("aggregatedContent") or snap.get("seq", 0) <= 0:
                        raise RuntimeError(f"resume of job{n} returned an empty snapshot")
                    into[n].append(times)
            times = []
            for _ in range(p["catchup_reads"]):
                hub = LiveHub(other.nc, s)
                t = time.perf_counter()
                got = await read_all(hub, "catchup", 0, timeout=30)
                times.append((time.perf_counter() - t) * 1000)
                await hub.close()
                if len(got) != catch_events or not got[-1].terminal:
                    raise RuntimeError(f"catch-up read {len(got)} of {catch_events} events")
            catch.append(times)
        result: dict[str, Any] = {
            "sizes": sizes,
            "seeded": seeded,
            "genjobs": {str(n): _block_stats(remote[n]) for n in sizes},
            "genjobs_owner_local": {str(n): _block_stats(local[n]) for n in sizes},
            "catchup": {
                "events": catch_events,
                "median_ms": [percentile(b, 50) for b in catch],
                "max_ms": [max(b) for b in catch],
            },
        }
        if cfg.get("redis_url"):
            result["redis"] = await _redis_resume(cfg, sizes, p)
        return result
    finally:
        await other.stop()
        await owner.stop()
        await drop_prefix(s)
