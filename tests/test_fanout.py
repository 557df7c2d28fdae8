"""The shared live delivery (service/client/fanout.py) against a real nats-server.

Many sinks follow one job from different positions, join while events are being stored, while
the terminal event is stored, fall behind, fail, and leave; each must get every event after its
position exactly once, in order, ending with the terminal one, and the last one leaving must
release the job's shared reader. Events are published as producers do (tests/test_reader.py).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest
from nats.aio.client import Client as NATS

from service.client.fanout import LiveFanout
from service.client.reader import HubClosed, LiveHub, ReadEvent
from service.config import Settings
from service.nats.provision import provision
from tests.helpers import wait_for
from tests.test_reader import Producer

WAIT = 20.0


@pytest.fixture
async def producer(nc: NATS, settings: Settings) -> Producer:
    js = nc.jetstream()
    await provision(js, settings)
    return Producer(js, settings)


def encode(events: Sequence[ReadEvent]) -> list[ReadEvent]:
    return list(events)


class ListSink:
    """Collects what it gets; ``refuse`` pushes make it look full (a client not reading)."""

    def __init__(self, refuse: int = 0, fail_write_after: int | None = None) -> None:
        self.got: list[ReadEvent] = []
        self.pushed = 0
        self.written = 0
        self.refuse = refuse
        self.fail_write_after = fail_write_after

    async def write(self, events: Sequence[ReadEvent]) -> None:
        if self.fail_write_after is not None and self.written >= self.fail_write_after:
            raise ConnectionResetError("client gone")
        self.written += len(events)
        self.got.extend(events)

    def push(self, payload: list[ReadEvent]) -> bool:
        if self.refuse > 0:
            self.refuse -= 1
            return False
        self.pushed += len(payload)
        self.got.extend(payload)
        return True


def seqs(events: Sequence[ReadEvent]) -> list[int]:
    return [e.seq for e in events]


def assert_released(fanout: LiveFanout[list[ReadEvent]], hub: LiveHub, *jobs: str) -> None:
    """No group left, and no hub reader of ``jobs``: the shared readers were given back."""
    assert fanout.groups() == 0
    for job in jobs:
        assert hub.watchers(job) == 0


def assert_every_sink_got_its_events(
    producer: Producer, job: str, sinks: list[tuple[int, ListSink]]
) -> None:
    """Each sink got exactly the job's events after its start position, in order, once."""
    for after, sink in sinks:
        assert seqs(sink.got) == seqs(producer.after(job, after)), after


async def follow(fanout: LiveFanout[list[ReadEvent]], job: str, after: int, sink: ListSink) -> bool:
    async with asyncio.timeout(WAIT):
        return await fanout.follow(job, after, sink)


async def attached(fanout: LiveFanout[list[ReadEvent]], job: str, n: int) -> None:
    """Until ``n`` sinks are attached to (or waiting for) the job's shared delivery."""

    async def done() -> bool:
        return fanout.sinks(job) >= n

    await wait_for(done, timeout=WAIT)


async def test_sinks_at_different_positions_get_every_event_once_and_share_one_reader(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    history = await producer.emit_many("j", 30)
    async with LiveHub(nc, settings) as hub:
        fanout = LiveFanout(hub, encode)
        starts = [0, 0, history[5].seq, history[17].seq, history[-1].seq, history[-1].seq]
        sinks = [ListSink() for _ in starts]
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(follow(fanout, "j", a, s))
                for a, s in zip(starts, sinks, strict=True)
            ]
            await attached(fanout, "j", len(sinks))
            assert fanout.groups() == 1
            assert hub.watchers("j") == 1  # one reader for all of them
            for _ in range(20):
                await producer.emit("j")
            await producer.emit("j", "final")
        assert all(t.result() for t in tasks)
        for start, sink in zip(starts, sinks, strict=True):
            assert seqs(sink.got) == seqs(producer.after("j", start))
            assert sink.got[-1].terminal
        # The live events reached everyone from the shared reader, not from a reader of its own.
        assert all(s.pushed >= 21 for s in sinks)
        assert_released(fanout, hub, "j")


