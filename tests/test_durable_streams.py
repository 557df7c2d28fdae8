"""Durable Streams storage properties beyond the conformance suite, against a real nats-server:
several gateways on one stream, lost responses and lost acks, recreation, fork collection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import nats
import pytest
from aiohttp import web
from msgspec.structs import replace

from service.config import Settings
from service.http.durable.access import auth_middleware
from service.http.durable.app import STORE
from service.http.durable.collector import Collector
from service.http.durable.lifecycle import Lifecycle
from service.http.durable.live import Watch, _Topic
from service.http.durable.model import encode, name_key
from service.http.durable.protocol import (
    JsonBodyError,
    format_offset,
    json_body,
    json_fragment,
    parse_offset,
)
from service.http.durable.standalone import start_site
from service.http.durable.storage import DurableStore
from service.nats.provision import ProvisionMismatch, provision_durable
from service.nats.publisher import PublishTimeout

TEXT = {"Content-Type": "text/plain"}


@asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[tuple[str, DurableStore]]:
    """One Durable Streams app on its own NATS connection (as a separate gateway process)."""
    nc = await nats.connect(settings.nats_url or "", name="ds-gateway")
    runner, url = await start_site(nc, settings)
    try:
        apps = [a for a in runner.app._subapps]
        yield url + "/v1/stream/", apps[0][STORE]
    finally:
        await runner.cleanup()
        await nc.drain()


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[tuple[str, str, DurableStore, DurableStore]]:
    s = settings.with_(long_poll_timeout=2.0)
    async with gateway(s) as (a, store_a), gateway(s) as (b, store_b):
        yield a, b, store_a, store_b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def read_all(http: aiohttp.ClientSession, url: str) -> tuple[bytes, str]:
    out = b""
    offset = "-1"
    while True:
        async with http.get(url, params={"offset": offset}) as r:
            assert r.status == 200
            out += await r.read()
            offset = r.headers["Stream-Next-Offset"]
            if r.headers.get("Stream-Up-To-Date") == "true":
                return out, offset


async def test_concurrent_appends_through_two_gateways_are_each_stored_once(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "race", headers=TEXT) as r:
        assert r.status == 201

    async def post(base: str, i: int) -> str:
        async with http.post(base + "race", data=f"<{i}>", headers=TEXT) as r:
            assert r.status == 204, await r.text()
            return r.headers["Stream-Next-Offset"]

    offsets = await asyncio.gather(*(post(a if i % 2 else b, i) for i in range(120)))
    assert len(set(offsets)) == 120  # every acknowledged append has its own offset
    body_a, tail_a = await read_all(http, a + "race")
    body_b, tail_b = await read_all(http, b + "race")
    assert body_a == body_b
    assert tail_a == tail_b == max(offsets)
    pieces = body_a.decode().removeprefix("<").removesuffix(">").split("><")
    assert sorted(pieces, key=int) == [str(i) for i in range(120)]  # each exactly once
    # The order readers see is the offsets' order.
    by_offset = [i for _, i in sorted(zip(offsets, range(120), strict=True))]
    assert pieces == [str(i) for i in by_offset]


async def test_one_producer_alternating_gateways_keeps_its_sequence(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "prod", headers=TEXT) as r:
        assert r.status == 201
    for i in range(20):
        h = {**TEXT, "Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": str(i)}
        async with http.post((a, b)[i % 2] + "prod", data=f"{i},", headers=h) as r:
            assert r.status == 200, await r.text()
    body, _ = await read_all(http, b + "prod")
    assert body.decode() == "".join(f"{i}," for i in range(20))


async def test_producer_retry_after_a_lost_response_is_a_duplicate_on_either_gateway(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "dup", headers=TEXT) as r:
        assert r.status == 201
    h = {**TEXT, "Producer-Id": "w", "Producer-Epoch": "3", "Producer-Seq": "0"}
    # B learns the stream first (its state cache), then A stores seq 0 and seq 1.
    async with http.post(b + "dup", data="zero", headers=h) as r:
        assert r.status == 200
    async with http.post(a + "dup", data="one", headers={**h, "Producer-Seq": "1"}) as r:
        assert r.status == 200
    # The response to seq 1 was "lost": the client retries through B, whose cache is stale.
    async with http.post(b + "dup", data="one", headers={**h, "Producer-Seq": "1"}) as r:
        assert r.status == 204
        assert r.headers["Producer-Seq"] == "1"
    # And seq 2 through B is accepted, not taken for a gap.
    async with http.post(b + "dup", data="two", headers={**h, "Producer-Seq": "2"}) as r:
        assert r.status == 200
    body, _ = await read_all(http, a + "dup")
    assert body == b"zeroonetwo"


async def test_stream_seq_regression_is_refused_on_a_gateway_with_a_stale_cache(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "seq", headers=TEXT) as r:
        assert r.status == 201
    async with http.post(a + "seq", data="1", headers={**TEXT, "Stream-Seq": "001"}) as r:
        assert r.status == 204
    async with http.post(b + "seq", data="2", headers={**TEXT, "Stream-Seq": "005"}) as r:
        assert r.status == 204
    async with http.post(a + "seq", data="3", headers={**TEXT, "Stream-Seq": "003"}) as r:
        assert r.status == 409
    body, _ = await read_all(http, a + "seq")
    assert body == b"12"


async def test_an_append_whose_ack_is_lost_is_found_by_its_id_and_not_stored_twice(
    two: tuple[str, str, DurableStore, DurableStore],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _, store_a, _ = two
    async with http.put(a + "ack", headers=TEXT) as r:
        assert r.status == 201
    real = store_a.publisher.publish_once
    lost = asyncio.Event()

    async def ack_lost(subject: str, payload: bytes, headers: dict[str, str]) -> int:
        seq = await real(subject, payload, headers)  # really stored...
        if not lost.is_set():
            lost.set()
            raise PublishTimeout("ack lost (injected)")  # ...but the ack never arrives
        return seq

    monkeypatch.setattr(store_a.publisher, "publish_once", ack_lost)
    async with http.post(a + "ack", data="once", headers=TEXT) as r:
        assert r.status == 204
        offset = r.headers["Stream-Next-Offset"]
    assert lost.is_set()
    body, tail = await read_all(http, a + "ack")
    assert body == b"once"
    assert tail == offset


async def test_a_recreated_stream_never_shows_the_old_incarnation(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, store_a, _ = two
    async with http.put(a + "again", data="old", headers=TEXT) as r:
        old_tail = r.headers["Stream-Next-Offset"]
    old = await store_a.lookup("again")
    assert old is not None
    async with http.delete(b + "again") as r:
        assert r.status == 204
    async with http.put(b + "again", data="new", headers=TEXT) as r:
        assert r.status == 201
    # Read through the gateway that knew the old incarnation, from the start and from an
    # offset of the old one.
    body, _ = await read_all(http, a + "again")
    assert body == b"new"
    async with http.get(a + "again", params={"offset": old_tail}) as r:
        assert await r.read() == b"new"
    info = await store_a.js.stream_info(store_a.stream, subjects_filter=store_a.subject(old[0].inc))
    assert not info.state.subjects  # the old data is gone, not just hidden


async def test_long_poll_on_one_gateway_wakes_for_an_append_on_the_other(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "wake", headers=TEXT) as r:
        tail = r.headers["Stream-Next-Offset"]

    async def poll() -> bytes:
        async with http.get(a + "wake", params={"offset": tail, "live": "long-poll"}) as r:
            assert r.status == 200
            return await r.read()

    waiting = asyncio.create_task(poll())
    # Append until the poll answers (it may start before or after the first append).
    for i in range(50):
        async with http.post(b + "wake", data=f"x{i}", headers=TEXT) as r:
            assert r.status == 204
        done, _ = await asyncio.wait([waiting], timeout=0.2)
        if done:
            break
    assert (await waiting).startswith(b"x0")


async def test_a_soft_deleted_source_is_collected_with_its_last_fork(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, store_a, _ = two
    async with http.put(a + "root", data="A", headers=TEXT) as r:
        assert r.status == 201
    fork = {**TEXT, "Stream-Forked-From": "/v1/stream/root"}
    async with http.put(b + "kid", headers=fork) as r:
        assert r.status == 201
    got = await store_a.lookup("root")
    assert got is not None
    assert len(got[0].refs) == 1
    root_inc = got[0].inc
    async with http.delete(a + "root") as r:
        assert r.status == 204
    async with http.head(b + "root") as r:
        assert r.status == 410
    body, _ = await read_all(http, a + "kid")
    assert body == b"A"  # the fork still reads the source's data
    async with http.delete(b + "kid") as r:
        assert r.status == 204
    async with http.head(a + "root") as r:
        assert r.status == 404
    info = await store_a.js.stream_info(store_a.stream, subjects_filter=store_a.subject(root_inc))
    assert not info.state.subjects


def test_offsets_sort_as_their_sequences() -> None:
    seqs = [0, 1, 9, 10, 99, 100, 12345678, 10**15]
    offsets = [format_offset(s) for s in seqs]
    assert sorted(offsets) == offsets
    assert [parse_offset(o) for o in offsets] == seqs
    assert parse_offset("-1") is None
    assert parse_offset("0_1") is None


class _NoToken(Exception):
    pass


@dataclass(frozen=True)
class _Who:
    user_id: str
    tenant_id: str | None


async def _identify(request: web.Request) -> _Who:
    user = request.headers.get("X-Test-User")
    if user is None:
        raise _NoToken("no token")
    return _Who(user, request.headers.get("X-Test-Tenant"))


async def test_with_authentication_a_stream_belongs_to_its_creators_tenant_and_user(
    settings: Settings, http: aiohttp.ClientSession
) -> None:
    nc = await nats.connect(settings.nats_url or "", name="ds-auth")
    runner, url = await start_site(nc, settings, middlewares=[auth_middleware(_identify, _NoToken)])
    base = url + "/v1/stream/mine"
    alice = {"X-Test-User": "alice", "X-Test-Tenant": "t1"}
    try:
        async with http.put(base, data="secret", headers={**TEXT, **alice}) as r:
            assert r.status == 201
        async with http.get(base, headers=alice) as r:
            assert r.status == 200
            assert await r.read() == b"secret"
        for other in ({"X-Test-User": "bob", "X-Test-Tenant": "t1"}, {"X-Test-User": "alice"}):
            async with http.get(base, headers=other) as r:
                assert r.status == 403
            async with http.post(base, data="x", headers={**TEXT, **other}) as r:
                assert r.status == 403
            async with http.delete(base, headers=other) as r:
                assert r.status == 403
        async with http.get(base) as r:
            assert r.status == 401
            assert r.headers["X-Content-Type-Options"] == "nosniff"
        async with http.options(base) as r:  # preflights need no token
            assert r.status == 204
    finally:
        await runner.cleanup()
        await nc.drain()


async def test_an_sse_reader_gets_every_append_once_in_order_while_writers_race(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "live", headers=TEXT) as r:
        tail = r.headers["Stream-Next-Offset"]
    total = 300
    received = bytearray()
    connected = asyncio.Event()

    async def sse() -> None:
        async with http.get(a + "live", params={"offset": tail, "live": "sse"}) as r:
            assert r.status == 200
            event = ""
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data:") and event == "data":
                    received.extend(line[5:].encode())
                elif line.startswith("data:") and event == "control":
                    connected.set()
                    if received.count(b">") >= total:
                        return

    reader = asyncio.create_task(sse())
    await asyncio.wait_for(connected.wait(), 10)

    async def writer(k: int) -> None:
        for i in range(total // 30):
            async with http.post(b + "live", data=f"<{k}.{i}>", headers=TEXT) as r:
                assert r.status == 204

    await asyncio.gather(*(writer(k) for k in range(30)))
    await asyncio.wait_for(reader, 30)
    body, _ = await read_all(http, a + "live")
    assert bytes(received) == body  # every append once, in the stream's order
    assert body.count(b">") == total


async def test_appends_racing_a_close_are_stored_before_it_or_refused(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "closing", headers=TEXT) as r:
        assert r.status == 201

    async def post(i: int) -> tuple[int, int, str | None]:
        headers = {**TEXT, "Stream-Closed": "true"} if i == 40 else TEXT
        async with http.post((a, b)[i % 2] + "closing", data=f"<{i}>", headers=headers) as r:
            offset = r.headers.get("Stream-Next-Offset")
            return i, r.status, offset

    results = await asyncio.gather(*(post(i) for i in range(80)))
    close = next(x for x in results if x[0] == 40)
    assert close[1] == 204
    stored = sorted((off, i) for i, status, off in results if status == 204 and off)
    refused = [i for i, status, _ in results if status == 409]
    assert len(stored) + len(refused) == 80
    assert stored[-1] == (close[2], 40)  # the close is the last append
    body, tail = await read_all(http, a + "closing")
    assert tail == close[2]
    assert body.decode() == "".join(f"<{i}>" for _, i in stored)
    async with http.head(b + "closing") as r:
        assert r.headers["Stream-Closed"] == "true"


async def test_the_sweeper_collects_expired_streams_nobody_touches(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, _, store_a, _ = two
    past = "2020-01-01T00:00:00Z"
    async with http.put(a + "old", data="x", headers={**TEXT, "Stream-Expires-At": past}) as r:
        assert r.status == 201
    async with http.put(a + "fresh", headers=TEXT) as r:
        assert r.status == 201
    got = await store_a.lookup("old")
    assert got is not None
    swept = await Collector(Lifecycle(store_a)).sweep()
    assert swept.expired == 1
    assert await store_a.lookup("old") is None
    assert await store_a.lookup("fresh") is not None
    info = await store_a.js.stream_info(store_a.stream, subjects_filter=store_a.subject(got[0].inc))
    assert not info.state.subjects


async def test_provisioning_is_idempotent_and_refuses_other_settings(settings: Settings) -> None:
    nc = await nats.connect(settings.nats_url or "")
    try:
        js = nc.jetstream()
        await provision_durable(js, settings)
        await provision_durable(js, settings)  # again: verified, unchanged
        with pytest.raises(ProvisionMismatch):
            await provision_durable(js, settings.with_(stream_max_bytes=1 << 20))
    finally:
        await nc.drain()


def test_json_bodies_store_their_values_as_sent() -> None:
    assert json_fragment(b' [ {"a": 1} , 2 ]\n', allow_empty=False) == b'{"a": 1} , 2'
    assert json_fragment(b'{"a":[1,2]}', allow_empty=False) == b'{"a":[1,2]}'
    assert json_fragment(b"[[1,2]]", allow_empty=False) == b"[1,2]"
    assert json_fragment(b"[]", allow_empty=True) is None
    # What JSON.parse takes and msgspec alone would not: huge numbers, lone surrogates.
    assert json_fragment(b"[1e400]", allow_empty=False) == b"1e400"
    assert json_fragment(b'"\\ud800"', allow_empty=False) == b'"\\ud800"'
    for bad in (b"[]", b"{ invalid }", b"", b"[1,]", b"NaN", b"[Infinity]"):
        with pytest.raises(JsonBodyError):
            json_fragment(bad, allow_empty=False)
    assert json_body([b'{"a": 1} , 2', b"[1,2]"]) == b'[{"a": 1} , 2,[1,2]]'


async def test_the_sweeper_drops_references_no_fork_holds_and_purges_orphan_data(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, _, store, _ = two
    async with http.put(a + "src", data="S", headers=TEXT) as r:
        assert r.status == 201
    async with http.put(a + "f", headers={**TEXT, "Stream-Forked-From": "/v1/stream/src"}) as r:
        assert r.status == 201
    # A fork that died half-way: its reference is in the source's record, no record holds it.
    got = await store.lookup("src")
    assert got is not None
    rec, rev = got
    await store.kv.update(name_key("src"), encode(replace(rec, refs=(*rec.refs, "dead"))), last=rev)
    # Data whose record was never created.
    orphan = store.subject("orphan0123456789")
    await store.js.publish(orphan, b"lost")
    collector = Collector(Lifecycle(store), orphan_grace=0.0)
    first = await collector.sweep()
    assert first.refs_dropped == 0  # one sweep only makes it a suspect
    assert first.orphans_purged == 1
    second = await collector.sweep()
    assert second.refs_dropped == 1
    got = await store.lookup("src")
    assert got is not None
    assert got[0].refs == rec.refs  # the live fork's reference stays
    info = await store.js.stream_info(store.stream, subjects_filter=orphan)
    assert not info.state.subjects
    body, _ = await read_all(http, a + "f")
    assert body == b"S"


class _Clock:
    """The gateways' wall clock, moved by the test."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_a_read_on_one_gateway_keeps_a_ttl_stream_alive_on_the_other(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, store_a, store_b = two
    clock = _Clock()
    store_a.clock = store_b.clock = clock
    async with http.put(a + "ttl", data="x", headers={**TEXT, "Stream-TTL": "10"}) as r:
        assert r.status == 201
    clock.now += 6
    async with http.get(b + "ttl") as r:  # a read resets the window, on the other gateway
        assert r.status == 200
    clock.now += 6  # 12 s after creation, 6 after the read
    async with http.head(a + "ttl") as r:
        assert r.status == 200
    async with http.head(b + "ttl") as r:
        assert r.status == 200
    clock.now += 6  # HEAD does not reset it: 12 s after the read
    async with http.head(a + "ttl") as r:
        assert r.status == 404
    async with http.get(b + "ttl") as r:
        assert r.status == 404


async def test_a_watch_wakes_when_poked_and_times_out_on_time_without() -> None:
    w = Watch(_Topic())
    loop = asyncio.get_running_loop()
    try:
        started = loop.time()
        assert await w.wait(0.05) is False
        w.poke()  # stored before the wait: it returns at once
        assert await w.wait(10.0) is True
        waiting = asyncio.create_task(w.wait(10.0))
        await asyncio.sleep(0)  # let it start waiting
        w.poke()
        assert await waiting is True
        # A short wait after a long one (its timer armed far later) still ends on time.
        long_wait = asyncio.create_task(w.wait(30.0))
        await asyncio.sleep(0)
        w.poke()
        assert await long_wait is True
        assert await w.wait(0.05) is False
        assert loop.time() - started < 10.0
    finally:
        w.close()
