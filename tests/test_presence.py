"""Subscriber presence and the syncSent marker (docs/protocol.md, presence), across processes' hubs."""

from __future__ import annotations

import asyncio

import nats
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.presence import presence_hub
from service.config import Settings
from tests.helpers import running_replica, wait_for


async def test_owner_counts_readers_of_other_processes_and_hears_the_last_one_leave(
    nats_url: str, settings: Settings
) -> None:
    async with running_replica(settings) as owner:
        job = await owner.create_job("u1", job_id="pres")
        await job.emit(sim.text_delta("s", "a"))
        await job.update_metadata(syncSent=True)
        left: asyncio.Queue[str] = asyncio.Queue()

        async def on_left(job_id: str) -> None:
            await left.put(job_id)

        owner.on_all_readers_left(on_left)
        conns: list[NATS] = [await nats.connect(nats_url) for _ in range(2)]
        pairs = [presence_hub(c, settings, interval=0.3) for c in conns]
        hubs = [h for h, _ in pairs]
        for _, ann in pairs:
            await ann.start()
        readers = [hubs[0].subscribe("pres"), hubs[0].subscribe("pres"), hubs[1].subscribe("pres")]
        for r in readers[:2]:
            await r.__aenter__()

        async def count_is(n: int) -> bool:
            return owner.watchers("pres") == n

        await wait_for(lambda: count_is(2))
        await readers[2].__aenter__()
        await wait_for(lambda: count_is(3))
        assert left.empty()
        for r in readers:
            await r.__aexit__(None, None, None)
        async with asyncio.timeout(5):
            assert await left.get() == "pres"
        assert owner.watchers("pres") == 0
        # LibreChat's behaviour: the next reader needs a sync again.
        await wait_for(lambda: _sync_sent_is(job, False))
        for h, ann in pairs:
            await ann.stop()
            await h.close()
        for c in conns:
            await c.close()
        await job.complete()


async def _sync_sent_is(job, value: bool) -> bool:  # type: ignore[no-untyped-def]
    return bool(job.record.sync_sent is value)


async def test_a_reader_process_that_dies_stops_counting(nats_url: str, settings: Settings) -> None:
    async with running_replica(settings) as owner:
        job = await owner.create_job("u1", job_id="ghost")
        left: asyncio.Queue[str] = asyncio.Queue()

        async def on_left(job_id: str) -> None:
            await left.put(job_id)

        owner.on_all_readers_left(on_left)
        conn = await nats.connect(nats_url)
        hub, ann = presence_hub(conn, settings, interval=0.3)
        await ann.start()
        reader = hub.subscribe("ghost")
        await reader.__aenter__()
        await wait_for(lambda: _watchers(owner, "ghost", 1))
        await ann.stop()
        await conn.close()  # the process "dies": no goodbye is sent
        async with asyncio.timeout(5):
            assert await left.get() == "ghost"
        await hub.close()
        await job.complete()


async def _watchers(owner, job_id: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return bool(owner.watchers(job_id) == n)


async def test_sync_sent_set_from_another_replica_reaches_the_owner(settings: Settings) -> None:
    async with (
        running_replica(settings) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        job = await a.create_job("u1", job_id="syncy")
        assert job.record.sync_sent is False
        await b.ops.set_sync_sent("syncy", "u1", None, True)
        assert job.record.sync_sent is True
        rec, _ = await b.ops.record("syncy", "u1", None)
        assert rec.sync_sent is True
        await job.complete()
        await b.ops.set_sync_sent("syncy", "u1", None, False)
        rec, _ = await b.ops.record("syncy", "u1", None)
        assert rec.sync_sent is False
