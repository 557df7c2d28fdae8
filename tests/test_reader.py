"""Readers against a real nats-server: replay, live follow, gaps, slow readers, reconnects.

Events are published here exactly as producers do (one message per event with Genjobs-Kind,
Genjobs-Index and Nats-Expected-Last-Subject-Sequence). Live loss is produced for real by
turning the stream's republish off while events are stored, so the reader genuinely never sees
them on the live subject and must find them in the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from service.client.reader import HubClosed, LiveHub, ReadEvent, read_all
from service.config import Settings
from service.nats.directget import (
    DirectGetError,
    ReplayTimeout,
    direct_get_batch,
    last_seq_for_subject,
)
from service.nats.embedded import EmbeddedServer
from service.nats.provision import events_stream_config, provision
from tests.helpers import wait_for

WAIT = 10.0  # upper bound for anything a test waits for


class Producer:
    """Publishes events as an owner actor does: dense indexes, fenced by subject sequence."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js = js
        self.s = settings
        self.last: dict[str, int] = {}
        self.index: dict[str, int] = {}
        self.sent: dict[str, list[ReadEvent]] = {}

    async def emit(self, job: str, kind: str = "step") -> ReadEvent:
        i = self.index.get(job, 0)
        body = {"final": True} if kind == "final" else {"event": "on_message_delta", "i": i}
        data = json.dumps({**body, "job": job}).encode()
        headers = {  # a fresh dict each time: js.publish mutates it
            "Genjobs-Kind": kind,
            "Genjobs-Index": str(i),
            "Nats-Expected-Last-Subject-Sequence": str(self.last.get(job, 0)),
        }
        ack = await self.js.publish(self.s.events_subject(job), data, headers=headers)
        self.last[job] = ack.seq
        self.index[job] = i + 1
        ev = ReadEvent(ack.seq, i, kind, data)
        self.sent.setdefault(job, []).append(ev)
        return ev

    async def emit_many(self, job: str, n: int) -> list[ReadEvent]:
        return [await self.emit(job) for _ in range(n)]

    def after(self, job: str, seq: int) -> list[ReadEvent]:
        return [e for e in self.sent.get(job, []) if e.seq > seq]


async def set_republish(js: JetStreamContext, settings: Settings, on: bool) -> None:
    """Turn live delivery off/on: stored events are then really never seen on the live subject."""
    cfg = events_stream_config(settings)
    if not on:
        cfg.republish = None
    info = await js.update_stream(cfg)
    assert (info.config.republish is not None) is on


@pytest.fixture
async def js(nc: NATS, settings: Settings) -> JetStreamContext:
    js = nc.jetstream()
    await provision(js, settings)
    return js


@pytest.fixture
def producer(js: JetStreamContext, settings: Settings) -> Producer:
    return Producer(js, settings)


# --- Direct Get ------------------------------------------------------------------------------


