"""Rolling restart of two real `genjobs serve` processes: no remote generation is interrupted.

A stopping replica hands its remote-producer jobs to the other one (service/server/handoff.py):
the record moves with its revision fence, the new owner rebuilds the actor from the log, and the
producer's next batch is answered by it. Replica A is stopped (SIGTERM) and replaced by A', then
B is stopped and replaced by B', while remote producers stream over plain NATS and two readers
follow each job. What must hold: every job completes with the producer's text, every reader
gets every stored event exactly once, usage is recorded once per model call, both processes
exit 0 and say in their log that they handed jobs off.
"""

from __future__ import annotations

import asyncio

import msgspec
import nats

from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica
from tests.faults.conftest import Figures, fault_settings
from tests.faults.producer import RemoteProducer, api
from tests.faults.workload import (
    Follower,
    Progress,
    check_log,
    log_tokens,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import wait_for
from tests.procs import ServeProcess

JOBS = 6
TOKENS = 240


async def test_rolling_restart_hands_remote_jobs_over_and_interrupts_none(
    nats_url: str, figures: Figures
) -> None:
    base: Settings = fault_settings(nats_url, shutdown_grace=5.0)
    procs = {name: ServeProcess(base.with_(replica_id=name)) for name in ("ha", "hb", "ha2", "hb2")}
    await asyncio.to_thread(procs["ha"].start)
    nc = await nats.connect(nats_url, name="handoff-producers")
    hub = LiveHub(nc, base, idle_check=2.0)
    usage = sim.usage_openai()
    try:
        producers: list[RemoteProducer] = []
        followers: list[Follower] = []
        for j in range(JOBS):
            if j == JOBS // 2:
                await asyncio.to_thread(procs["hb"].start)  # the first half is all on A
            job_id = f"handoff{j}"
            rec = await api(nc, base, "create", {"userId": "u1", "jobId": job_id})
            assert rec["owner"] in ("ha", "hb")
            events = script(job_id, TOKENS)
            producers.append(
                RemoteProducer(nc, base, job_id, events, pace=0.02, usage_every=5, timeout=1.0)
            )
            followers += [Follower(job_id) for _ in range(2)]
        progress = Progress(sum(len(p.events) for p in producers), [0.25, 0.6])
        for p in producers:
            p.on_ack = progress
        codes: dict[str, int | None] = {}

        async def roll() -> None:
            for stage, (old, new) in enumerate((("ha", "ha2"), ("hb", "hb2"))):
                await progress.reached(stage)
                procs[old].sigterm()
                codes[old] = await asyncio.to_thread(procs[old].wait, base.shutdown_grace + 10)
                await asyncio.to_thread(procs[new].start)

        async with asyncio.timeout(120), asyncio.TaskGroup() as tg:
            tg.create_task(roll())
            for f in followers:
                tg.create_task(f.follow(lambda: hub))
            for p in producers:
                tg.create_task(p.run(usage))

        assert codes == {"ha": 0, "hb": 0}, codes
        handed = {
            name: sum("handed off to" in line for line in procs[name].lines)
            for name in ("ha", "hb")
        }
        assert handed["ha"] >= JOBS // 2, procs["ha"].tail()
        assert handed["hb"] >= 1, procs["hb"].tail()

        kv = await nc.jetstream().key_value(base.jobs_bucket)
        lost = dups = stored = 0
        for p in producers:
            assert p.result is not None, (p.job_id, p.error, p.gone_status)
            assert p.result.get("ok"), (p.job_id, p.result)
            log = await stored_log(hub, p.job_id)
            check_log(log)
            stored += len(log)
            assert log[-1].kind == "final", f"{p.job_id} ended with {log[-1].kind}"
            assert log_tokens(log) == script_tokens(p.events)
            seqs = [e.seq for e in log]
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                lost += f.missing(seqs)
                dups += f.duplicates()
            rec = msgspec.json.decode((await kv.get(p.job_id)).value)
            assert rec["status"] == "complete"
            assert rec["usageClaimed"] is True
            assert len(rec["collectedUsage"]) == len(p.acked_usage), (p.job_id, rec)
        figures.update(
            jobs=JOBS,
            readers=len(followers),
            messages_stored=stored,
            handed_off_by_a=handed["ha"],
            handed_off_by_b=handed["hb"],
            unanswered_batches=sum(p.unanswered for p in producers),
            max_reader_stall_s=max(f.max_stall for f in followers),
            lost=lost,
            duplicated=dups,
        )
        assert lost == 0
        assert dups == 0
    finally:
        for proc in procs.values():
            proc.close()
        await hub.close()
        await nc.close()


async def test_stop_moves_remote_jobs_and_ends_in_process_ones(settings: Settings) -> None:
    """In one process: a stopping replica hands its remote-producer job over (the record names
    the other replica, which answers the producer's next batch and completes it) while its
    in-process producer's job ends with "interrupted" as before."""
    s = settings.with_(shutdown_grace=3.0)
    a, b = Replica(s.with_(replica_id="pa")), Replica(s.with_(replica_id="pb"))
    apis: list[ServiceApi] = []
    for r in (a, b):
        await r.start()
        apis.append(ServiceApi(r))
        await apis[-1].start()
    try:

        async def b_is_live() -> bool:
            return "pb" in a.liveness.live_replicas()

        await wait_for(b_is_live)
        local = await a.create_job("u1", job_id="inproc1")
        await local.emit(sim.text_delta("s", "local "))
        await local.flush()
        remote_id = None
        for i in range(40):  # api.create is load-balanced: find a job created on A
            rec = await api(a.nc, s, "create", {"userId": "u1", "jobId": f"remote{i}"})
            if rec["owner"] == "pa":
                remote_id = rec["streamId"]
                break
        assert remote_id is not None
        p = RemoteProducer(a.nc, s, remote_id, script(remote_id, 10), timeout=1.0)
        first = await p._send({"firstIndex": 0, "events": p.events[:5]})
        assert first is not None
        assert first["nextIndex"] == 5
        await apis[0].stop()
        await a.stop()
        kv = await b.nc.jetstream().key_value(s.jobs_bucket)
        moved = msgspec.json.decode((await kv.get(remote_id)).value)
        assert moved["owner"] == "pb"
        assert moved["status"] == "running"
        assert moved["ingestNext"] == 5
        assert b.registry.get(remote_id) is not None
        # The producer resends its next batch (A no longer answers): B answers and completes.
        p.index = 5
        p.events = p.events[5:]
        p.nc = b.nc
        await p.run()
        assert p.result is not None
        assert p.result["ok"]
        hub = LiveHub(b.nc, s)
        try:
            log = await stored_log(hub, remote_id)
            check_log(log)
            assert log[-1].kind == "final"
            assert log_tokens(log) == script_tokens(script(remote_id, 10))
            local_log = await stored_log(hub, "inproc1")
            assert local_log[-1].kind == "error"
            assert "interrupted" in local_log[-1].data.decode()
        finally:
            await hub.close()
    finally:
        for api_, r in zip(apis, (a, b), strict=True):
            await api_.stop()
            await r.stop()
