"""Delivery to many readers: 1,000 readers over 250 running jobs, in a process of their own.

Two processes, as in a deployment with a gateway apart from the replicas: the reader process
(``run_readers``) opens its readers first (4 per job, on jobs that do not exist yet: a reader
may join before the first event), prints ``READY``, and the bench then starts the producer
process (``run_producer``): a replica that creates the 250 jobs and streams ``rate`` tokens per
second into each for ``duration`` seconds, then completes them. Every reader reads until the
final event; latency is from a token's creation in the producer process to a reader holding
it (the monotonic clock is system-wide). Spread: the run cut in three by emit time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats

from bench.common import (
    CpuMeter,
    Latency,
    bounded_map,
    opening_events,
    percentile,
    sleep_until,
    token_event,
)
from service.client.reader import LiveHub
from service.config import Settings
from service.nats.provision import provision
from service.server.replica import Replica

USER = "bench-user"


def _settings(cfg: dict[str, Any]) -> Settings:
    return Settings(nats_url=cfg["nats_url"], prefix=cfg["prefix"])


async def run_readers(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = _settings(cfg)
    nc = await nats.connect(cfg["nats_url"], name="bench-delivery-readers")
    try:
        await provision(nc.jetstream(timeout=s.request_timeout), s)
        hub = LiveHub(nc, s)
        per_reader = [Latency() for _ in range(p["readers"])]
        joined = asyncio.Semaphore(0)
        ended = [False] * p["readers"]

        async def reader(i: int) -> None:
            async with hub.subscribe(f"job{i % p['jobs']}") as r:
                joined.release()
                async for ev in r:
                    per_reader[i].observe(ev.data)
                    if ev.terminal:
                        ended[i] = True

        async with asyncio.TaskGroup() as tg:
            for i in range(p["readers"]):
                tg.create_task(reader(i))
            for _ in range(p["readers"]):
                await joined.acquire()
            print("READY", flush=True)
            meter = CpuMeter()
        cpu = meter.percent()["self"]
        await hub.close()
        if not all(ended):
            raise RuntimeError(f"{ended.count(False)} readers ended without the final event")
        lat = Latency()
        for one in per_reader:
            lat.extend(one)
        pairs = sorted(zip(lat.emitted_ns, lat.ms, strict=True))
        cut = [pairs[i * len(pairs) // 3 : (i + 1) * len(pairs) // 3] for i in range(3)]
        return {
            "readers": p["readers"],
            "jobs": p["jobs"],
            "deliveries": lat.tokens,
            "p50_ms": [percentile([ms for _, ms in c], 50) for c in cut],
            "p99_ms": [percentile([ms for _, ms in c], 99) for c in cut],
            "p99_ms_all": percentile(lat.ms, 99),
            "max_ms": max(lat.ms) if lat.ms else None,
            "reader_cpu_pct": cpu,
        }
    finally:
        await nc.close()


async def run_producer(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = _settings(cfg)
    replica = Replica(s)
    await replica.start()
    try:
        handles = await bounded_map(
            lambda i: replica.create_job(USER, job_id=f"job{i}"), range(p["jobs"])
        )
        for h in handles:
            for ev in opening_events(h.job_id):
                await h.emit(ev)
        loop = asyncio.get_running_loop()
        interval = 1.0 / p["rate"]
        count = round(p["duration"] * p["rate"])
        meter = CpuMeter()
        start = loop.time()

        async def produce(j: int) -> None:
            first = start + interval * j / len(handles)
            for i in range(count):
                await sleep_until(loop, first + i * interval)
                await handles[j].emit(token_event())
            await handles[j].complete()

        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for j in range(len(handles)):
                tg.create_task(produce(j))
        return {
            "tokens": count * len(handles),
            "rate": count * len(handles) / (time.perf_counter() - t0),
            "producer_cpu_pct": meter.percent()["self"],
        }
    finally:
        await replica.stop()


async def run_aggregator(cfg: dict[str, Any]) -> dict[str, Any]:
    """Item 7: the other engineer's ``bench/bench_aggregator.py`` on the 5,000-delta fixture."""
    from bench import bench_aggregator

    started = time.perf_counter()
    result: dict[str, Any] = bench_aggregator.run(
        str(bench_aggregator.DEFAULT_FIXTURE), cfg["params"]["repeat"]
    )
    result["seconds"] = time.perf_counter() - started
    return result