async def test_direct_get_batch_returns_a_batch_and_what_is_left(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    sent = []
    for _ in range(30):
        sent.append(await producer.emit("a"))
        await producer.emit("b")  # interleaved: seqs of "a" are not dense
    subject = settings.events_subject("a")
    msgs, pending = await direct_get_batch(nc, settings.stream_name, subject, 1, batch=10)
    assert [m.seq for m in msgs] == [e.seq for e in sent[:10]]
    assert pending == 20
    assert msgs[3].headers["Genjobs-Index"] == "3"
    assert msgs[3].data == sent[3].data
    msgs, pending = await direct_get_batch(nc, settings.stream_name, subject, sent[25].seq, 10)
    assert [m.seq for m in msgs] == [e.seq for e in sent[25:]]
    assert pending == 0
    assert await direct_get_batch(nc, settings.stream_name, subject, sent[-1].seq + 1) == ([], 0)
    assert await last_seq_for_subject(nc, settings.stream_name, subject) == sent[-1].seq
    empty = settings.events_subject("nobody")
    assert await last_seq_for_subject(nc, settings.stream_name, empty) == 0


async def test_direct_get_batch_is_not_capped_by_max_request_batch(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    """nats.conf sets max_request_batch 1000; it limits pull consumers, not Direct Get."""
    subject = settings.events_subject("big")
    for _ in range(1200):
        await js.publish_async(subject, b"{}", headers={"Genjobs-Kind": "step"})
    await js.publish_async_completed()
    msgs, pending = await direct_get_batch(nc, settings.stream_name, subject, 1, batch=1100)
    assert (len(msgs), pending) == (1100, 100)


async def test_direct_get_uses_one_subscription_per_connection(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("a", 5)
    await last_seq_for_subject(nc, settings.stream_name, settings.events_subject("a"))
    subs_before = len(nc._subs)
    results = await asyncio.gather(
        *(
            direct_get_batch(nc, settings.stream_name, settings.events_subject("a"), s, 2)
            for s in range(1, 40)
        )
    )
    assert len(nc._subs) == subs_before
    assert all(len(msgs) <= 2 for msgs, _ in results)
    assert [m.seq for m in results[0][0]] == [1, 2]


async def test_direct_get_errors_are_clear(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    with pytest.raises(DirectGetError, match="503"):
        await direct_get_batch(nc, "NO_SUCH_STREAM", "x.y", 1)

    async def silent(msg: Msg) -> None:
        """A responder that never answers: the request must time out, not hang."""

    sub = await nc.subscribe("$JS.API.DIRECT.GET.SILENT", cb=silent)
    with pytest.raises(ReplayTimeout, match=r"x\.y from seq 7"):
        await direct_get_batch(nc, "SILENT", "x.y", 7, timeout=0.2)
    await sub.unsubscribe()


# --- Reader: replay and live -----------------------------------------------------------------


async def test_reader_starting_at_every_sequence_of_a_finished_job_gets_exactly_the_rest(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    for i in range(49):
        await producer.emit("job")
        if i % 3 == 0:
            await producer.emit("other")  # another job's events in between
    final = await producer.emit("job", "final")
    await producer.emit("other")
    async with LiveHub(nc, settings) as hub:
        for cut in range(final.seq):
            got = await read_all(hub, "job", after_seq=cut, timeout=WAIT)
            assert got == producer.after("job", cut), f"cut {cut}"
        assert hub.subscriptions() == 0
        whole = await read_all(hub, "job", timeout=WAIT)
    assert [e.index for e in whole] == list(range(50))
    assert [e.kind for e in whole] == ["step"] * 49 + ["final"]
    assert whole[0].event == {"event": "on_message_delta", "i": 0, "job": "job"}
    assert whole[-1].event == {"final": True, "job": "job"}


async def test_replayed_events_read_kind_and_index_whatever_the_header_layout(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    """Genjobs writes kind then index first (the reader's fast path); any other layout, as
    another writer might produce, must read the same."""
    subject = settings.events_subject("layout")
    layouts = [
        {"Genjobs-Kind": "step", "Genjobs-Index": "0"},
        {"Genjobs-Index": "1", "Genjobs-Kind": "step"},
        {"X-Other": "x", "Genjobs-Kind": "step", "Genjobs-Index": "2"},
        {"Genjobs-Kind": "step", "Genjobs-Index": "not a number"},
        {"Genjobs-Kind": "final", "Genjobs-Index": "4"},
    ]
    for headers in layouts:
        await js.publish(subject, b"{}", headers=dict(headers))
    async with LiveHub(nc, settings) as hub:
        got = await read_all(hub, "layout", timeout=WAIT)
    assert [(e.kind, e.index) for e in got] == [
        ("step", 0),
        ("step", 1),
        ("step", 2),
        ("step", -1),
        ("final", 4),
    ]


async def test_subscribe_refuses_ids_that_could_inject_subjects(
    nc: NATS, settings: Settings
) -> None:
    hub = LiveHub(nc, settings)
    for bad in ("a.b", "*", ">", "a b", "", "x" * 129):
        with pytest.raises(ValueError, match="invalid job id"):
            hub.subscribe(bad)
    with pytest.raises(ValueError, match="after_seq"):
        hub.subscribe("ok", after_seq=-1)


async def test_reader_joining_mid_stream_follows_live_until_terminal(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    halfway = asyncio.Event()

    async def publish() -> None:
        for i in range(300):
            await producer.emit("job")
            if i == 100:
                halfway.set()
        await producer.emit("job", "final")

    async with LiveHub(nc, settings) as hub, asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        tg.create_task(publish())
        await halfway.wait()
        mid = producer.sent["job"][50].seq
        from_start = tg.create_task(read_all(hub, "job", 0, WAIT))
        from_mid = tg.create_task(read_all(hub, "job", mid, WAIT))
    assert from_start.result() == producer.sent["job"]
    assert from_mid.result() == producer.after("job", mid)
    assert from_start.result()[-1].terminal


async def test_reader_of_a_job_without_events_waits_for_the_first(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    async with LiveHub(nc, settings) as hub, hub.subscribe("new") as reader:
        first = asyncio.ensure_future(anext(reader))
        await producer.emit("new")
        async with asyncio.timeout(WAIT):
            assert await first == producer.sent["new"][0]
            await producer.emit("new", "final")
            assert [ev async for ev in reader] == producer.sent["new"][1:]


async def test_reader_after_seq_beyond_end_waits_for_new_events(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("job", 5)
    beyond = producer.last["job"] + 20
    async with LiveHub(nc, settings) as hub, hub.subscribe("job", after_seq=beyond) as reader:
        pending = asyncio.ensure_future(anext(reader))
        done, _ = await asyncio.wait({pending}, timeout=0.3)
        assert not done, "nothing after the cut exists yet"
        await producer.emit_many("other", 25)  # the stream moves past the cut
        later = await producer.emit_many("job", 3)
        await producer.emit("job", "final")
        async with asyncio.timeout(WAIT):
            assert await pending == later[0]
            assert [ev async for ev in reader] == producer.after("job", later[0].seq)
        assert all(ev.seq > beyond for ev in producer.after("job", beyond))


async def test_reader_resuming_right_after_the_terminal_event_ends_at_once(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("job", 3)
    final = await producer.emit("job", "final")
    await producer.emit("other")  # the stream goes on: only the job's own end counts
    async with LiveHub(nc, settings, idle_check=60) as hub:
        assert await read_all(hub, "job", after_seq=final.seq, timeout=WAIT) == []
        assert await read_all(hub, "job", after_seq=final.seq - 1, timeout=WAIT) == [final]


async def test_many_readers_share_one_subscription_per_job(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    presence: list[tuple[str, str]] = []

    async def first(job: str) -> None:
        presence.append(("first", job))

    async def left(job: str) -> None:
        presence.append(("left", job))

    jobs = ["j0", "j1", "j2"]
    hub = LiveHub(nc, settings, on_first_reader=first, on_last_reader_left=left)
    await last_seq_for_subject(nc, settings.stream_name, "warm.up")  # the connection-wide client
    subs_before = len(nc._subs)
    all_in = asyncio.Event()
    entered = 0

    async def read(job: str) -> list[ReadEvent]:
        nonlocal entered
        async with hub.subscribe(job) as reader:
            entered += 1
            if entered == 60:
                all_in.set()
            return [ev async for ev in reader]

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        tasks = {job: [tg.create_task(read(job)) for _ in range(20)] for job in jobs}
        await all_in.wait()
        assert hub.subscriptions() == 3
        assert len(nc._subs) - subs_before == 3  # one core subscription per job, not per reader
        assert [hub.watchers(j) for j in jobs] == [20, 20, 20]
        for job in jobs:
            await producer.emit_many(job, 10)
            await producer.emit(job, "final")
    for job in jobs:
        assert all(t.result() == producer.sent[job] for t in tasks[job])
    assert hub.subscriptions() == 0
    assert len(nc._subs) == subs_before
    assert [hub.watchers(j) for j in jobs] == [0, 0, 0]
    assert sorted(presence) == sorted([("first", j) for j in jobs] + [("left", j) for j in jobs])
    await hub.close()


# --- Loss, slowness, reconnects ----------------------------------------------------------------


async def test_gap_in_live_delivery_is_filled_from_the_stream(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    await producer.emit_many("job", 3)
    async with LiveHub(nc, settings, idle_check=60) as hub, hub.subscribe("job") as reader:
        async with asyncio.timeout(WAIT):
            got = [await anext(reader) for _ in range(3)]
            await producer.emit("job")  # live
            got.append(await anext(reader))
            await set_republish(js, settings, on=False)
            await producer.emit_many("job", 4)  # stored, never delivered live
            await set_republish(js, settings, on=True)
            await producer.emit("job")  # its Nats-Last-Sequence reveals the gap
            await producer.emit("job", "final")
            got += [ev async for ev in reader]
    assert got == producer.sent["job"]


async def test_lost_terminal_event_is_found_by_the_idle_check(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    await producer.emit_many("job", 2)
    async with LiveHub(nc, settings, idle_check=0.2) as hub, hub.subscribe("job") as reader:
        async with asyncio.timeout(WAIT):
            got = [await anext(reader) for _ in range(2)]
            await set_republish(js, settings, on=False)
            await producer.emit("job", "final")  # no live message will ever say so
            got += [ev async for ev in reader]
    assert got == producer.sent["job"]
    assert got[-1].kind == "final"


async def test_on_reconnected_makes_every_reader_resync(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    await producer.emit("a")
    await producer.emit("b")
    hub = LiveHub(nc, settings, idle_check=60)
    async with hub, hub.subscribe("a") as ra, hub.subscribe("b") as rb, asyncio.timeout(WAIT):
        assert [await anext(ra), await anext(rb)] == [
            producer.sent["a"][0],
            producer.sent["b"][0],
        ]
        await set_republish(js, settings, on=False)
        await producer.emit("a", "final")  # lost live, as during a disconnect
        await producer.emit("b", "final")
        hub.on_reconnected()
        assert [ev async for ev in ra] == producer.sent["a"][1:]
        assert [ev async for ev in rb] == producer.sent["b"][1:]


async def test_slow_reader_does_not_grow_memory_and_can_resume(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    settings = settings.with_(reader_queue=40)
    producer.s = settings
    hub = LiveHub(nc, settings, idle_check=60)
    async with hub.subscribe("job") as slow, hub.subscribe("job") as fast:
        async with asyncio.timeout(WAIT):
            await producer.emit("job")
            assert await anext(slow) == producer.sent["job"][0]  # then it stops reading
            fast_got: list[ReadEvent] = []

            async def read_fast() -> None:
                async for ev in fast:
                    fast_got.append(ev)
                    assert slow.buffered <= settings.reader_queue
                    assert hub.buffered() <= 2 * settings.reader_queue

            async with asyncio.TaskGroup() as tg:
                tg.create_task(read_fast())
                for _ in range(3 * settings.reader_queue):
                    await producer.emit("job")
                    assert slow.buffered <= settings.reader_queue
                await producer.emit("job", "final")
            # The fast reader has the final event, so the shared callback gave the slow one
            # everything too: it holds no more than its bound and knows it fell behind.
            assert fast_got == producer.sent["job"]
            assert slow.buffered <= settings.reader_queue
            assert slow.catchups >= 1
            rest = [ev async for ev in slow]
    assert rest == producer.sent["job"][1:]  # caught up from the stream: all, once, in order
    cut = producer.sent["job"][57].seq
    assert await read_all(hub, "job", after_seq=cut) == producer.after("job", cut)
    await hub.close()


async def test_readers_get_every_event_once_under_random_live_loss_and_slowness(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    """Property: whatever is lost live and however slow a reader is, each reader gets exactly
    the job's events after its cut, in order. Live loss is real (republish off while storing)."""
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    settings = settings.with_(reader_queue=16)
    producer.s = settings
    jobs = [f"c{i}" for i in range(4)]
    started = {job: asyncio.Event() for job in jobs}
    finished = {job: asyncio.Event() for job in jobs}
    hub = LiveHub(nc, settings, idle_check=0.3)

    progress = asyncio.Event()

    async def publish(job: str) -> None:
        for i in range(120):
            await producer.emit(job)
            progress.set()
            if i == 30:
                started[job].set()
        await producer.emit(job, "final")
        finished[job].set()
        progress.set()

    async def events_published(n: int) -> None:
        for _ in range(n):
            if all(f.is_set() for f in finished.values()):
                return
            progress.clear()
            await progress.wait()

    outages = 0

    async def toggle_live_delivery() -> None:
        """Live delivery goes off for a few events now and then, while the jobs run."""
        nonlocal outages
        while not all(f.is_set() for f in finished.values()):
            await set_republish(js, settings, on=False)
            outages += 1
            await events_published(rng.randint(1, 3))
            await set_republish(js, settings, on=True)
            await events_published(rng.randint(1, 12))

    async def read(job: str, mode: str) -> tuple[int, list[ReadEvent], int]:
        if mode != "from-start":
            await started[job].wait()
        cut = 0 if mode != "mid" else rng.choice(producer.sent[job]).seq
        got: list[ReadEvent] = []
        async with hub.subscribe(job, after_seq=cut) as reader:
            async for ev in reader:
                got.append(ev)
                if mode == "slow" and len(got) == 1:
                    await finished[job].wait()  # stop reading while the job runs on
        return cut, got, reader.catchups

    async with asyncio.timeout(30), asyncio.TaskGroup() as tg:
        readers = [
            tg.create_task(read(job, mode))
            for job in jobs
            for mode in ("from-start", "mid", "slow", "slow")
        ]
        for job in jobs:
            tg.create_task(publish(job))
        tg.create_task(toggle_live_delivery())
    for task, (job, mode) in zip(
        readers, [(j, m) for j in jobs for m in ("from-start", "mid", "slow", "slow")], strict=True
    ):
        cut, got, catchups = task.result()
        assert got == producer.after(job, cut), f"seed {seed}: {job} {mode} from {cut}"
        assert catchups > 0 or mode != "slow"  # the slow ones really overflowed their queue
    assert outages > 0
    assert hub.subscriptions() == 0
    await hub.close()


async def test_reader_resyncs_after_a_real_reconnect(tmp_path, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """The server restarts; another connection publishes the rest before or while the reader's
    connection comes back, so those live messages are lost for the reader."""
    srv = EmbeddedServer(tmp_path, port=-1, name="reconnect-test")
    url = srv.start()
    port = srv.port
    reconnected = asyncio.Event()
    hub: LiveHub | None = None

    async def on_reconnect() -> None:
        assert hub is not None
        hub.on_reconnected()
        reconnected.set()

    reader_nc = await nats.connect(url, reconnected_cb=on_reconnect, reconnect_time_wait=1.0)
    try:
        async with await nats.connect(url) as pub_nc:
            producer = Producer(pub_nc.jetstream(), settings)
            await provision(pub_nc.jetstream(), settings)
            await producer.emit_many("job", 3)
        hub = LiveHub(reader_nc, settings, idle_check=60)
        async with hub.subscribe("job") as reader, asyncio.timeout(WAIT):
            got = [await anext(reader) for _ in range(3)]
            srv.kill()
            # Same port, same store: the stream survives and both connections come back.
            srv = EmbeddedServer(tmp_path, port=port, name="reconnect-test")
            assert await asyncio.to_thread(srv.start) == url
            async with await nats.connect(url) as pub_nc:
                producer.js = pub_nc.jetstream()
                await producer.emit_many("job", 5)
                await producer.emit("job", "final")
            got += [ev async for ev in reader]
            await reconnected.wait()
        assert got == producer.sent["job"]
        assert reader_nc.stats["reconnects"] >= 1
        await hub.close()
    finally:
        await reader_nc.close()
        srv.stop()


# --- Lifecycle -----------------------------------------------------------------------------------


async def test_hub_close_leaves_no_task(nc: NATS, settings: Settings, producer: Producer) -> None:
    await producer.emit("job")
    await last_seq_for_subject(nc, settings.stream_name, "warm.up")  # the connection-wide client
    baseline = asyncio.all_tasks()
    hub = LiveHub(nc, settings, idle_check=60)
    ready = asyncio.Event()
    opened = 0
    errors: list[HubClosed] = []

    async def read(job: str) -> None:
        nonlocal opened
        try:
            async with hub.subscribe(job) as reader:
                if job == "job":
                    await anext(reader)  # the one stored event, then wait for more
                opened += 1
                if opened == 3:
                    ready.set()
                async for _ in reader:
                    raise AssertionError("no event was published")
        except HubClosed as e:
            errors.append(e)

    async with asyncio.timeout(WAIT), asyncio.TaskGroup() as tg:
        readers = {tg.create_task(read(job)) for job in ("job", "job", "idle")}
        await ready.wait()
        await hub.close()
        # Checked at once, not after the readers finished: close() itself leaves nothing.
        left = {t for t in asyncio.all_tasks() - baseline - readers if not t.done()}
        assert left == set(), left
    last = producer.last["job"]
    assert sorted((e.job_id, e.last_seq) for e in errors) == [
        ("idle", 0),
        ("job", last),
        ("job", last),
    ]
    assert hub.subscriptions() == 0
    assert hub.watchers("job") == 0
    with pytest.raises(HubClosed):
        async with hub.subscribe("job"):
            pass


async def test_late_reader_replays_5000_events_quickly(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    subject = settings.events_subject("long")
    for i in range(5000):
        kind = "final" if i == 4999 else "step"
        headers = {"Genjobs-Kind": kind, "Genjobs-Index": str(i)}
        await js.publish_async(subject, b'{"event":"on_message_delta","data":{}}', headers=headers)
    await js.publish_async_completed()
    async with LiveHub(nc, settings) as hub:
        t0 = time.perf_counter()
        got = await read_all(hub, "long", timeout=WAIT)
        elapsed = time.perf_counter() - t0
    assert [ev.index for ev in got] == list(range(5000))
    assert elapsed < 1.0, f"replay of 5,000 events took {elapsed * 1000:.0f} ms"


async def test_reader_rides_out_a_stream_without_responders_then_reads_everything(
    nc: NATS, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 (no stream leader during an election or a lost quorum; here: the stream does not
    exist yet) is retried within the outage budget, as a job's publishes are: the reader waits,
    then gets every event once, in order."""
    s = settings.with_(publish_outage_budget=30.0)
    async with LiveHub(nc, s) as hub, hub.subscribe("late") as reader:
        first = asyncio.create_task(anext(reader))

        async def retrying() -> bool:
            return any("into the outage" in r.getMessage() for r in caplog.records)

        await wait_for(retrying, timeout=10)
        assert not first.done()
        js = nc.jetstream()
        await provision(js, s)  # the stream is back
        producer = Producer(js, s)
        sent = [*await producer.emit_many("late", 3), await producer.emit("late", "final")]
        got = [await asyncio.wait_for(first, 10)]
        got.extend([ev async for ev in reader])
    assert [(e.seq, e.index, e.kind) for e in got] == [(e.seq, e.index, e.kind) for e in sent]


async def test_reader_gives_up_when_the_outage_outlasts_the_budget(
    nc: NATS, settings: Settings
) -> None:
    s = settings.with_(publish_outage_budget=0.6)
    async with LiveHub(nc, s) as hub, hub.subscribe("never") as reader:
        t0 = time.monotonic()
        with pytest.raises(DirectGetError, match="503"):
            await asyncio.wait_for(anext(reader), 10)
        assert time.monotonic() - t0 >= 0.6  # retried for the whole budget, not given up at once


async def test_idle_check_is_one_per_job_however_many_readers_wait(
    nc: NATS, settings: Settings, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """100 idle readers on each of two jobs: one idle timer and one Direct Get per job and
    interval, not one per reader (before: 100 timers per job, and a Direct Get per reader
    every half interval). Intervals are counted by the jobs' timers, not by a clock."""
    from service.client import reader as reader_mod

    fires: dict[str, int] = {"quiet1": 0, "quiet2": 0}
    asks: dict[str, int] = {"quiet1": 0, "quiet2": 0}
    checks = 0
    enough = asyncio.Event()
    on_idle = reader_mod._Feed._on_idle
    last_msg = LiveHub._last_msg
    idle_check = reader_mod.Reader._idle_check

    def counting_on_idle(self: reader_mod._Feed) -> None:
        fires[self.job_id] += 1
        on_idle(self)

    async def counting_last_msg(self: LiveHub, job_id: str) -> object:
        asks[job_id] += 1
        if min(asks.values()) >= 20:
            enough.set()
        return await last_msg(self, job_id)

    async def counting_check(self: reader_mod.Reader) -> None:
        nonlocal checks
        checks += 1
        await idle_check(self)

    monkeypatch.setattr(reader_mod._Feed, "_on_idle", counting_on_idle)
    monkeypatch.setattr(LiveHub, "_last_msg", counting_last_msg)
    monkeypatch.setattr(reader_mod.Reader, "_idle_check", counting_check)
    async with LiveHub(nc, settings, idle_check=0.05) as hub, contextlib.AsyncExitStack() as stack:
        readers = [
            await stack.enter_async_context(hub.subscribe(job))
            for job in ("quiet1", "quiet2")
            for _ in range(100)
        ]
        async with asyncio.TaskGroup() as tg:
            waiting = [tg.create_task(anext(r)) for r in readers]
            async with asyncio.timeout(WAIT):
                await enough.wait()
            for w in waiting:
                w.cancel()
    for job in fires:
        # Replays are batch gets: every last-message get is an idle check, at most one per
        # firing of the job's timer (none after a firing that saw live messages).
        assert 20 <= asks[job] <= fires[job], (job, asks, fires)
    assert checks <= sum(fires.values()), (checks, fires)


async def test_lost_terminal_event_reaches_every_idle_reader_of_the_job(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    """One reader checks for all: every one of 50 readers waiting on the job gets the terminal
    event that was never delivered live."""
    await producer.emit_many("job", 2)
    async with LiveHub(nc, settings, idle_check=0.2) as hub, contextlib.AsyncExitStack() as stack:
        readers = [await stack.enter_async_context(hub.subscribe("job")) for _ in range(50)]
        async with asyncio.timeout(WAIT):
            for r in readers:
                assert [await anext(r), await anext(r)] == producer.sent["job"]
            await set_republish(js, settings, on=False)
            await producer.emit("job", "final")  # no live message will ever say so

            async def rest(r: object) -> list[ReadEvent]:
                return [ev async for ev in r]  # type: ignore[attr-defined]

            async with asyncio.TaskGroup() as tg:
                tails = [tg.create_task(rest(r)) for r in readers]
    assert all(t.result() == producer.sent["job"][2:] for t in tails)
    assert producer.sent["job"][-1].kind == "final"


async def test_ready_now_says_whether_the_next_read_returns_at_once(
    nc: NATS, settings: Settings, js: JetStreamContext, producer: Producer
) -> None:
    await producer.emit_many("job", 3)
    async with LiveHub(nc, settings, idle_check=60) as hub, hub.subscribe("job") as reader:
        assert not reader.ready_now()  # the replay request is still to be sent
        async with asyncio.timeout(WAIT):
            first = await anext(reader)
            assert reader.ready_now()  # the rest of the replay batch is here
            rest = [await anext(reader), await anext(reader)]
            assert not reader.ready_now()  # nothing more: the next read waits
            live = await producer.emit("job")

            async def arrived() -> bool:
                return reader.ready_now()  # the live message reached the reader's queue

            await wait_for(arrived, timeout=WAIT)
            assert await anext(reader) == live
    assert [first, *rest] == producer.sent["job"][:3]