async def test_joins_racing_with_live_events_lose_and_repeat_nothing(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    rng = random.Random(7)
    await producer.emit_many("r", 10)
    async with LiveHub(nc, settings) as hub:
        fanout = LiveFanout(hub, encode)
        sinks: list[tuple[int, ListSink]] = []
        async with asyncio.TaskGroup() as tg:
            for i in range(200):
                await producer.emit("r")
                # A follower from a random earlier position every event, some every time
                # from the tail (they join the shared delivery while events arrive).
                for _ in range(1 + i % 3):
                    sent = producer.sent["r"]
                    after = rng.choice([0, sent[-1].seq, rng.choice(sent).seq])
                    sink = ListSink()
                    sinks.append((after, sink))
                    tg.create_task(follow(fanout, "r", after, sink))
            await producer.emit("r", "final")
        assert_every_sink_got_its_events(producer, "r", sinks)
        assert_released(fanout, hub, "r")


async def test_terminal_event_stored_while_sinks_join(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("t", 50)
    async with LiveHub(nc, settings) as hub:
        fanout = LiveFanout(hub, encode)
        first = ListSink()
        sinks: list[tuple[int, ListSink]] = [(0, first)]
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follow(fanout, "t", 0, first))
            await attached(fanout, "t", 1)
            ending = tg.create_task(producer.emit("t", "final"))
            # These start while the terminal event is being stored and delivered: some catch up
            # privately, some attach, some find the group ended.
            for k in range(40):
                sink = ListSink()
                after = producer.sent["t"][k].seq if k % 2 else 0
                sinks.append((after, sink))
                tg.create_task(follow(fanout, "t", after, sink))
                if k % 5 == 0:
                    await asyncio.sleep(
                        0
                    )  # a yield: spread the starts over the terminal's delivery
            await ending
        assert_every_sink_got_its_events(producer, "t", sinks)
        assert all(sink.got[-1].terminal for _, sink in sinks)
        assert_released(fanout, hub, "t")


async def test_a_sink_that_falls_behind_catches_up_alone_and_the_others_continue(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("s", 5)
    async with LiveHub(nc, settings) as hub:
        fanout = LiveFanout(hub, encode)
        slow = ListSink(refuse=3)  # full three times: detached, reads alone, attaches again
        gone = ListSink(refuse=1, fail_write_after=0)  # full, then its client is gone
        fine = [ListSink() for _ in range(5)]
        async with asyncio.TaskGroup() as tg:
            t_slow = tg.create_task(follow(fanout, "s", 0, slow))
            t_fine = [tg.create_task(follow(fanout, "s", 0, s)) for s in fine]
            await attached(fanout, "s", 6)
            # Not in the group: it fails, and that must not end the others.
            t_gone = asyncio.create_task(follow(fanout, "s", producer.sent["s"][-1].seq, gone))
            await attached(fanout, "s", 7)
            for _ in range(30):
                await producer.emit("s")
            with pytest.raises(ConnectionResetError):
                await t_gone
            await producer.emit("s", "final")
        assert t_slow.result()
        assert all(t.result() for t in t_fine)
        want = seqs(producer.after("s", 0))
        assert seqs(slow.got) == want
        assert slow.written > 5  # it read on its own after being detached
        for sink in fine:
            assert seqs(sink.got) == want
        assert_released(fanout, hub, "s")


async def test_the_last_sink_leaving_releases_the_shared_reader(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("l", 3)
    async with LiveHub(nc, settings) as hub:
        fanout = LiveFanout(hub, encode)
        sinks = [ListSink() for _ in range(10)]
        tasks = [asyncio.create_task(follow(fanout, "l", 0, s)) for s in sinks]
        await attached(fanout, "l", 10)
        assert hub.watchers("l") == 1
        assert hub.subscriptions() == 1
        for task in tasks[:9]:
            task.cancel()
        await asyncio.wait(tasks[:9])
        assert fanout.sinks("l") == 1
        assert hub.watchers("l") == 1
        await producer.emit("l")
        await producer.emit("l", "final")
        assert await tasks[9]
        assert seqs(sinks[9].got) == seqs(producer.after("l", 0))
        # A job nobody follows holds nothing: the same for a cancelled last follower.
        again = asyncio.create_task(follow(fanout, "l", producer.sent["l"][1].seq, ListSink()))
        assert await again  # the terminal event is in the stream: read privately
        other = asyncio.create_task(follow(fanout, "m", 0, ListSink()))
        await attached(fanout, "m", 1)
        other.cancel()
        await asyncio.wait([other])
        await fanout.close()  # waits for the cancelled group's task: its reader has left
        assert_released(fanout, hub, "l", "m")
        assert hub.subscriptions() == 0


async def test_a_closing_hub_fails_every_attached_sink(
    nc: NATS, settings: Settings, producer: Producer
) -> None:
    await producer.emit_many("c", 3)
    hub = LiveHub(nc, settings)
    fanout = LiveFanout(hub, encode)
    tasks = [asyncio.create_task(follow(fanout, "c", 0, ListSink())) for _ in range(5)]
    await attached(fanout, "c", 5)
    await hub.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, HubClosed) for r in results), results
    await fanout.close()
    assert fanout.groups() == 0
