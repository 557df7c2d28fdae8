"""Durable reader sessions (docs/protocol.md, Durable reader sessions) against a real nats-server.

Events are published here the way the owner actor publishes them: one message per event on the
job's subject with ``Genjobs-Kind`` and ``Genjobs-Index``. Unless a test says otherwise, every
event is followed by one of another job, so stream sequences of a job are not contiguous and the
subject filter of every read and Direct Get is exercised.
"""

from __future__ import annotations

import asyncio
import json
import re

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from service.client.sessions import (
    DurableSession,
    InvalidSessionId,
    NotDelivered,
    SessionClosed,
    SessionEvent,
    SessionNotFound,
    SessionStore,
    session_consumer_name,
)
from service.config import Settings
from service.nats.provision import provision


@pytest.fixture
async def js(nc: NATS, settings: Settings) -> JetStreamContext:
    js = nc.jetstream()
    await provision(js, settings)
    return js


async def publish_events(
    js: JetStreamContext,
    settings: Settings,
    job_id: str,
    kinds: list[str],
    *,
    start_index: int = 0,
    noise: bool = True,
    pad: int = 0,
) -> list[SessionEvent]:
    """Publish one event per kind; return them as a session should see them."""
    expected = []
    for offset, kind in enumerate(kinds):
        index = start_index + offset
        data = json.dumps({"event": kind, "index": index, "pad": "x" * pad}).encode()
        # A fresh dict per publish: js.publish mutates the headers it is given.
        headers = {"Genjobs-Kind": kind, "Genjobs-Index": str(index)}
        ack = await js.publish(settings.events_subject(job_id), data, headers=headers)
        expected.append(SessionEvent(seq=ack.seq, index=index, kind=kind, data=data))
        if noise:
            other = {"Genjobs-Kind": "step", "Genjobs-Index": str(index)}
            await js.publish(settings.events_subject(job_id + "-noise"), b"{}", headers=other)
    return expected


async def read_until(count: int, session: DurableSession) -> list[SessionEvent]:
    """Read until ``count`` events came (redeliveries arrive when the ack wait runs out)."""
    got: list[SessionEvent] = []
    async with asyncio.timeout(10):
        while len(got) < count:
            got += await session.read(max_events=100, timeout=0.5)
    return got


