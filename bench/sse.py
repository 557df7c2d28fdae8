"""SSE fan-out: genjobs' HTTP gateway beside the Durable Streams reference server.

The processes of one run (each system gets the same load, one after the other):

- the server under test: a ``genjobs gateway`` process (a plain NATS client of the bench's
  nats-server), or the reference server ``@durable-streams/server`` (Node, in memory);
- a producer process (``run_genjobs_producer``: a replica emitting into 250 jobs; or
  ``run_ds_feeder``: one ``POST`` per event into 250 streams), which prepares the jobs with
  their opening events, says ``READY`` and waits for ``GO`` on stdin before streaming;
- a client process (``run_clients``, :mod:`bench.sse_client`): one SSE connection per client,
  ``clients / jobs`` per job. It opens one connection per job first (``WARM``: the per-job
  state of the server is then paid for), then the rest (``READY``), and reads until every
  client has the terminal event.

Between ``WARM`` and ``READY`` the bench reads the server's RSS (memory per connection);
between ``READY`` and ``GO`` the connections are idle and it reads the server's CPU (idle CPU);
from ``GO`` to the producer's end it reads the server's CPU again (CPU per 1,000 clients while
streaming). Latency is from a token's creation in the producer process to its parse in the
client process (CLOCK_MONOTONIC is system-wide, see :mod:`bench.common`).

All of it shares the machine's 2 cores: server, client, producer, nats-server. The client is a
raw asyncio protocol to keep its share small, but at 10,000 clients it parses as many events as
the server writes, so the figures there are a ceiling of the machine, not of one process.

``run_resume`` measures a reconnect: a job of N stored events, a new connection asking for the
events after the 10th last one (``Last-Event-ID: <seq>`` on the gateway, ``offset=<offset>`` on
the reference), time from the request to the first event parsed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import msgspec

from bench.common import CpuMeter, bounded_map, opening_events, percentile, sleep_until, token_event
from bench.durable_ref import HttpConnection, append, create_json_stream, stream_path
from bench.sse_client import (
    SseClient,
    Totals,
    get_request,
    open_clients,
    source_address,
    wait_until,
)
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica

USER = "bench-user"
RESUME_TAIL = 10
"""A resume asks for the events after the 10th last one: a tab a few events behind."""

encode = msgspec.json.Encoder().encode


def _job(i: int) -> str:
    return f"job{i}"


async def _stdin_line() -> str:
    return await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


def _say(word: str) -> None:
    print(word, flush=True)


# --- producers ------------------------------------------------------------------------------


async def _pace(p: dict[str, Any], emit: Any, finish: Any) -> dict[str, Any]:
    """``rate`` tokens per second into each of ``jobs`` jobs for ``duration``, starts spread over
    one interval; then ``finish(j)`` for each."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / p["rate"]
    count = round(p["duration"] * p["rate"])
    meter = CpuMeter()
    start = loop.time()

    async def produce(j: int) -> None:
        first = start + interval * j / p["jobs"]
        for i in range(count):
            await sleep_until(loop, first + i * interval)
            await emit(j, token_event())
        await finish(j)

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for j in range(p["jobs"]):
            tg.create_task(produce(j))
    return {
        "tokens": count * p["jobs"],
        "rate": count * p["jobs"] / (time.perf_counter() - t0),
        "producer_cpu_pct": meter.percent()["self"],
    }


