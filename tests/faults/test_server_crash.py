"""Item 2 — nats-server crash: kill -9 the single file-store server mid-generation, keep it down
for a while, restart it on the same port and store.

Producers run in a real replica whose connection reconnects forever; readers follow every job
on a connection of their own. What must hold: every event a producer saw acknowledged (a flush
that returned) is stored and read by every reader, exactly once; patient producers simply
continue after the reconnect; producers that gave up during the outage fail their job, and
that failure reaches the readers as the terminal event: nobody waits forever.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import nats
import pytest

from service.client.reader import LiveHub
from service.server.replica import Replica
from tests.faults.conftest import Figures, Node, fault_settings
from tests.faults.workload import (
    Clock,
    Follower,
    Producer,
    check_log,
    log_tokens,
    lost_and_duplicated,
    replica_must_survive,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import aggregate, decode


@dataclass(frozen=True)
class Crash:
    jobs: int
    readers: int
    tokens: int
    kills: int
    outage: float
    """Seconds the server stays down after kill -9, on top of its restart time."""
    impatient: int
    """Producers per kill whose patience (``give_up``) is shorter than the outage."""
    give_up: float
    pace: float
    timeout: float
    seed: int = 11


CASES = [
    pytest.param(Crash(8, 2, 60, 1, 1.5, 2, 0.6, 0.02, 50), id="short"),
    pytest.param(
        Crash(8, 2, 60, 1, 5.0, 2, 0.6, 0.02, 50),
        id="outage-5s",
    ),
    pytest.param(
        Crash(40, 3, 300, 3, 2.0, 3, 0.6, 0.02, 240),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(400)],
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_server_kill9_loses_no_acknowledged_event_and_leaves_nobody_waiting(
    nats_node: Node, figures: Figures, case: Crash
) -> None:
    s = fault_settings(nats_node.url)
    rng = random.Random(case.seed)
    clock = Clock()
    replica = Replica(s)
    await replica.start()
    hub: LiveHub | None = None

    async def on_reconnect() -> None:
        if hub is not None:
            hub.on_reconnected()

    reader_nc = await nats.connect(
        nats_node.url,
        name="faults-readers",
        reconnected_cb=on_reconnect,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )
    hub = LiveHub(reader_nc, s, idle_check=2.0)

    total = case.jobs * len(script("x", case.tokens))
    progress = 0
    kill_at = [(total * (k + 1) // (case.kills + 2), asyncio.Event()) for k in range(case.kills)]

    def on_ack(n: int) -> None:
        nonlocal progress
        progress += n
        for at, ev in kill_at:
            if progress >= at:
                ev.set()

    producers: list[Producer] = []
    followers: list[Follower] = []
    impatient = case.impatient * case.kills
    for j in range(case.jobs):
        job_id = f"crash{j}"
        job = await replica.create_job("user1", job_id=job_id)
        producers.append(
            Producer(
                job,
                script(job_id, case.tokens),
                rng,
                pace=case.pace,
                on_ack=on_ack,
                give_up_after=case.give_up if j < impatient else None,
            )
        )
        followers += [Follower(job_id) for _ in range(case.readers)]

    outages: list[float] = []
    acked_at_kill: list[int] = []

    async def crash_loop() -> None:
        for _, reached in kill_at:
            await reached.wait()
            acked_at_kill.append(sum(p.acked for p in producers))
            t0 = clock()
            await asyncio.to_thread(nats_node.kill)
            await asyncio.sleep(case.outage)  # the fault's duration: the server stays down
            await asyncio.to_thread(nats_node.start)
            outages.append(clock() - t0)

    try:
        async with asyncio.timeout(case.timeout), asyncio.TaskGroup() as tg:
            watchdog = tg.create_task(replica_must_survive(replica))
            work = [tg.create_task(crash_loop())]
            work += [tg.create_task(f.follow(lambda: hub)) for f in followers]
            work += [tg.create_task(p.run()) for p in producers]
            await asyncio.wait(work)
            watchdog.cancel()
        run_s = clock()

        # --- what is stored, and what every reader got ---
        lost = dups = stored_total = 0
        gave_up = [p for p in producers if p.gave_up is not None]
        for p in producers:
            log = await stored_log(hub, p.job_id)
            check_log(log)
            tokens = log_tokens(log)
            # No acknowledged event is lost, none is stored twice, and the order is kept.
            l_, d_ = lost_and_duplicated(p.acked_tokens, tokens)
            lost, dups = lost + l_, dups + d_
            assert tokens[: len(p.acked_tokens)] == p.acked_tokens
            stored_total += len(log)
            if p.gave_up is None:
                assert p.result is not None, f"{p.job_id}: a patient producer did not complete"
                assert log[-1].kind == "final"
                assert tokens == script_tokens(p.events)
            else:
                # The producer's failure is the job's terminal event: loud, not a hang.
                assert log[-1].kind == "error"
                assert "producer failed" in decode(log[-1].data)["error"]
            rec, _ = await replica.ops.record(p.job_id, "user1", None)
            assert rec.status.value == ("complete" if p.gave_up is None else "error")
            seqs = [e.seq for e in log]
            steps = aggregate([decode(e.data) for e in log if e.kind == "step"])
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                lost += f.missing(seqs)
                dups += f.duplicates()
                assert f.in_order()
                assert aggregate(f.steps) == steps

        # The replica survived the crash: it still takes and finishes work.
        after = await replica.create_job("user1", job_id="after-crash")
        await after.emit(script("after-crash", 1)[0])
        assert (await after.complete())["status"] == "complete"

        figures.update(
            jobs=case.jobs,
            readers=len(followers),
            kills=len(outages),
            outage_s=max(outages),
            events_produced=sum(p.emitted for p in producers),
            events_acked=sum(p.acked for p in producers),
            acked_before_kill=acked_at_kill[0],
            messages_stored=stored_total,
            messages_received=sum(len(f.seqs) for f in followers),
            lost=lost,
            duplicated=dups,
            producers_gave_up=len(gave_up),
            max_flush_stall_s=max(p.max_flush_s for p in producers),
            max_reader_stall_s=max(f.max_stall for f in followers),
            replica_reconnects=replica.nc.stats["reconnects"],
            run_s=run_s,
        )
        await replica.stop()
    finally:
        await hub.close()
        await reader_nc.close()
        if not replica.stopped:  # a failure path: the replica must not outlive the test
            try:
                await replica.kill()
            except* Exception:  # its supervisor's own failure, already reported by the watchdog
                pass
    assert lost == 0
    assert dups == 0
    assert len(gave_up) >= 1, "no producer gave up: the outage did not hit them mid-flush"
    assert len(gave_up) <= impatient
