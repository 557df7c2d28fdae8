"""Item 4 — owner replica crash: kill -9 a real `genjobs serve` owning running jobs.

Two `genjobs serve` processes share the jobs of remote producers (plain NATS, docs/protocol.md, remote producers);
readers follow every job. Replica A is killed mid-generation. What must hold:

* readers of A's jobs receive the terminal error ("owner lost") within the lease window;
* A's remote producers learn that their job is gone (their batches go unanswered; the service
  API, answered by B, says the job is no longer running);
* every batch A acknowledged before dying is in the log, before the terminal event;
* an abort, handled by B, returns the usage A collected exactly once;
* B's own jobs are untouched and complete with their exact content.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import nats
import pytest

from service import simulate as sim
from service.client.reader import LiveHub
from tests.faults.conftest import Figures, fault_settings
from tests.faults.producer import RemoteProducer, api
from tests.faults.workload import (
    Follower,
    Progress,
    check_log,
    log_tokens,
    lost_and_duplicated,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import aggregate, decode
from tests.procs import ServeProcess


@dataclass(frozen=True)
class OwnerCrash:
    jobs_per_replica: int
    readers: int
    tokens: int
    pace: float
    timeout: float


CASES = [
    pytest.param(OwnerCrash(4, 2, 400, 0.02, 50), id="short"),
    pytest.param(
        OwnerCrash(50, 3, 1000, 0.02, 200),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(400)],
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_owner_kill9_fails_its_jobs_within_the_lease_and_bills_once(
    nats_url: str, figures: Figures, case: OwnerCrash
) -> None:
    base = fault_settings(nats_url)
    a = ServeProcess(base.with_(replica_id="owner-a"))
    b = ServeProcess(base.with_(replica_id="owner-b"))
    await asyncio.gather(asyncio.to_thread(a.start), asyncio.to_thread(b.start))
    nc = await nats.connect(nats_url, name="faults-remote-producers")
    hub = LiveHub(nc, base, idle_check=2.0)
    usage = sim.usage_openai()
    try:
        # The create endpoint is load-balanced: create until each replica owns enough jobs.
        owned: dict[str, list[str]] = {"owner-a": [], "owner-b": []}
        n = 0
        while min(len(v) for v in owned.values()) < case.jobs_per_replica:
            job_id = f"own{n}"
            n += 1
            rec = await api(nc, base, "create", {"userId": "u1", "jobId": job_id})
            owned[rec["owner"]].append(job_id)
            assert n < case.jobs_per_replica * 20, "create never reached both replicas"
        producers = {
            job_id: RemoteProducer(
                nc, base, job_id, script(job_id, case.tokens), pace=case.pace, usage_every=2
            )
            for ids in owned.values()
            for job_id in ids
        }
        followers = [Follower(j) for j in producers for _ in range(case.readers)]
        on_a = [producers[j] for j in owned["owner-a"]]
        on_b = [producers[j] for j in owned["owner-b"]]
        progress = Progress(sum(len(p.events) for p in on_a), [0.3])
        for p in on_a:
            p.on_ack = progress
        loop = asyncio.get_running_loop()
        killed_at: asyncio.Future[float] = loop.create_future()

        async def crash() -> None:
            await progress.reached(0)
            acked = {p.job_id: (p.acked_events, list(p.acked_usage)) for p in on_a}
            await asyncio.to_thread(a.kill)
            killed_at.set_result(loop.time())
            acked_at_kill.update(acked)

        acked_at_kill: dict[str, tuple[int, list[dict[str, object]]]] = {}
        terminal_at: dict[str, float] = {}

        async def follow(f: Follower) -> None:
            await f.follow(lambda: hub)
            terminal_at.setdefault(f.job_id, loop.time())
            terminal_at[f.job_id] = max(terminal_at[f.job_id], loop.time())

        async with asyncio.timeout(case.timeout), asyncio.TaskGroup() as tg:
            tg.create_task(crash())
            for f in followers:
                tg.create_task(follow(f))
            for p in producers.values():
                tg.create_task(p.run(usage))
        t_kill = killed_at.result()

        lost = dups = 0
        detections = []
        for p in producers.values():
            log = await stored_log(hub, p.job_id)
            check_log(log)
            tokens = log_tokens(log)
            acked = script_tokens(p.events[: p.acked_events])
            l_, d_ = lost_and_duplicated(acked, tokens)
            lost, dups = lost + l_, dups + d_
            assert tokens[: len(acked)] == acked
            seqs = [e.seq for e in log]
            steps = aggregate([decode(e.data) for e in log if e.kind == "step"])
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                lost += f.missing(seqs)
                dups += f.duplicates()
                assert aggregate(f.steps) == steps
            if p in on_b:
                assert p.result is not None, p
                assert p.result.get("ok"), p
                assert tokens == script_tokens(p.events)
                assert log[-1].kind == "final"
                continue
            assert log[-1].kind == "error"
            assert decode(log[-1].data)["error"] == "owner lost"
            detections.append(terminal_at[p.job_id] - t_kill)
            assert p.gone_status == "error", f"{p.job_id}: producer did not learn ({p})"
            assert p.gone_at is not None
            assert p.acked_events >= acked_at_kill[p.job_id][0]

        # Abort on the surviving replica returns A's collected usage once, then never again.
        usage_returned = 0
        for p in on_a:
            first = await api(nc, base, "abort", {"jobId": p.job_id, "userId": "u1"})
            second = await api(nc, base, "abort", {"jobId": p.job_id, "userId": "u1"})
            got = first["collectedUsage"]
            # Acknowledged usage is all there; an unacknowledged batch may have landed too.
            assert len(p.acked_usage) <= len(got) <= p.sent_usage
            assert all(u["input_tokens"] == usage["input_tokens"] for u in got)
            assert first["usageAlreadyClaimed"] is False
            assert second["usageAlreadyClaimed"] is True
            assert second["collectedUsage"] == []
            usage_returned += len(got)

        gone = [p.gone_at - t_kill for p in on_a if p.gone_at is not None]
        figures.update(
            jobs_on_killed=len(on_a),
            jobs_on_survivor=len(on_b),
            readers=len(followers),
            events_acked=sum(p.acked_events for p in producers.values()),
            lost=lost,
            duplicated=dups,
            lease_ttl_s=base.lease_ttl,
            detection_max_s=max(detections),
            detection_min_s=min(detections),
            producer_learned_max_s=max(gone),
            usage_records_acked=sum(len(p.acked_usage) for p in on_a),
            usage_records_returned=usage_returned,
        )
        assert lost == 0
        assert dups == 0
        # Within the lease window: the lease plus one janitor tick and the takeover itself.
        assert max(detections) < base.lease_ttl * 2
        t0 = time.monotonic()
        b.sigterm()
        assert await asyncio.to_thread(b.wait, base.shutdown_grace + 10) == 0, b.tail()
        figures["survivor_stop_s"] = time.monotonic() - t0
    finally:
        a.close()
        b.close()
        await hub.close()
        await nc.close()
