"""Ingest: tokens per second from in-process producers, each job with one live reader.

The same load runs against three systems, in separate processes of the same run:

* ``genjobs``: ``JobHandle.emit`` per token on a :class:`Replica`; a :class:`LiveHub` reader
  per job on the replica's connection (an app process that produces and serves its readers).
  Rate = tokens accepted / time until every one is durable (``flush``).
* ``nats``: raw nats-py, ``js.publish_async`` of the same payloads into the same stream
  (same republish to the live subject); a core subscription per job reads the live subject.
  Rate = messages / time until every ack is in.
* ``redis``: the LibreChat-style store (``XADD`` + ``PUBLISH`` per chunk, awaited); one
  pub/sub connection subscribed to every job's channel. Rate = chunks / time to the last reply.

Two load shapes: ``flat`` (every producer emits as fast as it can for ``duration`` seconds,
yielding to the event loop between tokens as a token stream read from a socket does) and
``paced`` (every producer emits ``rate`` tokens per second, like a model; starts are spread
over one token interval). Latency is from creating a token to a reader holding it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats

from bench.common import (
    CpuMeter,
    Latency,
    bench_settings,
    bounded_map,
    drop_prefix,
    encode,
    opening_events,
    sleep_until,
    summary_ms,
    token_event,
)
from service.client.reader import LiveHub
from service.nats.provision import provision
from service.server.replica import Replica

Emit = Callable[[int, dict[str, Any]], Awaitable[bool]]
"""emit(job number, event) -> accepted?"""


async def _drive(jobs: int, p: dict[str, Any], emit: Emit) -> tuple[int, float]:
    """Run the producers; returns (tokens accepted, seconds from start to the last emit)."""
    loop = asyncio.get_running_loop()
    counts = [0] * jobs
    start = loop.time()

    async def flat(j: int) -> None:
        deadline = start + p["duration"]
        n = 0
        while loop.time() < deadline:
            if await emit(j, token_event()):
                n += 1
            await asyncio.sleep(0)
        counts[j] = n

    async def paced(j: int) -> None:
        interval = 1.0 / p["rate"]
        first = start + interval * j / jobs
        n = 0
        for i in range(round(p["duration"] * p["rate"])):
            await sleep_until(loop, first + i * interval)
            if await emit(j, token_event()):
                n += 1
        counts[j] = n

    body = flat if p["mode"] == "flat" else paced
    async with asyncio.TaskGroup() as tg:
        for j in range(jobs):
            tg.create_task(body(j))
    return sum(counts), loop.time() - start


def _result(
    tokens: int, seconds: float, lat: Latency, cpu: dict[str, float], extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "rate": tokens / seconds,
        "tokens": tokens,
        "seconds": seconds,
        **summary_ms(lat.ms),
        "received": lat.tokens,
        "cpu_pct": cpu,
        **extra,
    }


async def run_genjobs(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "ing")
    replica = Replica(s)
    await replica.start()
    try:
        hub = LiveHub(replica.nc, s)
        handles = await bounded_map(
            lambda i: replica.create_job("bench-user", job_id=f"job{i}"), range(p["jobs"])
        )
        lat = Latency()
        joined = asyncio.Semaphore(0)

        async def reader(job_id: str) -> None:
            async with hub.subscribe(job_id) as r:
                joined.release()
                async for ev in r:
                    lat.observe(ev.data)

        async with asyncio.TaskGroup() as readers:
            for h in handles:
                readers.create_task(reader(h.job_id))
            for _ in handles:
                await joined.acquire()
            for h in handles:
                for ev in opening_events(h.job_id):
                    await h.emit(ev)
            await asyncio.gather(*(h.flush() for h in handles))
            actors = replica.registry.actors()

            async def emit(j: int, ev: dict[str, Any]) -> bool:
                return (await handles[j].emit(ev)).value == "accepted"

            cpu = CpuMeter({"nats_server": cfg.get("nats_pid")})
            t0 = time.perf_counter()
            tokens, _ = await _drive(len(handles), p, emit)
            await asyncio.gather(*(h.flush() for h in handles))
            seconds = time.perf_counter() - t0
            usage = cpu.percent()
            published = sum(a.stats.published for a in actors)
            async with asyncio.timeout(60):
                await asyncio.gather(*(h.complete() for h in handles))
        await hub.close()
        if lat.tokens != tokens:
            raise RuntimeError(f"readers got {lat.tokens} tokens of {tokens}")
        return _result(
            tokens,
            seconds,
            lat,
            usage,
            {"messages": published, "tokens_per_message": tokens / max(1, published)},
        )
    finally:
        await replica.stop()
        await drop_prefix(s)


async def run_nats(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "raw")
    nc = await nats.connect(cfg["nats_url"], name="bench-raw")
    try:
        js = nc.jetstream(timeout=s.request_timeout)
        await provision(js, s)
        jobs = [f"job{i}" for i in range(p["jobs"])]
        lat = Latency()

        async def on_live(msg: Any) -> None:
            lat.observe(msg.data)

        for job in jobs:
            await nc.subscribe(s.live_subject(job), cb=on_live)
        for job in jobs:
            for ev in opening_events(job):
                await js.publish(s.events_subject(job), encode(ev))
        futures: list[asyncio.Future[Any]] = []

        async def emit(j: int, ev: dict[str, Any]) -> bool:
            futures.append(await js.publish_async(s.events_subject(jobs[j]), encode(ev)))
            return True

        cpu = CpuMeter({"nats_server": cfg.get("nats_pid")})
        t0 = time.perf_counter()
        tokens, _ = await _drive(len(jobs), p, emit)
        async with asyncio.timeout(60):  # publish_async futures never time out on their own
            await js.publish_async_completed()
        seconds = time.perf_counter() - t0
        usage = cpu.percent()
        failed = sum(1 for f in futures if f.exception() is not None)
        if failed:
            raise RuntimeError(f"{failed} of {tokens} publishes failed")
        async with asyncio.timeout(60):
            await lat.wait_for(tokens)
        return _result(tokens, seconds, lat, usage, {"messages": tokens})
    finally:
        await nc.close()
        await drop_prefix(s)


async def run_redis(cfg: dict[str, Any]) -> dict[str, Any]:
    import redis.asyncio as aioredis

    from bench.redis_style import RedisStyleStore, channel

    p = cfg["params"]
    client = aioredis.Redis.from_url(cfg["redis_url"], max_connections=p["jobs"] + 16)
    try:
        await client.flushall()
        store = RedisStyleStore(client)
        jobs = [f"job{i}" for i in range(p["jobs"])]
        lat = Latency()
        pubsub = client.pubsub()
        await pubsub.subscribe(*(channel(j) for j in jobs))

        async def listen() -> None:
            while True:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    lat.observe(msg["data"])

        async with asyncio.TaskGroup() as tg:
            listener = tg.create_task(listen())
            for job in jobs:
                for ev in opening_events(job):
                    await store.append(job, encode(ev))

            async def emit(j: int, ev: dict[str, Any]) -> bool:
                await store.append(jobs[j], encode(ev))
                return True

            cpu = CpuMeter({"redis_server": cfg.get("redis_pid")})
            t0 = time.perf_counter()
            tokens, _ = await _drive(len(jobs), p, emit)
            seconds = time.perf_counter() - t0
            usage = cpu.percent()
            async with asyncio.timeout(60):
                await lat.wait_for(tokens)
            listener.cancel()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        return _result(tokens, seconds, lat, usage, {"messages": tokens})
    finally:
        await client.aclose()
