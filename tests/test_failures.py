"""Failure paths of one job: caps, lost ownership, actors that cannot finish — each ends with a
terminal event and a told producer, never a job left running."""

from __future__ import annotations

import contextlib

import msgspec
from nats.aio.client import Client as NATS

from schemas.errors import JobEnded
from schemas.job import JobStatus
from service import simulate as sim
from service.client.producer import EmitResult
from service.client.reader import LiveHub, read_all
from service.config import Settings
from service.server.replica import Replica
from tests.helpers import running_replica, wait_for


async def test_job_reaching_the_per_job_cap_fails_loudly_and_keeps_its_history(
    nc: NATS, settings: Settings
) -> None:
    capped = settings.with_(max_events_per_job=10)
    async with running_replica(capped) as r:
        job = await r.create_job("u1", job_id="capped")
        results = []
        for i in range(30):
            results.append(await job.emit(sim.run_step(f"s{i}", i)))
            with contextlib.suppress(JobEnded):
                await job.flush()  # one message per event; refused once the job has ended
        await job.wait_ended()
        assert results[-1] is EmitResult.ENDED
        assert job.aborted.is_set()  # the producer was told to stop
        hub = LiveHub(nc, capped)
        got = await read_all(hub, "capped", timeout=10)
        await hub.close()
    assert len(got) == 10  # 9 events + the terminal error: nothing dropped, nothing beyond
    assert [e.index for e in got] == list(range(10))
    assert got[-1].kind == "error"
    assert "per-job cap" in msgspec.json.decode(got[-1].data)["error"]


async def test_running_job_owned_here_without_an_actor_is_swept(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("u1", job_id="lost-actor")
        await job.emit(sim.text_delta("s", "a"))
        await job.flush()
        # As if the actor had died without its terminal event (e.g. NATS was away):
        actor = r.registry.get("lost-actor")
        assert actor is not None
        r.registry._actors.pop("lost-actor")
        assert await r.liveness.sweep(r.ops) == 1
        rec, _ = await r.ops.record("lost-actor", "u1", None)
        assert rec.status is JobStatus.ERROR
        assert rec.error == "owner lost"
        r.registry._actors["lost-actor"] = actor  # let stop() end the (fenced-out) actor
        await job.emit(sim.text_delta("s", "b"))
        await job.wait_ended()  # its next write was refused by the fence: it stopped


async def test_a_job_being_created_is_not_swept_as_orphan(settings: Settings) -> None:
    async with running_replica(settings) as r:
        # The record exists before the actor does: a sweep in between must leave it alone.
        r.registry.reserved.add("in-creation")
        rec = r.creation.new_record("in-creation", "u1", None, None, None)
        await r.store.create_record(rec)
        assert await r.liveness.sweep(r.ops) == 0
        r.registry.reserved.discard("in-creation")  # creation "failed" before the actor started
        assert await r.liveness.sweep(r.ops) == 1


async def test_owner_dying_between_terminal_event_and_record_is_finished_from_the_log(
    settings: Settings,
) -> None:
    a = Replica(settings.with_(replica_id="rA"))
    await a.start()
    async with running_replica(settings.with_(replica_id="rB")) as b:
        job = await a.create_job("u1", job_id="half-done")
        await job.record_usage(sim.usage_openai())
        seq = await job.flush()
        # The owner stores its final event, then dies before writing the record.
        await a.store.publish_event(
            "half-done", msgspec.json.encode({"final": True}), "final", 0, seq
        )
        await a.kill()

        async def finished() -> bool:
            rec, _ = await b.ops.record("half-done", "u1", None)
            return bool(rec.status is JobStatus.COMPLETE)

        await wait_for(finished, timeout=settings.lease_ttl * 4)
        assert await b.ops.active("u1") == []
        first = await b.ops.abort("half-done", "u1")
        assert first["collectedUsage"] == [sim.usage_openai()]
        assert (await b.ops.abort("half-done", "u1"))["usageAlreadyClaimed"] is True
