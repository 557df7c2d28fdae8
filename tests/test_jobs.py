"""The job lifecycle over a real nats-server: create, emit, read/resume, complete, error, abort,
usage, lease, cleanup, indexes — one test per behaviour (issue 4)."""

from __future__ import annotations

import asyncio
import random

import pytest
from nats.aio.client import Client as NATS

from schemas.errors import Conflict, Forbidden, InvalidId
from service import simulate as sim
from service.client.producer import EmitResult
from service.client.reader import LiveHub, read_all
from service.config import Settings
from service.server.replica import Replica
from tests.helpers import aggregate, decode, running_replica, wait_for


async def produce(job, events) -> None:  # type: ignore[no-untyped-def]
    for ev in events:
        assert await job.emit(ev) is EmitResult.ACCEPTED


async def test_completed_job_replays_every_event_then_final(nc: NATS, settings: Settings) -> None:
    events = list(sim.generation("job-a", tokens=40))
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="job-a")
        await produce(job, events)
        result = await job.complete(sim.final_event("job-a"))
        hub = LiveHub(nc, settings)
        got = await read_all(hub, "job-a", timeout=10)
        await hub.close()
    assert got[-1].kind == "final"
    assert result["seq"] == got[-1].seq
    assert [e.index for e in got] == list(range(len(got)))  # dense, in order
    step_events = [decode(e.data) for e in got if e.kind == "step"]
    assert aggregate(step_events) == aggregate(events)  # coalescing changed nothing


async def test_reader_starting_at_every_sequence_of_a_finished_job_gets_exactly_the_rest(
    nc: NATS, settings: Settings
) -> None:
    async with running_replica(settings) as r:
        other = await r.create_job("user2", job_id="noise")  # interleaved: seqs are not dense
        job = await r.create_job("user1", job_id="cut")
        for i, ev in enumerate(sim.generation("cut", tokens=12)):
            await job.emit(ev)
            if i % 3 == 0:
                await other.emit(sim.text_delta("s", "x"))
                await other.flush()
            await job.flush()  # one message per event, so every cut point exists
        await job.complete(sim.final_event("cut"))
        await other.complete()
        hub = LiveHub(nc, settings)
        full = await read_all(hub, "cut", timeout=10)
        seqs = [e.seq for e in full]
        for cut in [0, *seqs]:
            rest = await read_all(hub, "cut", after_seq=cut, timeout=10)
            assert [e.seq for e in rest] == [s for s in seqs if s > cut]
        await hub.close()


async def test_reader_disconnecting_and_resuming_many_times_ends_with_the_full_content(
    nc: NATS, settings: Settings
) -> None:
    events = list(sim.generation("flaky", tokens=200))
    rng = random.Random(7)
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="flaky")
        producer = asyncio.create_task(produce(job, events))
        hub = LiveHub(nc, settings)
        seen: list[int] = []
        received: list[dict] = []  # type: ignore[type-arg]
        last = 0
        done = False
        async with asyncio.timeout(30):
            while not done:
                budget = rng.randint(1, 15)
                async with hub.subscribe("flaky", after_seq=last) as stream:
                    async for ev in stream:
                        seen.append(ev.seq)
                        if ev.kind == "step":
                            received.append(decode(ev.data))
                        last = ev.seq
                        if ev.kind == "final":
                            done = True
                            break
                        budget -= 1
                        if budget == 0:
                            break  # drop off mid-stream; resume by seq
                if producer.done() and not job.ended:
                    await job.complete(sim.final_event("flaky"))
        await producer
        await hub.close()
    assert seen == sorted(set(seen)), "a duplicate or out-of-order event"
    assert aggregate(received) == aggregate(events)


