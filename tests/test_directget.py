"""Direct Get replies on the inline path (ahead of nats-py's parsing) and on nats-py's own path.

The inline path reads the raw header block; these tests hold it to what nats-py would have
given for the same stored messages, on a real server, and check that it leaves the rest of
the connection alone.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from service.config import Settings
from service.nats import compat, directget
from service.nats.directget import (
    DirectGetError,
    StoredMsg,
    client_for,
    direct_get_batch,
    parse_headers,
)
from service.nats.provision import provision

WAIT = 10.0

# Stored with every event of the "odd" subject: spacing nats-py tolerates, a non-ASCII value,
# an empty value. Publishing goes through nats-py's encoder, so names are plain tokens.
ODD = {
    "Genjobs-Kind": "step",
    "X-Spaced": "  a value with  inner spaces ",
    "X-Unicode": "grüße ✓",
    "X-Empty": "",
}


@pytest.fixture
async def js(nc: NATS, settings: Settings) -> JetStreamContext:
    js = nc.jetstream()
    await provision(js, settings)
    return js


@pytest.fixture
async def fallback_nc(nats_url: str) -> AsyncIterator[NATS]:
    """A second connection (its Direct Get client takes nats-py's own path, see below)."""
    conn = await nats.connect(nats_url, name="test-fallback")
    yield conn
    await conn.drain()


async def _store(js: JetStreamContext, settings: Settings, n: int) -> list[int]:
    seqs = []
    for i in range(n):
        headers = {**ODD, "Genjobs-Index": str(i)}
        ack = await js.publish(
            settings.events_subject("odd"), f'{{"i":{i}}}'.encode(), headers=headers
        )
        seqs.append(ack.seq)
    return seqs


def _view(msgs: list[StoredMsg]) -> list[tuple[int, bytes, dict[str, str]]]:
    return [(m.seq, m.data, dict(m.headers)) for m in msgs]


async def test_inline_replies_equal_nats_py_parsing(
    nc: NATS, fallback_nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    seqs = await _store(js, settings, 25)
    subject, stream = settings.events_subject("odd"), settings.stream_name
    inline = client_for(nc)
    fallback = directget.DirectGetClient(fallback_nc, inline=False)
    got_inline = await inline.get_batch(stream, subject, 1, batch=10)
    got_fallback = await fallback.get_batch(stream, subject, 1, batch=10)
    assert inline.raw
    assert not fallback.raw
    assert got_inline[1] == got_fallback[1] == 15  # what is left after the batch
    assert _view(got_inline[0]) == _view(got_fallback[0])
    assert [m.seq for m in got_inline[0]] == seqs[:10]
    first = got_inline[0][0].headers
    assert {k: first[k] for k in ODD} == {k: v.strip() for k, v in ODD.items()}
    assert first["Nats-Sequence"] == str(seqs[0])
    # One header without the dict, on a message whose dict was never built.
    (m,) = (await inline.get_batch(stream, subject, seqs[3], batch=1))[0]
    assert m.header("Genjobs-Index") == "3"
    assert m.header("X-Unicode") == "grüße ✓"
    assert m.header("X-Empty") == ""
    assert m.header("Missing") is None
    # The last message, nothing after the end, and the end of a batch at the end.
    last_inline = await inline.last_msg(stream, subject)
    last_fallback = await fallback.last_msg(stream, subject)
    assert last_inline is not None
    assert last_fallback is not None
    assert _view([last_inline]) == _view([last_fallback])
    assert last_inline.seq == seqs[-1]
    for client in (inline, fallback):
        assert await client.get_batch(stream, subject, seqs[-1] + 1) == ([], 0)
        assert await client.last_msg(stream, settings.events_subject("nobody")) is None
        tail, left = await client.get_batch(stream, subject, seqs[20], batch=100)
        assert ([m.seq for m in tail], left) == (seqs[20:], 0)
        with pytest.raises(DirectGetError, match="503"):
            await client.get_batch("NO_SUCH_STREAM", "x.y", 1)


async def test_concurrent_first_requests_all_take_the_inline_path(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    """Requests made while the client is still subscribing wait for it, so every reply takes
    the inline path: none may go through nats-py's subscription queue (a batch split between
    the two paths could be delivered out of order)."""
    seqs = await _store(js, settings, 12)
    client = directget.DirectGetClient(nc)
    subject = settings.events_subject("odd")
    results = await asyncio.gather(
        *(client.get_batch(settings.stream_name, subject, s, batch=3) for s in seqs)
    )
    for start, (msgs, _) in zip(seqs, results, strict=True):
        assert [m.seq for m in msgs] == [s for s in seqs if s >= start][:3]
    assert client.raw
    assert client._sub is not None
    assert client._sub._received == 0
    await client.close()


async def test_inline_path_leaves_the_rest_of_the_connection_alone(
    nc: NATS, settings: Settings, js: JetStreamContext
) -> None:
    seqs = await _store(js, settings, 5)
    client = client_for(nc)
    got: list[Msg] = []
    arrived = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        got.append(msg)
        arrived.set()

    sub = await nc.subscribe(settings.prefix + ".plain", cb=on_msg)
    before = nc.stats["in_msgs"]
    msgs, _ = await client.get_batch(settings.stream_name, settings.events_subject("odd"), 1)
    assert [m.seq for m in msgs] == seqs
    assert nc.stats["in_msgs"] - before == len(seqs) + 1  # the messages and the end of batch
    await nc.publish(settings.prefix + ".plain", b"hi", headers={"X-A": " b "})
    async with asyncio.timeout(WAIT):
        await arrived.wait()
    assert got[0].data == b"hi"
    assert got[0].headers == {"X-A": "b"}
    sid = compat.subscription_id(client._sub) if client._sub else -1
    await client.close()
    assert sid not in compat.routed(nc)
    again = client_for(nc)
    assert again is not client
    assert [
        m.seq
        for m in (
            await direct_get_batch(nc, settings.stream_name, settings.events_subject("odd"), 1)
        )[0]
    ] == seqs
    await sub.unsubscribe()


def test_parse_headers_matches_nats_py() -> None:
    rng = random.Random(7)
    names = ["Nats-Sequence", "Genjobs-Kind", "X-A", "x-lower", "Bad Name", "Tab\tName", "Ünï"]
    values = ["1", " padded ", "\tx", "grüße", "", "a:b:c", "  "]
    for _ in range(500):
        lines = []
        for _ in range(rng.randint(0, 6)):
            name = rng.choice(names)
            sep = rng.choice([":", ": ", ":\t", " : "])
            lines.append((name + sep + rng.choice(values)).encode())
        if rng.random() < 0.2:
            lines.append(b"no colon here")
        block = b"\r\n".join(lines) + b"\r\n\r\n"
        want = NATS._parse_header_lines(block)
        assert parse_headers(b"NATS/1.0\r\n" + block) == want, block
        msg = StoredMsg(1, b"", raw_headers=b"NATS/1.0\r\n" + block)
        for name in ("Nats-Sequence", "Genjobs-Kind", "X-A"):
            occurrences = sum(1 for line in lines if line.split(b":")[0].strip() == name.encode())
            if occurrences <= 1:
                assert msg.header(name) == want.get(name), (name, block)


def test_kind_and_index_are_read_by_name_as_nats_py_would_parse_them() -> None:
    """The replay's fast path (StoredMsg.kind_index) agrees with nats-py's parsing for any order
    and spacing of the headers, and for indexes that are not numbers."""
    rng = random.Random(11)
    kinds = ["step", "final", " padded ", "", "grüße"]
    indexes = ["0", "17", " 3", "x", "", "-1", "+5", "1_0"]
    others = ["Nats-Sequence: 9", "X-A: b", "Genjobs-Writer: w"]
    for _ in range(500):
        lines = [rng.choice(others) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.9:
            lines.append("Genjobs-Kind" + rng.choice([": ", ":", " : ", ":\t"]) + rng.choice(kinds))
        if rng.random() < 0.9:
            lines.append("Genjobs-Index" + rng.choice([": ", ":", ":  "]) + rng.choice(indexes))
        rng.shuffle(lines)
        block = "\r\n".join(lines).encode() + b"\r\n\r\n"
        want = NATS._parse_header_lines(block)
        index = want.get("Genjobs-Index", "")
        expected = (want.get("Genjobs-Kind", ""), int(index) if index.isdigit() else -1)
        msg = StoredMsg(1, b"", raw_headers=b"NATS/1.0\r\n" + block)
        assert msg.kind_index() == expected, block
