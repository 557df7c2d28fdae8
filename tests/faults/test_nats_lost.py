"""Issue 12 item 9 — NATS lost for good: a replica says so, gives up, and stops cleanly.

A real `genjobs serve` owns running jobs on a nats-server this test starts and kills by pid.
What must hold (docs/reliability.md, NATS lost for good):

* after ``GENJOBS_NATS_LOST_EXIT`` seconds without NATS it logs an ERROR naming what it could
  not do and exits 3, so that an orchestrator restarts it;
* SIGTERM in that state ends within the grace period, logs which jobs could not get their
  terminal event, exits non-zero, and leaves no unretrieved future behind;
* in-process, ``Replica.health()`` reports the state (what ``/readyz`` reads).
"""

from __future__ import annotations

import asyncio
import time

import nats

from service.config import Settings
from service.server.replica import Replica
from tests.faults.conftest import Figures, Node, fault_settings
from tests.faults.producer import api
from tests.procs import ServeProcess

NO_LEFTOVERS = ("Future exception was never retrieved", "Task was destroyed but it is pending")


async def serve_with_jobs(node: Node, s: Settings, n: int) -> tuple[ServeProcess, list[str]]:
    """A `genjobs serve` owning ``n`` running jobs (each with one stored event)."""
    proc = ServeProcess(s)
    await asyncio.to_thread(proc.start)
    nc = await nats.connect(node.url)
    try:
        jobs = []
        for i in range(n):
            rec = await api(nc, s, "create", {"userId": "u1", "jobId": f"lost{i}"})
            jobs.append(rec["streamId"])
            batch = b'{"firstIndex": 0, "events": [{"event": "on_message_delta", "data": {"id": "s", "delta": {"content": [{"type": "text", "text": "hi"}]}}}]}'
            reply = await nc.request(s.ingest_subject(rec["streamId"]), batch, timeout=5)
            assert b'"ok":true' in reply.data, reply.data
    finally:
        await nc.close()
    return proc, jobs


async def test_a_replica_without_nats_gives_up_with_exit_3(
    nats_node: Node, figures: Figures
) -> None:
    s = fault_settings(nats_node.url, publish_outage_budget=1.0, nats_lost_exit=2.0)
    proc, jobs = await serve_with_jobs(nats_node, s, 2)
    try:
        t_kill = time.monotonic()
        nats_node.kill()
        code = await asyncio.to_thread(proc.wait, s.nats_lost_after + s.shutdown_grace + 10)
        took = time.monotonic() - t_kill
        log = "\n".join(proc.lines)
        assert code == 3, proc.tail()
        errors = [line for line in proc.lines if " ERROR " in line and "NATS unreachable" in line]
        assert errors, proc.tail()
        assert "cannot store events" in errors[0], errors[0]
        assert "2 running job(s)" in errors[0], errors[0]
        for job in jobs:
            assert job in errors[0]
        for leftover in NO_LEFTOVERS:
            assert leftover not in log, proc.tail()
        # Gave up after the budget, and stopped within the grace period after that.
        assert took >= s.nats_lost_after
        assert took <= s.nats_lost_after + s.shutdown_grace + 5.0, (took, proc.tail())
        figures.update(
            exit_code=code, gave_up_after_s=round(took, 2), lost_exit_s=s.nats_lost_after
        )
    finally:
        proc.close()


async def test_sigterm_without_nats_ends_within_grace_and_names_the_jobs(
    nats_node: Node, figures: Figures
) -> None:
    s = fault_settings(nats_node.url, publish_outage_budget=30.0, nats_lost_exit=120.0)
    proc, jobs = await serve_with_jobs(nats_node, s, 3)
    try:
        nats_node.kill()
        assert await asyncio.to_thread(proc.wait_line, "NATS is reconnecting", 30.0), proc.tail()
        t_term = time.monotonic()
        proc.sigterm()
        code = await asyncio.to_thread(proc.wait, s.shutdown_grace + 15)
        took = time.monotonic() - t_term
        log = "\n".join(proc.lines)
        assert code == 3, proc.tail()  # non-zero: NATS is gone
        unfinished = [line for line in proc.lines if "could not get their terminal event" in line]
        assert unfinished, proc.tail()
        for job in jobs:
            assert job in unfinished[0], unfinished[0]
        for leftover in NO_LEFTOVERS:
            assert leftover not in log, proc.tail()
        # The grace period bounds the whole stop (plus the interpreter's own exit).
        assert took <= s.shutdown_grace + 3.0, (took, proc.tail())
        figures.update(exit_code=code, stop_s=round(took, 2), grace_s=s.shutdown_grace)
    finally:
        proc.close()


async def test_health_reports_nats_state_and_loss(nats_node: Node) -> None:
    s = fault_settings(nats_node.url, nats_lost_exit=1.0, shutdown_grace=1.0)
    replica = Replica(s)
    await replica.start()
    try:
        await replica.create_job("u1", job_id="h1")
        health = replica.health()
        assert health["ready"] is True, health
        assert health["nats"] == "connected", health
        assert health["jobs"] == 1, health
        assert health["natsLost"] is False, health
        nats_node.kill()
        async with asyncio.timeout(s.nats_lost_after + 10):
            await replica.nats_lost.wait()
        health = replica.health()
        assert health["ready"] is False, health
        assert health["natsLost"] is True, health
        assert health["nats"] == "reconnecting", health
        assert health["natsDownFor"] >= s.nats_lost_after, health
    finally:
        t0 = time.monotonic()
        await replica.stop()
        took = time.monotonic() - t0
    assert replica.unfinished == ["h1"]
    assert took <= s.shutdown_grace + 1.0, took
    assert replica.nc.is_closed