async def run_genjobs_producer(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    replica = Replica(Settings(nats_url=cfg["nats_url"], prefix=cfg["prefix"]))
    await replica.start()
    api = ServiceApi(replica)  # the gateway asks the service whose job a stream is
    await api.start()
    try:
        handles = await bounded_map(
            lambda i: replica.create_job(USER, job_id=_job(i)), range(p["jobs"])
        )
        for h in handles:
            for ev in opening_events(h.job_id):
                await h.emit(ev)
            await h.flush()
        _say("READY")
        await _stdin_line()

        async def emit(j: int, ev: dict[str, Any]) -> None:
            await handles[j].emit(ev)

        async def finish(j: int) -> None:
            await handles[j].complete()

        return await _pace(p, emit, finish)
    finally:
        await api.stop()
        await replica.stop()


async def run_ds_feeder(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same events into the reference server: one connection and one POST per event per
    stream (JSON mode: one message per event), the final event appended with the close."""
    from service.simulate import final_event

    p = cfg["params"]
    host, port = "127.0.0.1", int(cfg["ds_url"].rsplit(":", 1)[1])
    conns = [HttpConnection(host, port) for _ in range(p["jobs"])]
    try:

        async def prepare(j: int) -> None:
            await create_json_stream(conns[j], _job(j))
            for ev in opening_events(_job(j)):
                await append(conns[j], _job(j), encode(ev))

        await bounded_map(prepare, range(p["jobs"]))
        _say("READY")
        await _stdin_line()

        async def emit(j: int, ev: dict[str, Any]) -> None:
            await append(conns[j], _job(j), encode(ev))

        async def finish(j: int) -> None:
            await append(conns[j], _job(j), encode(final_event(_job(j))), close=True)

        return await _pace(p, emit, finish)
    finally:
        for c in conns:
            await c.close()


# --- clients --------------------------------------------------------------------------------


def _requests(cfg: dict[str, Any], n: int, first: int = 0) -> list[bytes]:
    host, port = "127.0.0.1", cfg["port"]
    headers = list(cfg.get("headers", {}).items())
    out = []
    for i in range(first, first + n):
        job = _job(i % cfg["params"]["jobs"])
        if cfg["flavour"] == "genjobs":
            path = f"{cfg['stream_prefix']}/stream/{job}"
        else:
            path = f"{stream_path(job)}?offset=-1&live=sse"
        out.append(get_request(host, port, path, headers))
    return out


async def run_clients(cfg: dict[str, Any]) -> dict[str, Any]:
    p = cfg["params"]
    totals = Totals()
    flavour = cfg["flavour"]
    jobs, n = p["jobs"], p["clients"]
    clients: list[SseClient] = []
    clients += await open_clients("127.0.0.1", cfg["port"], _requests(cfg, jobs), totals, flavour)
    await wait_until(totals, lambda: totals.first_events + totals.dropped >= jobs, p["timeout"])
    _say("WARM")
    rest = _requests(cfg, n - jobs, first=jobs)
    clients += await open_clients("127.0.0.1", cfg["port"], rest, totals, flavour, offset=jobs)
    # Every client holds the job's opening events: the server has replayed them to everyone.
    await wait_until(totals, lambda: totals.first_events + totals.dropped >= n, p["timeout"])
    _say("READY")
    meter = CpuMeter()
    timed_out = 0

    def over() -> bool:  # every client ended, was dropped or refused (a count, not a scan)
        return totals.ended + totals.dropped + sum(totals.bad_status.values()) >= n

    try:
        await wait_until(totals, over, p["timeout"] + p["duration"])
    except TimeoutError:
        timed_out = sum(1 for c in clients if not c.done)
        for c in clients:
            c.finish(ended=False)
    cpu = meter.percent()["self"]
    pairs = sorted(zip(totals.emitted_ns, totals.latency_ms, strict=True))
    cut = [pairs[i * len(pairs) // 3 : (i + 1) * len(pairs) // 3] for i in range(3)]
    return {
        "flavour": flavour,
        "clients": n,
        "jobs": jobs,
        "deliveries": totals.tokens,
        "events": totals.events,
        "ended": totals.ended,
        "dropped": totals.dropped,
        "timed_out": timed_out,
        "last_token_ns": totals.last_token_ns,
        "bad_status": {str(k): v for k, v in totals.bad_status.items()},
        "duplicates": totals.duplicates,
        "out_of_order": totals.out_of_order,
        "p50_ms": [percentile([ms for _, ms in c], 50) for c in cut],
        "p99_ms": [percentile([ms for _, ms in c], 99) for c in cut],
        "p50_ms_all": percentile(totals.latency_ms, 50),
        "p99_ms_all": percentile(totals.latency_ms, 99),
        "max_ms": max(totals.latency_ms) if totals.latency_ms else None,
        "client_cpu_pct": cpu,
    }


# --- resume ---------------------------------------------------------------------------------


async def _first_event_ms(port: int, request: bytes, flavour: str, i: int) -> float:
    """One new connection; milliseconds from writing the request to the first event parsed."""
    loop = asyncio.get_running_loop()
    totals = Totals()
    client = SseClient(request, totals, flavour)
    client.waiter = loop.create_future()
    await loop.create_connection(lambda: client, "127.0.0.1", port, local_addr=source_address(i))
    await client.waiter
    if client.status != 200:
        raise RuntimeError(f"resume answered {client.status}")
    await wait_until(totals, lambda: totals.first_events > 0 or client.done, 10.0)
    if not client.first_event_ns:
        raise RuntimeError("resume connection ended before its first event")
    client.finish(ended=False)
    return (client.first_event_ns - client.sent_ns) / 1e6


async def _measure(p: dict[str, Any], port: int, request: bytes, flavour: str) -> dict[str, Any]:
    blocks: list[list[float]] = []
    for b in range(p["resume_blocks"]):
        samples = []
        for i in range(p["resume_samples"]):
            samples.append(await _first_event_ms(port, request, flavour, b * 1000 + i))
        blocks.append(samples)
    return {
        "p50_ms": [percentile(s, 50) for s in blocks],
        "p99_ms": [percentile(s, 99) for s in blocks],
    }


async def run_resume_genjobs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Jobs of N events stored by an in-process replica (then completed); the gateway is asked
    for the events after the ``RESUME_TAIL``-th last one with ``Last-Event-ID``."""
    p = cfg["params"]
    replica = Replica(Settings(nats_url=cfg["nats_url"], prefix=cfg["prefix"]))
    await replica.start()
    api = ServiceApi(replica)
    await api.start()
    out: dict[str, Any] = {}
    try:
        for n in p["resume_sizes"]:
            job = f"resume{n}"
            h = await replica.create_job(USER, job_id=job)
            for ev in opening_events(job):
                await h.emit(ev)
            seqs = []
            for i in range(n - 2):
                await h.emit(token_event())
                if i >= n - 2 - RESUME_TAIL:
                    seqs.append(await h.flush())
            await h.complete()
            after = seqs[0]  # the seq of the event RESUME_TAIL events before the last
            path = f"{cfg['stream_prefix']}/stream/{job}"
            headers = [*cfg.get("headers", {}).items(), ("Last-Event-ID", str(after))]
            request = get_request("127.0.0.1", cfg["port"], path, headers)
            out[str(n)] = await _measure(p, cfg["port"], request, "genjobs")
    finally:
        await api.stop()
        await replica.stop()
    return out


async def run_resume_ds(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same on the reference server: a closed stream of N messages, SSE from the offset of
    the ``RESUME_TAIL``-th last one."""
    from service.simulate import final_event

    p = cfg["params"]
    port = int(cfg["ds_url"].rsplit(":", 1)[1])
    conn = HttpConnection("127.0.0.1", port)
    out: dict[str, Any] = {}
    try:
        for n in p["resume_sizes"]:
            name = f"resume{n}"
            await create_json_stream(conn, name)
            head = [*opening_events(name), *(token_event() for _ in range(n - 2 - RESUME_TAIL))]
            # JSON mode: a POSTed array is one message per element.
            offset = await append(conn, name, encode(head))
            tail = [token_event() for _ in range(RESUME_TAIL - 1)] + [final_event(name)]
            await append(conn, name, encode(tail), close=True)
            path = f"{stream_path(name)}?offset={offset}&live=sse"
            request = get_request("127.0.0.1", port, path, [])
            out[str(n)] = await _measure(p, port, request, "ds")
    finally:
        await conn.close()
    return out
