"""Readers in the owner's process are fed by the actor directly, and fall back to NATS when the
actor ends, so they miss nothing whoever writes the job's last events."""

from __future__ import annotations

import asyncio

from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings
from tests.helpers import aggregate, decode, running_replica


async def test_reader_in_the_owners_process_needs_no_live_subscription(settings: Settings) -> None:
    events = list(sim.generation("local", tokens=50))
    async with running_replica(settings) as r:
        job = await r.create_job("u1", job_id="local")
        hub = LiveHub(r.nc, settings)
        got = []
        async with hub.subscribe("local") as reader:
            assert hub.subscriptions() == 0  # fed by the actor, not through NATS
            producer = asyncio.create_task(_produce_and_complete(job, events))
            async with asyncio.timeout(20):
                async for ev in reader:
                    got.append(ev)
            await producer
        await hub.close()
    assert [e.index for e in got] == list(range(len(got)))
    assert got[-1].kind == "final"
    assert aggregate([decode(e.data) for e in got if e.kind == "step"]) == aggregate(events)


async def _produce_and_complete(job, events) -> None:  # type: ignore[no-untyped-def]
    for ev in events:
        await job.emit(ev)
    await job.complete()


async def test_local_reader_gets_a_takeovers_terminal_event_after_the_owner_is_fenced(
    settings: Settings,
) -> None:
    async with (
        running_replica(settings) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        job = await a.create_job("u1", job_id="fenced")
        await job.emit(sim.text_delta("s", "a"))
        await job.flush()
        hub = LiveHub(a.nc, settings)
        async with hub.subscribe("fenced") as reader:
            assert hub.subscriptions() == 0
            async with asyncio.timeout(10):
                first = await reader.__anext__()  # the replay is done: from here on, live only
            assert first.kind == "step"
            # Replica B ends the job in A's place (as after a lost lease): A is fenced out.
            loaded = await b.store.load_record("fenced")
            assert loaded is not None
            assert await b.ops.fail_orphan(*loaded, "owner lost")
            await job.emit(sim.text_delta("s", "b"))  # A's next write hits the fence
            async with asyncio.timeout(10):
                ev = await reader.__anext__()
            assert ev.kind == "error"
            assert decode(ev.data) == {"error": "owner lost"}
            assert hub.subscriptions() == 1  # it fell back to the NATS live subject
        await hub.close()
        await job.wait_ended()
