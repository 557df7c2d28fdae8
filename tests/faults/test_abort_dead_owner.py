"""Issue 12, items 2 and 3 — aborts of jobs whose `genjobs serve` owner was just SIGKILLed.

Two real `genjobs serve` processes; remote producers' jobs (plain NATS) are owned by A, which
is killed with SIGKILL. Right after, several `genjobs.api.abort` per job arrive at once (all
answered by B). What must hold:

* every reply is an ``AbortResult`` (never a raw revision conflict), and none waits out a
  request timeout (the killed owner's rpc subject has no responders: B takes over at once);
* the job ends as ``aborted`` with the abort final (a user asked), although the janitor is
  about to end it with ``owner lost``; ``abortedBy`` is ``api``;
* the usage A collected is handed out exactly once, to the first caller;
* ``status`` then says exactly what the log holds (content of every stored event, its seq).

A second case fires the aborts while the lease runs out, racing the janitor: whoever wins, every
reply is fast and an ``AbortResult``, the usage is handed out once, and the record agrees with
the log's terminal event.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings
from tests.faults.conftest import Figures, fault_settings
from tests.faults.producer import api
from tests.faults.workload import check_log, script, stored_log
from tests.helpers import aggregate, decode
from tests.procs import ServeProcess


@dataclass(frozen=True)
class Case:
    jobs: int
    aborts: int
    lease_ttl: float
    delay: float
    """Seconds between the kill and the aborts, as a fraction of the lease."""


CASES = [
    pytest.param(Case(3, 3, 10.0, 0.0), id="short-before-lease"),
    pytest.param(Case(3, 3, 2.0, 1.0), id="short-at-lease"),
    pytest.param(
        Case(20, 5, 10.0, 0.0),
        id="long-before-lease",
        marks=[pytest.mark.slow, pytest.mark.timeout(300)],
    ),
    pytest.param(
        Case(20, 5, 2.0, 1.0),
        id="long-at-lease",
        marks=[pytest.mark.slow, pytest.mark.timeout(300)],
    ),
]


async def timed_abort(nc: NATS, s: Settings, job_id: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    body = await api(nc, s, "abort", {"jobId": job_id, "userId": "u1"}, timeout=30)
    return time.perf_counter() - t0, body


async def produce(nc: NATS, s: Settings, job_id: str, usage: dict[str, Any]) -> int:
    """One ingest batch: a whole script and one usage record; returns its last seq."""
    batch = {"firstIndex": 0, "events": script(job_id, 20), "usage": [usage]}
    reply = await nc.request(s.ingest_subject(job_id), msgspec.json.encode(batch), timeout=10)
    body = msgspec.json.decode(reply.data)
    assert body.get("ok"), body
    return int(body["seq"])


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in seconds)
    return {
        "p50_ms": round(ms[len(ms) // 2], 1),
        "p99_ms": round(ms[min(len(ms) - 1, round(0.99 * (len(ms) - 1)))], 1),
        "max_ms": round(ms[-1], 1),
    }


@pytest.mark.parametrize("case", CASES)
async def test_aborts_after_owner_kill9_are_fast_truthful_and_bill_once(
    nats_url: str, figures: Figures, case: Case
) -> None:
    base = fault_settings(nats_url, lease_ttl=case.lease_ttl, heartbeat_interval=0.3)
    a = ServeProcess(base.with_(replica_id="dead-a"))
    b = ServeProcess(base.with_(replica_id="live-b"))
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    nc = await nats.connect(nats_url, name="faults-abort-dead-owner")
    hub = LiveHub(nc, base)
    usage = sim.usage_openai()
    try:
        owned: list[str] = []
        n = 0
        while len(owned) < case.jobs:
            job_id = f"kill{n}"
            n += 1
            rec = await api(nc, base, "create", {"userId": "u1", "jobId": job_id})
            if rec["owner"] == "dead-a":
                owned.append(job_id)
            else:
                await api(nc, base, "abort", {"jobId": job_id, "userId": "u1"})
            assert n < case.jobs * 20, "create never reached the replica to kill"
        for job_id in owned:
            await produce(nc, base, job_id, usage)
        await asyncio.to_thread(a.kill)
        if case.delay:
            await asyncio.sleep(case.delay * case.lease_ttl)  # the scenario: the lease runs out
        per_job = await asyncio.gather(
            *(
                asyncio.gather(*(timed_abort(nc, base, j) for _ in range(case.aborts)))
                for j in owned
            )
        )
        latencies: list[float] = []
        ended_aborted = 0
        for job_id, replies in zip(owned, per_job, strict=True):
            latencies += [t for t, _ in replies]
            results = [r for _, r in replies]
            assert all({"success", "jobData", "usageAlreadyClaimed"} <= set(r) for r in results)
            paid = [r for r in results if r["collectedUsage"]]
            assert len(paid) == 1, results
            assert paid[0]["collectedUsage"] == [usage]
            assert all(r["usageAlreadyClaimed"] for r in results if r is not paid[0])
            log = await stored_log(hub, job_id)
            check_log(log)
            terminal = decode(log[-1].data)
            status = await api(nc, base, "status", {"jobId": job_id, "userId": "u1"})
            steps = aggregate([decode(e.data) for e in log if e.kind == "step"])
            assert status["aggregatedContent"] == steps
            assert status["seq"] == log[-1].seq
            if terminal.get("aborted"):
                ended_aborted += 1
                assert status["status"] == "aborted"
                assert paid[0]["jobData"]["abortedBy"] == "api"
            else:
                assert terminal == {"error": "owner lost"}
                assert status["status"] == "error"
        if not case.delay:
            assert ended_aborted == len(owned)  # a user asked, before any janitor: aborted
        figures.update(
            jobs=len(owned),
            aborts_per_job=case.aborts,
            lease_ttl_s=case.lease_ttl,
            ended_aborted=ended_aborted,
            ended_owner_lost=len(owned) - ended_aborted,
            **percentiles(latencies),
        )
        assert max(latencies) < base.request_timeout  # nobody waited out a timeout
    except BaseException:
        print("--- live-b's log ---\n" + b.tail(80))
        raise
    finally:
        a.close()
        b.close()
        await hub.close()
        await nc.close()
