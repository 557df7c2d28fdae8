"""Memory per running job and per idle reader, and the CPU of a process full of idle readers.

Jobs: one replica process creates ``jobs`` jobs (10,000 in the full run) that stay running and
idle, as generations waiting on a slow model do. Memory per job = growth of the process's
resident set (after a full GC) divided by the jobs added, measured over three equal batches
(the spread); the process first creates a few jobs so one-off costs (code paths, pools) are
not charged to the measured ones. The replica is then killed (no 10,000 terminal events to
wait for) and its stream and buckets deleted.

Readers: one process opens ``readers`` readers (one task each, as an SSE gateway holds one per
connection), each on its own running job (so each job also costs its live subscription: the
common case of one viewer per generation). Memory per reader as above. Then, with nothing
being produced, its CPU is read over ``window`` seconds starting ``settle`` seconds after the
last reader joined: with the default ``idle_check`` of 10 s (jittered ±25 %), the window from
5 s to 15 s holds exactly one idle check per reader, the steady rate.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import nats

from bench.common import (
    CpuMeter,
    bench_settings,
    bounded_map,
    drop_prefix,
    encode,
    opening_events,
    settled_rss,
)
from schemas import headers as hdr
from service.client.reader import HubClosed, LiveHub
from service.nats.provision import provision
from service.server.replica import Replica

USER = "bench-user"


def _batches(total: int, n: int = 3) -> list[int]:
    return [total // n + (1 if i < total % n else 0) for i in range(n)]


async def run_jobs(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "mem")
    replica = Replica(s)
    await replica.start()
    try:
        await bounded_map(lambda i: replica.create_job(USER, job_id=f"warm{i}"), range(p["warmup"]))
        before = settled_rss()
        rss = [before]
        made = 0
        t0 = time.perf_counter()
        for size in _batches(p["jobs"]):
            await bounded_map(
                lambda i: replica.create_job(USER, job_id=f"job{i}"), range(made, made + size)
            )
            made += size
            rss.append(settled_rss())
        seconds = time.perf_counter() - t0
        running = len(replica.registry)
        if running != p["jobs"] + p["warmup"]:
            raise RuntimeError(f"{running} actors running, expected {p['jobs'] + p['warmup']}")
        per_batch = [(rss[i + 1] - rss[i]) / size for i, size in enumerate(_batches(p["jobs"]))]
        return {
            "jobs": p["jobs"],
            "bytes_per_job": (rss[-1] - before) / p["jobs"],
            "bytes_per_job_batches": per_batch,
            "rss_before": before,
            "rss_after": rss[-1],
            "create_per_s": p["jobs"] / seconds,
        }
    finally:
        await replica.kill()
        await drop_prefix(s)


async def run_readers_idle(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "rdr")
    nc = await nats.connect(cfg["nats_url"], name="bench-readers")
    try:
        js = nc.jetstream(timeout=s.request_timeout)
        await provision(js, s)
        jobs = [f"job{i}" for i in range(p["readers"])]
        futures = []
        for job in jobs:  # each job: the opening events and one token, as an owner writes them
            for index, ev in enumerate([*opening_events(job), {"event": "on_message_delta"}]):
                headers = {hdr.KIND: "created" if index == 0 else "step"}
                headers[hdr.INDEX] = str(index)
                futures.append(
                    await js.publish_async(s.events_subject(job), encode(ev), headers=headers)
                )
        async with asyncio.timeout(60):
            await js.publish_async_completed()
        per_job = 3
        hub = LiveHub(nc, s)
        before = settled_rss()
        rss = [before]
        ready = asyncio.Semaphore(0)

        async def reader(job: str) -> None:
            n = 0
            try:
                async with hub.subscribe(job) as r:
                    async for _ev in r:
                        n += 1
                        if n == per_job:
                            ready.release()
            except HubClosed:
                return

        async with asyncio.TaskGroup() as tg:
            opened = 0
            for size in _batches(p["readers"]):
                for job in jobs[opened : opened + size]:
                    tg.create_task(reader(job))
                for _ in range(size):
                    await ready.acquire()
                opened += size
                rss.append(settled_rss())
            joined = time.monotonic()
            await asyncio.sleep(max(0.0, joined + p["settle"] - time.monotonic()))
            meter = CpuMeter({"nats_server": cfg.get("nats_pid")})
            windows = []
            part = p["window"] / 5
            for _ in range(5):
                sub = CpuMeter()
                await asyncio.sleep(part)
                windows.append(sub.percent()["self"])
            cpu = meter.percent()
            subscriptions = hub.subscriptions()
            await hub.close()
        per_batch = [(rss[i + 1] - rss[i]) / size for i, size in enumerate(_batches(p["readers"]))]
        return {
            "readers": p["readers"],
            "subscriptions": subscriptions,
            "bytes_per_reader": (rss[-1] - before) / p["readers"],
            "bytes_per_reader_batches": per_batch,
            "idle_cpu_pct": cpu["self"],
            "idle_cpu_pct_windows": windows,
            "nats_server_cpu_pct": cpu.get("nats_server"),
            "window_s": p["window"],
            "settle_s": p["settle"],
        }
    finally:
        await nc.close()
        await drop_prefix(s)