async def test_resume_snapshot_plus_events_after_its_seq_equals_the_whole(
    nc: NATS, settings: Settings
) -> None:
    events = list(sim.generation("snap", tokens=120))
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="snap")
        await produce(job, events[:70])
        await job.flush()
        snap = await r.ops.resume("snap", "user1")
        await produce(job, events[70:])
        await job.complete(sim.final_event("snap"))
        hub = LiveHub(nc, settings)
        after = await read_all(hub, "snap", after_seq=snap["seq"], timeout=10)
        await hub.close()
    assert snap["status"] == "running"
    assert snap["userMessage"]["messageId"] == "user-msg-1"
    rest = [decode(e.data) for e in after if e.kind == "step"]
    # The snapshot's content continued with exactly the later events gives the full content.
    full = aggregate(events)
    assert aggregate(events[:70]) == snap["aggregatedContent"]
    assert full == aggregate([*events[:70], *rest]) or full == aggregate(events)
    assert len(rest) >= 1


async def test_abort_on_another_replica_stops_the_job_and_returns_content_text_and_usage(
    nc: NATS, settings: Settings
) -> None:
    async with (
        running_replica(settings) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        job = await a.create_job("user1", job_id="ab", conversation_id="ab")
        await job.update_metadata(responseMessageId="resp-1", sender="GPT")
        events = list(sim.generation("ab", tokens=30))
        await produce(job, events)
        await job.record_usage(sim.usage_openai())
        await job.record_usage(sim.usage_anthropic())
        await job.flush()
        result = await b.ops.abort("ab", "user1")
        assert job.aborted.is_set()  # the producer's signal fired
        assert result["success"] is True
        assert result["collectedUsage"] == [sim.usage_openai(), sim.usage_anthropic()]
        assert result["content"] == aggregate(events)
        assert "Resumable" in result["text"]
        final = result["finalEvent"]
        assert final["aborted"] is True
        assert final["final"] is True
        assert final["responseMessage"]["unfinished"] is True
        assert final["responseMessage"]["messageId"] == "resp-1"
        assert result["jobData"]["status"] == "aborted"
        again = await b.ops.abort("ab", "user1")
        assert again["usageAlreadyClaimed"] is True
        assert again["collectedUsage"] == []
        assert await job.emit(sim.text_delta("step_text", "late")) is EmitResult.ENDED


async def test_early_abort_has_librechat_early_shape(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="early")
        await job.emit(sim.created_event("early", "um-7"))
        await job.flush()
        result = await r.ops.abort("early", "user1")
    final = result["finalEvent"]
    assert final["earlyAbort"] is True
    assert final["conversation"] is None
    assert result["content"] == []


async def test_abort_message_id_falls_back_to_user_message_id(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="fallback")
        await produce(job, sim.generation("fallback", tokens=3, with_tool=False, reasoning=0))
        await job.flush()
        result = await r.ops.abort("fallback", "user1")
    assert result["finalEvent"]["responseMessage"]["messageId"] == "user-msg-1_"


async def test_error_is_kept_for_late_readers(nc: NATS, settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="err")
        await produce(job, sim.generation("err", tokens=5))
        await job.fail("model exploded")
        hub = LiveHub(nc, settings)
        got = await read_all(hub, "err", timeout=10)
        await hub.close()
        rec, _ = await r.ops.record("err", "user1", None)
    assert got[-1].kind == "error"
    assert decode(got[-1].data) == {"error": "model exploded"}
    assert rec.status == "error"
    assert rec.error == "model exploded"


async def test_finished_job_is_replayable_within_ttl_and_gone_after(
    nc: NATS, settings: Settings
) -> None:
    short = settings.with_(completed_ttl=1.0)
    async with running_replica(short) as r:
        job = await r.create_job("user1", job_id="ttl")
        await produce(job, sim.generation("ttl", tokens=5))
        await job.complete(sim.final_event("ttl"))
        hub = LiveHub(nc, short)
        got = await read_all(hub, "ttl", timeout=10)
        assert got[-1].kind == "final"

        async def gone() -> bool:
            return (
                await r.store.load_record("ttl") is None
                and await r.store.subject_last("ttl") is None
                and await r.store.get_snapshot("ttl") is None
            )

        await wait_for(gone, timeout=15)
        await hub.close()


async def test_owner_crash_is_detected_and_job_marked_error_within_the_lease(
    nc: NATS, settings: Settings
) -> None:
    a = Replica(settings.with_(replica_id="rA"))
    await a.start()
    async with running_replica(settings.with_(replica_id="rB")) as b:
        job = await a.create_job("user1", job_id="orphan")
        await produce(job, sim.generation("orphan", tokens=10))
        await job.record_usage(sim.usage_openai())
        await job.flush()
        hub = LiveHub(nc, settings)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await a.kill()
        got = await read_all(hub, "orphan", timeout=settings.lease_ttl * 4)
        detected = loop.time() - t0
        await hub.close()
        assert got[-1].kind == "error"
        assert decode(got[-1].data)["error"] == "owner lost"
        assert detected < settings.lease_ttl * 3

        async def record_says_error() -> bool:
            # The terminal event is written first (it is the truth); the record follows.
            rec, _ = await b.ops.record("orphan", "user1", None)
            return bool(rec.status == "error")

        await wait_for(record_says_error, timeout=5)
        # Usage recorded before the crash is still claimable exactly once.
        first = await b.ops.abort("orphan", "user1")
        assert first["collectedUsage"] == [sim.usage_openai()]
        second = await b.ops.abort("orphan", "user1")
        assert second["usageAlreadyClaimed"] is True


async def test_abort_of_a_job_whose_owner_died_is_done_by_the_asked_replica(
    nc: NATS, settings: Settings
) -> None:
    slow = settings.with_(lease_ttl=30.0)  # the janitor must not get there first
    a = Replica(slow.with_(replica_id="rA"))
    await a.start()
    async with running_replica(slow.with_(replica_id="rB")) as b:
        job = await a.create_job("user1", job_id="dead-abort")
        events = list(sim.generation("dead-abort", tokens=12))
        await produce(job, events)
        await job.record_usage(sim.usage_anthropic())
        await job.flush()
        await a.kill()
        b.liveness._seen.pop("rA", None)  # as if its lease had run out
        result = await b.ops.abort("dead-abort", "user1")
        assert result["success"] is True
        assert result["content"] == aggregate(events)
        assert result["collectedUsage"] == [sim.usage_anthropic()]
        hub = LiveHub(nc, settings)
        got = await read_all(hub, "dead-abort", timeout=10)
        await hub.close()
        assert decode(got[-1].data)["aborted"] is True


async def test_create_conflict_replace_and_idempotency(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="same")
        with pytest.raises(Conflict):
            await r.create_job("user1", job_id="same")
        with pytest.raises(Forbidden):
            await r.create_job("intruder", job_id="same", replace=True)
        await job.emit(sim.text_delta("s", "old"))
        replaced = await r.create_job("user1", job_id="same", replace=True)
        assert job.aborted.is_set()
        assert job.ended
        assert replaced.record.created_at >= job.record.created_at
        await replaced.complete()
        first = await r.create_job("user1", idempotency_key="req-42")
        again = await r.create_job("user1", idempotency_key="req-42")
        assert first.job_id == again.job_id
        await first.complete()
        with pytest.raises(InvalidId):
            await r.create_job("user1", job_id="a.b")
        with pytest.raises(InvalidId):
            await r.create_job("user 1")


async def test_job_outliving_every_ttl_keeps_its_record(settings: Settings) -> None:
    short = settings.with_(completed_ttl=1.0, lease_ttl=1.5, heartbeat_interval=0.3)
    async with running_replica(short) as r:
        job = await r.create_job("user1", job_id="long")
        await job.emit(sim.text_delta("s", "a"))
        await job.flush()
        rec_before = await r.store.load_record("long")
        assert rec_before is not None
        # Wait past completed_ttl and several lease periods, on the server's clock.
        await wait_for(lambda: _later(r, 4.0), timeout=10)
        assert await r.store.load_record("long") is not None
        assert r.liveness.takeovers == 0
        result = await job.complete()
        assert result["status"] == "complete"


async def _later(r, seconds: float) -> bool:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    r.__dict__.setdefault("_t0", loop.time())
    return bool(loop.time() - r.__dict__["_t0"] >= seconds)


async def test_counts_and_active_ids_with_two_replicas(settings: Settings) -> None:
    async with (
        running_replica(settings) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        j1 = await a.create_job("alice", job_id="c1")
        j2 = await b.create_job("alice", job_id="c2")
        await b.create_job("bob", job_id="c3")
        j4 = await a.create_job("alice", job_id="c4", tenant_id="t1")
        assert await a.ops.active("alice") == ["c1", "c2"]
        assert await b.ops.active("alice", "t1") == ["c4"]
        await j1.complete()
        await j2.fail("x")
        await b.ops.abort("c3", "bob")
        assert await a.ops.active("alice") == []
        counts = await b.ops.counts()
        assert counts == {"running": 1, "complete": 1, "error": 1, "aborted": 1}
        await j4.complete()


async def test_active_index_heals_stale_entries(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("carol", job_id="stale")
        await job.complete()
        await r.store.add_user_index(job.record)  # a leftover entry, as after a crash
        assert await r.ops.active("carol") == []
        assert await r.store.list_user_jobs("carol", None) == []


async def test_shutdown_mid_generation_leaves_terminal_events(nc: NATS, settings: Settings) -> None:
    r = Replica(settings)
    await r.start()
    jobs = [await r.create_job("user1", job_id=f"sd{i}") for i in range(5)]
    for j in jobs:
        await produce(j, sim.generation(j.job_id, tokens=10))
    await r.stop()
    assert all(j.aborted.is_set() for j in jobs)  # producers were told to stop
    hub = LiveHub(nc, settings)
    for j in jobs:
        got = await read_all(hub, j.job_id, timeout=10)
        assert got[-1].kind == "error"
        assert decode(got[-1].data)["error"] == "interrupted: replica shutting down"
    await hub.close()
    assert len(r.registry) == 0


async def test_producer_exception_fails_the_job(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="boom")

        async def generation() -> None:
            async with job:
                await job.emit(sim.text_delta("s", "a"))
                raise RuntimeError("llm down")

        with pytest.raises(RuntimeError):
            await generation()
        rec, _ = await r.ops.record("boom", "user1", None)
        assert rec.status == "error"
        assert "llm down" in (rec.error or "")


async def test_usage_is_reported_once_on_completion(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="bill")
        await job.record_usage(sim.usage_openai())
        result = await job.complete()
        assert result["collectedUsage"] == [sim.usage_openai()]
        later = await r.ops.abort("bill", "user1")
        assert later["usageAlreadyClaimed"] is True
        assert later["collectedUsage"] == []


async def test_heavy_load_coalesces_deltas_without_changing_content(
    nc: NATS, settings: Settings
) -> None:
    events = list(sim.generation("heavy", tokens=2000, with_tool=False, reasoning=0))
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="heavy")
        await produce(job, events)
        await job.complete()
        actor_stats = (job._actor.stats.produced, job._actor.stats.published)
        hub = LiveHub(nc, settings)
        got = await read_all(hub, "heavy", timeout=20)
        await hub.close()
    produced, published = actor_stats
    assert produced == len(events)
    assert published < produced  # merging happened under load
    assert aggregate([decode(e.data) for e in got if e.kind == "step"]) == aggregate(events)


async def test_emitting_after_the_end_is_refused_with_a_clear_result(settings: Settings) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="after")
        await job.complete()
        assert await job.emit(sim.text_delta("s", "late")) is EmitResult.ENDED


async def test_inbox_is_bounded_and_applies_backpressure(settings: Settings) -> None:
    async with running_replica(settings, inbox_size=8) as r:
        job = await r.create_job("user1", job_id="bp")
        actor = job._actor
        peak = 0
        for i in range(300):
            await job.emit(sim.text_delta("s", str(i)))
            peak = max(peak, len(actor.inbox))
        await job.complete()
    assert peak <= 8 + 2  # events never exceed the bound (control messages aside)


async def test_an_abort_handled_by_the_owner_is_announced_on_the_abort_subject(
    nc: NATS, settings: Settings
) -> None:
    async with running_replica(settings) as r:
        job = await r.create_job("user1", job_id="watched")
        watcher = await nc.subscribe(settings.abort_subject("watched"))
        await nc.flush()
        await r.ops.abort("watched", "user1")  # handled locally by the owner
        msg = await watcher.next_msg(timeout=5)
        assert decode(msg.data) == {"notice": "aborted", "jobId": "watched"}
        await watcher.unsubscribe()
        assert job.ended
