"""Issue 12, items 1 and 5 — requests about jobs whose `genjobs serve` owner was SIGKILLed.

Two real `genjobs serve` processes; jobs are owned by A, which is killed with SIGKILL; B (its
own process) answers everything, over plain NATS. What must hold (docs/protocol.md, "Every
request gets one answer"), before the janitor ends A's jobs and after:

* ``genjobs.ingest.<job>``: ``unavailable`` while A's heartbeat is fresh (retry), ``conflict``
  once the job has ended with ``owner lost``; the completing batch of a job A finished, resent
  after A died, gets the same acknowledgement;
* ``genjobs.abort.<job>``: an ``AbortResult`` (a takeover before the janitor; the usage claim
  after it), never silence;
* ``genjobs.rpc.<A>.snapshot``: "no responders" at once (internal, by design);
* no reply waits out a request timeout.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.config import Settings
from tests.faults.conftest import Figures, fault_settings
from tests.faults.producer import api
from tests.faults.workload import script
from tests.procs import ServeProcess


async def request(nc: NATS, subject: str, body: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    reply = await nc.request(subject, msgspec.json.encode(body), timeout=10)
    return time.perf_counter() - t0, msgspec.json.decode(reply.data) if reply.data else None


def code(body: Any) -> str | None:
    return body.get("error", {}).get("code") if isinstance(body, dict) else None


async def owned_by(nc: NATS, s: Settings, owner: str, n: int) -> list[str]:
    """``n`` jobs created through the API that landed on ``owner``."""
    jobs: list[str] = []
    i = 0
    while len(jobs) < n:
        job_id = f"ans{i}"
        i += 1
        rec = await api(nc, s, "create", {"userId": "u1", "jobId": job_id})
        if rec["owner"] == owner:
            jobs.append(job_id)
        else:
            await api(nc, s, "abort", {"jobId": job_id, "userId": "u1"})
        assert i < n * 20, "create never reached the replica to kill"
    return jobs


async def wait_status(nc: NATS, s: Settings, job_id: str, status: str, timeout: float) -> None:
    """Until ``api.status`` says ``status`` (the janitor's takeover has no event to wait on)."""
    async with asyncio.timeout(timeout):
        while True:
            got = await api(nc, s, "status", {"jobId": job_id, "userId": "u1"})
            if got["status"] == status:
                return
            await asyncio.sleep(0.1)


async def test_requests_about_a_killed_owners_jobs_are_answered(
    nats_url: str, figures: Figures
) -> None:
    s = fault_settings(nats_url, lease_ttl=4.0, heartbeat_interval=0.3, sweep_interval=1.0)
    a = ServeProcess(s.with_(replica_id="dead-a"))
    b = ServeProcess(s.with_(replica_id="live-b"))
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    nc = await nats.connect(nats_url, name="faults-answers-dead-owner")
    times: list[float] = []
    try:
        feeding, aborting, done = await owned_by(nc, s, "dead-a", 3)
        first = {"firstIndex": 0, "events": script(feeding, 5)}
        t, ack = await request(nc, s.ingest_subject(feeding), first)
        assert ack["ok"], ack
        await request(nc, s.ingest_subject(aborting), first)
        last = {"firstIndex": 0, "events": script(done, 5), "complete": sim.final_event(done)}
        t, completed = await request(nc, s.ingest_subject(done), last)
        assert completed["ok"], completed
        await asyncio.to_thread(a.kill)
        killed = time.monotonic()

        # Before the janitor: A's heartbeat is still fresh.
        more = {"firstIndex": ack["nextIndex"], "events": [sim.text_delta("s", "more")]}
        t, body = await request(nc, s.ingest_subject(feeding), more)
        times.append(t)
        if time.monotonic() - killed < s.lease_ttl / 2:
            assert code(body) == "unavailable", body  # retry: not yet known dead
        else:
            assert code(body) in ("unavailable", "conflict"), body
        t, body = await request(nc, s.abort_subject(aborting), {"userId": "u1"})
        times.append(t)
        assert body["success"] is True, body  # taken over: the user's abort wins
        assert body["jobData"]["status"] == "aborted", body
        with pytest.raises(nats.errors.NoRespondersError):
            await nc.request(
                s.rpc_subject("dead-a", "snapshot"), b'{"jobId": "x"}', timeout=s.request_timeout
            )
        t, again = await request(nc, s.ingest_subject(done), last)
        times.append(t)
        assert again == completed  # the same acknowledgement, A being gone

        # After the janitor ended the job with "owner lost".
        await wait_status(nc, s, feeding, "error", timeout=s.lease_ttl * 5)
        t, body = await request(nc, s.ingest_subject(feeding), more)
        times.append(t)
        assert code(body) == "conflict", body
        t, body = await request(nc, s.abort_subject(feeding), {"userId": "u1"})
        times.append(t)
        assert body["success"] is False, body
        assert isinstance(body["usageAlreadyClaimed"], bool), body
        t, body = await request(nc, s.ingest_subject("never-was"), first)
        times.append(t)
        assert code(body) == "not_found", body
        t, body = await request(nc, f"{s.prefix}.ingest.a.b", first)
        times.append(t)
        assert code(body) == "invalid_id", body
        figures.update(requests=len(times), max_ms=round(max(times) * 1000, 1))
        assert max(times) < s.request_timeout  # nobody waited out a timeout
    except BaseException:
        print("--- live-b's log ---\n" + b.tail(80))
        raise
    finally:
        a.close()
        b.close()
        await nc.close()