async def test_durable_session_reads_acknowledges_crashes_lists_pending_resumes_and_is_deleted(
    nats_url: str, nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-crash"
    events = await publish_events(js, settings, job, ["created", "step", "step", "step", "step"])

    # First process: a long ack wait, so nothing is redelivered while it works.
    first_nc = await nats.connect(nats_url, name="doomed-reader")
    session = await SessionStore(first_nc, settings).open(job, "tab-1")
    assert await session.read(max_events=3) == events[:3]
    await session.ack(events[0].seq)
    assert await session.read(max_events=10) == events[3:]
    # Crash: no close(), the object is dropped and its connection goes away.
    del session
    await first_nc.close()

    # New process. Opening applies its settings (a 1 s ack wait) to the existing session.
    store = SessionStore(nc, settings.with_(session_ack_wait=1.0))
    async with await store.open(job, "tab-1") as session:
        assert not session.finished
        assert await session.pending() == events[1:]
        info = await session.info()
        assert (info.ack_floor_seq, info.delivered_seq) == (events[0].seq, events[-1].seq)
        assert info.num_ack_pending == 4
        assert info.num_pending == 0

        # Acknowledge an event the crashed process received, before it is redelivered.
        await session.ack(events[1].seq)
        assert await session.pending() == events[2:]

        # The rest comes again once the ack wait runs out, in order, and only the rest.
        redelivered = await read_until(3, session)
        assert redelivered == events[2:]
        await session.ack_many(e.seq for e in redelivered)
        assert await session.pending() == []
        assert (await session.info()).num_ack_pending == 0

        final = await publish_events(js, settings, job, ["final"], start_index=5)
        got: list[SessionEvent] = []
        async with asyncio.timeout(10):
            while not session.finished:
                got += await session.read(timeout=0.5)
        assert got == final
        await session.ack(final[0].seq)
        assert (await session.info()).ack_floor_seq == final[0].seq

    assert await store.delete(job, "tab-1") is True
    assert await store.exists(job, "tab-1") is False
    assert await store.delete(job, "tab-1") is False


async def test_read_returns_only_events_not_yet_delivered(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-unseen"
    events = await publish_events(js, settings, job, ["created", "step", "step"])
    async with await SessionStore(nc, settings).open(job, "r") as session:
        assert await session.read() == events
        later = await publish_events(js, settings, job, ["step", "final"], start_index=3)
        # Nothing acknowledged and nothing redelivered yet (30 s ack wait): only the new ones.
        assert await session.read() == later
        assert session.finished
        assert await session.pending() == events + later


async def test_read_with_nothing_new_returns_an_empty_list_after_the_timeout(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    loop = asyncio.get_running_loop()
    async with await SessionStore(nc, settings).open("job-idle", "r") as session:
        started = loop.time()
        assert await session.read(timeout=0.3) == []  # a job without any event yet
        assert loop.time() - started >= 0.25
        events = await publish_events(js, settings, "job-idle", ["created"])
        assert await session.read(timeout=0.3) == events
        assert await session.read(timeout=0.3) == []  # everything already delivered


async def test_two_sessions_on_the_same_job_are_independent(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-shared"
    events = await publish_events(js, settings, job, ["created", "step", "final"])
    store = SessionStore(nc, settings)
    async with await store.open(job, "a") as a, await store.open(job, "b") as b:
        assert a.consumer != b.consumer
        assert await a.read() == events
        await a.ack(events[-1].seq)
        assert a.finished
        assert not b.finished

        assert await b.read() == events  # a's reading and acknowledging did not move b
        assert await a.pending() == []
        assert await b.pending() == events
        assert (await a.info()).ack_floor_seq == events[-1].seq
        assert (await b.info()).ack_floor_seq == 0

        assert await store.delete(job, "a") is True
        assert await store.exists(job, "b") is True
        assert await b.pending() == events


async def test_same_session_name_on_different_jobs_never_collides(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    # ("a_b", "c") and ("a", "b_c") would both be "a_b_c" with a plain "_" join.
    first = await publish_events(js, settings, "a_b", ["created"], noise=False)
    second = await publish_events(js, settings, "a", ["created", "step"], noise=False)
    store = SessionStore(nc, settings)
    async with await store.open("a_b", "c") as s1, await store.open("a", "b_c") as s2:
        assert s1.consumer != s2.consumer
        assert await s1.read() == first
        assert await s2.read() == second


def test_consumer_names_are_deterministic_valid_and_collision_free() -> None:
    valid = re.compile(r"[A-Za-z0-9_-]{1,255}")  # no '.', '*', '>', whitespace, path separators
    long_job, long_name = "j" * 128, "n" * 128
    cases = [("a_b", "c"), ("a", "b_c"), ("job", "tab"), (long_job, long_name), (long_job, "m")]
    names = [session_consumer_name(j, n) for j, n in cases]
    assert len(set(names)) == len(names)
    assert all(valid.fullmatch(n) for n in names)
    assert session_consumer_name("job", "tab") == "sess_3_job_tab"  # readable when short
    assert session_consumer_name(long_job, long_name) == session_consumer_name(long_job, long_name)
    assert session_consumer_name(long_job, long_name).startswith("sess_h_")


@pytest.mark.parametrize(
    ("job_id", "name", "field"),
    [
        ("job.1", "tab", "job_id"),
        ("job", "tab.1", "name"),
        ("job*", "tab", "job_id"),
        ("job", ">", "name"),
        ("", "tab", "job_id"),
        ("job", "", "name"),
        ("j" * 129, "tab", "job_id"),
        ("job", "n" * 129, "name"),
        ("job 1", "tab", "job_id"),
        ("job\n", "tab", "job_id"),  # a trailing newline passes a naive match(r"...$")
        ("jöb", "tab", "job_id"),
        ("job", "tab/1", "name"),
    ],
)
async def test_invalid_ids_are_refused_without_touching_the_server(
    nats_url: str, settings: Settings, job_id: str, name: str, field: str
) -> None:
    # A closed connection: any request would fail with SessionUnavailable, not InvalidSessionId.
    conn = await nats.connect(nats_url)
    await conn.close()
    store = SessionStore(conn, settings)
    with pytest.raises(InvalidSessionId) as err:
        await store.open(job_id, name)
    assert err.value.field == field
    assert err.value.code == "invalid_id"  # the service API's error code, for free
    with pytest.raises(InvalidSessionId):
        await store.exists(job_id, name)
    with pytest.raises(InvalidSessionId):
        await store.delete(job_id, name)


async def watch_removal(nc: NATS, settings: Settings, job_id: str, name: str) -> Subscription:
    """Subscribe to the server's consumer-deleted advisory for one session, before it can fire."""
    consumer = session_consumer_name(job_id, name)
    return await nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.DELETED.{settings.stream_name}.{consumer}"
    )


async def removed_by_server(watch: Subscription, within: float) -> str:
    """Wait for the advisory (an event, not a poll or a fixed sleep); the consumer it names."""
    try:
        async with asyncio.timeout(within):
            advisory = await watch.next_msg(timeout=None)
    finally:
        await watch.unsubscribe()
    return str(json.loads(advisory.data)["consumer"])


async def test_abandoned_session_is_removed_by_the_server_after_its_inactivity_threshold(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-abandoned"
    events = await publish_events(js, settings, job, ["created", "step"])
    store = SessionStore(nc, settings.with_(session_inactive=1.0))
    watch = await watch_removal(nc, settings, job, "gone")
    async with await store.open(job, "gone") as session:
        assert await session.read() == events
        await session.ack(events[-1].seq)
    assert await store.exists(job, "gone")
    assert await removed_by_server(watch, within=15) == session.consumer
    assert await store.exists(job, "gone") is False
    # Gone means gone: opening again starts from the first event.
    async with await store.open(job, "gone") as session:
        assert await session.read() == events


async def test_abandoned_session_with_unacknowledged_events_is_removed_after_its_ack_wait_too(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    # nats-server 2.15 keeps a consumer while deliveries are outstanding: measured, removal comes
    # about two ack waits plus the threshold after the last read. Short timings keep it quick.
    job = "job-abandoned-unacked"
    events = await publish_events(js, settings, job, ["created", "step"])
    store = SessionStore(nc, settings.with_(session_inactive=1.0, session_ack_wait=1.0))
    watch = await watch_removal(nc, settings, job, "gone")
    async with await store.open(job, "gone") as session:
        assert await session.read() == events
    assert await removed_by_server(watch, within=20) == session.consumer
    assert await store.exists(job, "gone") is False


async def test_operations_on_a_deleted_session_raise_session_not_found(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-deleted"
    events = await publish_events(js, settings, job, ["created"])
    store = SessionStore(nc, settings)
    async with await store.open(job, "r") as session:
        assert await store.delete(job, "r") is True
        with pytest.raises(SessionNotFound):
            await session.read(timeout=0.3)
        with pytest.raises(SessionNotFound):
            await session.pending()
        with pytest.raises(SessionNotFound):
            await session.ack(events[0].seq)
        with pytest.raises(SessionNotFound) as err:
            await session.info()
        assert (err.value.job_id, err.value.name) == (job, "r")
        assert err.value.code == "not_found"


async def test_ack_acknowledges_every_earlier_event_of_the_session(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-cursor"
    events = await publish_events(js, settings, job, ["created", "step", "step", "step"])
    async with await SessionStore(nc, settings).open(job, "r") as session:
        assert await session.read() == events
        await session.ack(events[2].seq)
        assert await session.pending() == events[3:]
        await session.ack(events[0].seq)  # already below the floor: no-op
        await session.ack_many([])  # nothing to acknowledge
        assert (await session.info()).ack_floor_seq == events[2].seq
        await session.ack_many([events[3].seq, events[1].seq])
        assert await session.pending() == []


async def test_acknowledging_an_undelivered_event_is_refused(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-early"
    events = await publish_events(js, settings, job, ["created", "step", "step"])
    async with await SessionStore(nc, settings).open(job, "r") as session:
        assert await session.read(max_events=1) == events[:1]
        with pytest.raises(NotDelivered) as err:
            await session.ack(events[2].seq)
        assert (err.value.seq, err.value.delivered_seq) == (events[2].seq, events[0].seq)
        assert await session.pending() == events[:1]
        assert await session.read() == events[1:]  # the refused ack skipped nothing


async def test_ack_lands_after_a_partial_redelivery_reordered_deliveries(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    # JetStream's AckAll ignores an ack whose delivery sequence is not above the floor's. Here
    # event 0 is redelivered (delivery 4) and acknowledged while event 1 still carries delivery 2:
    # a plain ack of event 1 would be dropped by the server.
    job = "job-reorder"
    events = await publish_events(js, settings, job, ["created", "step", "step"])
    store = SessionStore(nc, settings.with_(session_ack_wait=1.0))
    async with await store.open(job, "r") as session:
        assert await session.read() == events
        async with asyncio.timeout(10):
            first: list[SessionEvent] = []
            while not first:
                first = await session.read(max_events=1, timeout=0.5)
        # The server picks which outstanding event comes back first (usually event 0).
        assert first[0] in events
        await session.ack(first[0].seq)
        await session.ack(events[1].seq)  # may carry an older delivery number than the floor's
        floor = max(first[0].seq, events[1].seq)
        assert (await session.info()).ack_floor_seq == floor
        assert await session.pending() == [e for e in events if e.seq > floor]


async def test_reopened_session_whose_terminal_event_was_delivered_is_finished(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    job = "job-done"
    events = await publish_events(js, settings, job, ["created", "step", "final"])
    store = SessionStore(nc, settings)
    async with await store.open(job, "r") as session:
        assert not session.finished
        assert await session.read() == events
        await session.ack(events[0].seq)
    async with await store.open(job, "r") as session:
        assert session.finished
        assert await session.read(timeout=0.3) == []
        assert await session.pending() == events[1:]


async def test_pending_lists_backlogs_larger_than_one_direct_get_page(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    # 1,200 events of ~4 KiB: more than one page by count (1,000) and by bytes (4 MiB).
    job = "job-backlog"
    kinds = ["created"] + ["step"] * 1199
    events = await publish_events(js, settings, job, kinds, noise=False, pad=4096)
    async with await SessionStore(nc, settings, max_ack_pending=2000).open(job, "r") as session:
        first = await session.read(max_events=5000)
        assert len(first) == 1000  # one read is capped at the server's max_request_batch
        rest = await session.read(max_events=5000)
        assert first + rest == events
        assert await session.pending() == events


async def test_events_without_genjobs_headers_are_read_not_rejected(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    ack = await js.publish(settings.events_subject("job-foreign"), b'{"x":1}')
    async with await SessionStore(nc, settings).open("job-foreign", "r") as session:
        assert await session.read() == [
            SessionEvent(seq=ack.seq, index=-1, kind="", data=b'{"x":1}')
        ]


async def test_a_closed_session_object_refuses_work_but_the_session_stays(
    nc: NATS, js: JetStreamContext, settings: Settings
) -> None:
    store = SessionStore(nc, settings)
    session = await store.open("job-closed", "r")
    await session.close()
    await session.close()  # idempotent
    with pytest.raises(SessionClosed):
        await session.read(timeout=0.3)
    with pytest.raises(SessionClosed):
        await session.pending()
    assert await store.exists("job-closed", "r") is True
