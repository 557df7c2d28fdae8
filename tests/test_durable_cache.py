"""The gateway's Durable Streams caches (service/http/durable/cache.py) against a real
nats-server: an append is one round trip once its stream's record is cached, and a record gone
stale because another gateway appended, deleted, recreated or soft-deleted the stream is
noticed by the append's own fence; reads are served from cached messages, never another
incarnation's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from service.config import Settings
from service.http.durable.cache import MessageCache, RecordCache
from service.http.durable.model import StreamRecord
from service.http.durable.storage import DurableStore
from service.nats.directget import StoredMsg
from tests.test_durable_streams import gateway, read_all

TEXT = {"Content-Type": "text/plain"}


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[tuple[str, str, DurableStore, DurableStore]]:
    s = settings.with_(long_poll_timeout=2.0)
    async with gateway(s) as (a, store_a), gateway(s) as (b, store_b):
        yield a, b, store_a, store_b


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


class Requests:
    """Counts a store's Direct Gets (KV records included) and publishes."""

    def __init__(self, store: DurableStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.direct_gets: list[dict[str, Any]] = []
        self.publishes = 0
        dg_request = store.dg._request
        publish_once = store.publisher.publish_once

        async def counted_dg(stream: str, body: dict[str, Any], subject: str, **kw: Any) -> Any:
            self.direct_gets.append(body)
            return await dg_request(stream, body, subject, **kw)

        async def counted_publish(subject: str, payload: bytes, headers: dict[str, str]) -> int:
            self.publishes += 1
            return await publish_once(subject, payload, headers)

        monkeypatch.setattr(store.dg, "_request", counted_dg)
        monkeypatch.setattr(store.publisher, "publish_once", counted_publish)

    def clear(self) -> None:
        self.direct_gets.clear()
        self.publishes = 0


async def post(http: aiohttp.ClientSession, url: str, data: str, **headers: str) -> int:
    async with http.post(url, data=data, headers={**TEXT, **headers}) as r:
        return r.status


async def test_an_append_is_one_round_trip_once_the_record_is_cached(
    two: tuple[str, str, DurableStore, DurableStore],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, _, store_a, _ = two
    async with http.put(a + "s", data="first", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "warm") == 204
    seen = Requests(store_a, monkeypatch)
    for i in range(5):
        assert await post(http, a + "s", f"<{i}>") == 204
    assert seen.direct_gets == []  # no record read, no state read
    assert seen.publishes == 5
    # And the catch-up read is served from the messages this gateway stored.
    body, _ = await read_all(http, a + "s")
    assert body == b"firstwarm<0><1><2><3><4>"
    data_reads = [g for g in seen.direct_gets if "next_by_subj" in g]
    assert len(data_reads) == 1  # only the probe after the cached messages
    assert store_a.messages.hits >= 7


async def test_appends_elsewhere_fence_out_the_cached_state_and_are_kept_in_order(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "s", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "1") == 204  # A caches record and state
    for i in range(2, 5):
        assert await post(http, b + "s", str(i)) == 204
    assert await post(http, a + "s", "5") == 204  # fenced out, folds 2-4, stores 5
    for base in (a, b):
        body, _ = await read_all(http, base + "s")
        assert body == b"12345"


async def test_a_stream_deleted_elsewhere_answers_404_to_a_gateway_that_cached_it(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, store_a, _ = two
    async with http.put(a + "s", data="old", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "more") == 204
    assert store_a.records.get("s") is not None
    async with http.delete(b + "s") as r:
        assert r.status == 204
    assert await post(http, a + "s", "late") == 404
    async with http.head(a + "s") as r:
        assert r.status == 404


async def test_an_empty_stream_deleted_elsewhere_is_not_appended_to(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    """A state with tail 0 cannot tell an empty subject from a purged one: its record is read."""
    a, b, store_a, _ = two
    async with http.put(a + "s", headers=TEXT) as r:
        assert r.status == 201
    gap = {"Producer-Id": "p", "Producer-Epoch": "0", "Producer-Seq": "1"}
    assert await post(http, a + "s", "gap", **gap) == 409  # A now knows the state: tail 0
    got = store_a.records.get("s")
    assert got is not None
    assert store_a._states[got[0].inc].tail == 0
    async with http.delete(b + "s") as r:
        assert r.status == 204
    assert await post(http, a + "s", "late") == 404
    assert store_a.records.get("s") is None
    info = await store_a.js.stream_info(store_a.stream, subjects_filter=store_a.subject(got[0].inc))
    assert not info.state.subjects  # nothing was stored under the deleted incarnation


async def test_a_stream_recreated_elsewhere_takes_the_append_on_the_new_incarnation(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, store_a, _ = two
    async with http.put(a + "s", data="old", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "-still-old") == 204
    old = store_a.records.get("s")
    assert old is not None
    body, _ = await read_all(http, a + "s")  # A's message cache holds the old incarnation
    assert body == b"old-still-old"
    async with http.delete(b + "s") as r:
        assert r.status == 204
    async with http.put(b + "s", data="new", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "+a") == 204
    for base in (a, b):
        body, _ = await read_all(http, base + "s")
        assert body == b"new+a"
    new = store_a.records.get("s")
    assert new is not None
    assert new[0].inc != old[0].inc


async def test_a_stream_recreated_with_another_content_type_is_checked_on_its_record(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "s", data="old", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "x") == 204
    async with http.delete(b + "s") as r:
        assert r.status == 204
    json = {"Content-Type": "application/json"}
    async with http.put(b + "s", headers=json) as r:
        assert r.status == 201
    # A cached a text stream; the stream is JSON now: A's text append is a mismatch...
    assert await post(http, a + "s", "text") == 409
    # ...and a JSON append through A is stored in the new incarnation.
    async with http.post(a + "s", data=b'{"v":1}', headers=json) as r:
        assert r.status == 204
    async with http.get(b + "s", params={"offset": "-1"}) as r:
        assert await r.json() == [{"v": 1}]


async def test_a_stream_soft_deleted_elsewhere_answers_410_to_a_gateway_that_cached_it(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    a, b, _, _ = two
    async with http.put(a + "root", data="A", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "root", "B") == 204
    fork = {**TEXT, "Stream-Forked-From": "/v1/stream/root"}
    async with http.put(b + "kid", headers=fork) as r:
        assert r.status == 201
    async with http.delete(b + "root") as r:
        assert r.status == 204  # soft-deleted: the fork still reads it
    assert await post(http, a + "root", "C") == 410
    body, _ = await read_all(http, a + "kid")
    assert body == b"AB"  # the fork does not see the soft-deletion's marker


async def test_a_refusal_on_a_cached_record_is_given_on_the_current_stream(
    two: tuple[str, str, DurableStore, DurableStore], http: aiohttp.ClientSession
) -> None:
    """A's cached state says closed; the stream was recreated open elsewhere: A appends."""
    a, b, _, _ = two
    async with http.put(a + "s", data="old", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "", **{"Stream-Closed": "true"}) == 204
    assert await post(http, a + "s", "refused") == 409
    async with http.delete(b + "s") as r:
        assert r.status == 204
    async with http.put(b + "s", headers=TEXT) as r:
        assert r.status == 201
    assert await post(http, a + "s", "open") == 204
    body, _ = await read_all(http, b + "s")
    assert body == b"open"


async def test_a_reader_on_another_gateway_fills_its_cache_and_sees_later_appends(
    two: tuple[str, str, DurableStore, DurableStore],
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b, _, store_b = two
    async with http.put(a + "s", headers=TEXT) as r:
        assert r.status == 201
    for i in range(30):
        assert await post(http, a + "s", f"<{i}>") == 204
    want = "".join(f"<{i}>" for i in range(30)).encode()
    body, tail = await read_all(http, b + "s")  # from the server: fills B's cache
    assert body == want
    seen = Requests(store_b, monkeypatch)
    assert await read_all(http, b + "s") == (want, tail)
    assert [g for g in seen.direct_gets if "next_by_subj" in g and g["seq"] <= 30] == []
    assert await post(http, a + "s", "<30>") == 204
    body, _ = await read_all(http, b + "s")
    assert body == want + b"<30>"
    async with http.get(b + "s", params={"offset": tail}) as r:
        assert await r.read() == b"<30>"


# --- the caches alone -----------------------------------------------------------------------


def _msgs(*seqs: int, size: int = 10) -> list[StoredMsg]:
    return [StoredMsg(s, b"x" * size, headers={}) for s in seqs]


def test_a_run_serves_only_what_it_knows() -> None:
    cache = MessageCache(1 << 20)
    cache.stored("s", 4, _msgs(5, 7, 9))  # every message of s in (4, 9]
    assert cache.messages("s", 5, 10, 1 << 20) == cache.messages("s", 5, 10, 1 << 20)
    assert [m.seq for m in cache.messages("s", 6, 10, 1 << 20) or []] == [7, 9]
    assert [m.seq for m in cache.messages("s", 5, 2, 1 << 20) or []] == [5, 7]
    assert [m.seq for m in cache.messages("s", 5, 10, 15) or []] == [5, 7]  # bytes
    assert cache.messages("s", 4, 10, 1 << 20) is None  # 4 itself is not known
    assert cache.messages("s", 10, 10, 1 << 20) is None  # past the run: ask the server
    assert cache.messages("other", 1, 10, 1 << 20) is None
    cache.stored("s", 9, _msgs(12))  # an append fenced on 9 extends the run
    assert [m.seq for m in cache.messages("s", 8, 10, 1 << 20) or []] == [9, 12]
    cache.stored("s", 1, _msgs(3, 5))  # a read from 2 reaching into the run joins it
    assert [m.seq for m in cache.messages("s", 2, 10, 1 << 20) or []] == [3, 5, 7, 9, 12]
    cache.stored("s", 20, _msgs(21))  # disjoint: replaces
    assert cache.messages("s", 5, 10, 1 << 20) is None
    assert [m.seq for m in cache.messages("s", 21, 10, 1 << 20) or []] == [21]
    cache.forget("s")
    assert cache.messages("s", 21, 10, 1 << 20) is None
    assert cache.nbytes == 0


def test_the_message_cache_stays_within_its_bytes() -> None:
    cache = MessageCache(20_000)
    for i in range(10):
        cache.stored(f"s{i}", 0, _msgs(*range(1, 11), size=100))
        assert cache.nbytes <= 20_000
    assert cache.messages("s0", 1, 10, 1 << 20) is None  # least recently used: gone
    assert cache.messages("s9", 1, 10, 1 << 20) is not None
    big = MessageCache(5_000)
    big.stored("s", 0, _msgs(*range(1, 101), size=100))
    assert 0 < big.nbytes <= 5_000
    assert big.messages("s", 1, 10, 1 << 20) is None  # the oldest part was dropped
    assert big.messages("s", 100, 10, 1 << 20) is not None
    off = MessageCache(0)
    off.stored("s", 0, _msgs(1))
    assert off.messages("s", 1, 1, 1) is None


def test_cached_records_age_out() -> None:
    now = [0.0]
    cache = RecordCache(clock=lambda: now[0])
    rec = StreamRecord(inc="i", content_type="text/plain", created=0.0)
    cache.put("n", rec, 3)
    assert cache.get("n") == (rec, 3)
    now[0] = 11.0
    assert cache.get("n") is None
