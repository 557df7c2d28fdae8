"""Durable Streams on JetStream, beyond the conformance suite: correctness with several gateways
and faults (docs/http.md, "Durable Streams").

Each test runs real gateway processes (``python -m service.cli gateway``) on real nats-servers
and drives them over HTTP only:

- two gateways appending to one stream at once,
- a gateway killed (SIGKILL) mid-append, then restarted,
- the nats-server killed mid-stream and restarted on the same port and store,
- a 3-node cluster (stream and bucket R3) whose stream leader is killed.

What must hold every time, read back through every gateway: every acknowledged append is
there exactly once, in the order its writer appended it; an append that got no answer is
there at most once; an idempotent writer (``Producer-Id/Epoch/Seq``) that retries an
unanswered append on another gateway ends with every message stored exactly once; a live
reader that resumes from its last ``Stream-Next-Offset`` on another gateway after every error
reads exactly what a catch-up read returns; all gateways agree on the offsets.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass

import aiohttp
import nats
import pytest

from service.config import Settings
from tests.faults.conftest import Cluster, Figures, Node, fault_settings, stream_leader
from tests.faults.gateway import (
    Follower,
    Writer,
    check_stream,
    close_stream,
    create_stream,
    ds_gateway,
    messages,
    read_all,
)
from tests.faults.workload import Clock, Progress
from tests.procs import GatewayProcess

# Gateways are child processes: the test's own loop only runs HTTP clients, so one loop is
# enough for the fault paths (the gateways run on uvloop, as in production).
pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])


@dataclass(frozen=True)
class Load:
    writers: int
    """Writers per gateway; half idempotent (Producer-Id), half plain."""
    count: int
    """Appends per writer."""
    kills: int = 1
    outage: float = 1.0
    """Seconds a killed nats-server stays down before it restarts."""
    timeout: float = 90.0


SHORT = Load(writers=2, count=60)
LONG = Load(writers=6, count=600, kills=3, timeout=400.0)


def ds_settings(url: str, **changes: object) -> Settings:
    return fault_settings(url, long_poll_timeout=1.0, **changes)


class Run:
    """Gateways, writers spread over them, a follower, and the final checks."""

    def __init__(self, gateways: list[GatewayProcess], load: Load, figures: Figures) -> None:
        self.gateways = gateways
        self.load = load
        self.figures = figures
        self.stream = f"ds-{uuid.uuid4().hex[:8]}"
        self.writers: list[Writer] = []
        self.clock = Clock()
        total = load.writers * len(gateways) * load.count
        fractions = [(k + 1) / (load.kills + 2) for k in range(load.kills)]
        self.progress = Progress(total, fractions)

    def urls(self, first: int) -> list[str]:
        """Every gateway's URL, starting with gateway ``first``."""
        urls = [g.url for g in self.gateways]
        return urls[first:] + urls[:first]

    async def main(self, http: aiohttp.ClientSession, fault: object) -> None:
        """Writers and a follower run while ``fault()`` (a coroutine function, may be None)
        injects its faults at the progress marks; then the stream is closed and checked."""
        await create_stream(http, self.gateways[0].url, self.stream)
        for g in range(len(self.gateways)):
            for k in range(self.load.writers):
                self.writers.append(
                    Writer(
                        f"g{g}w{k}",
                        self.urls(g),
                        self.stream,
                        self.load.count,
                        idempotent=k % 2 == 0,
                        on_ack=self.progress,
                    )
                )
        follower = Follower(self.urls(len(self.gateways) - 1), self.stream)
        async with asyncio.timeout(self.load.timeout), asyncio.TaskGroup() as tg:
            reading = tg.create_task(follower.run(http))
            async with asyncio.TaskGroup() as writing:
                for w in self.writers:
                    writing.create_task(w.run(http))
                if fault is not None:
                    writing.create_task(fault())  # type: ignore[operator]
            self.figures["writers_done_s"] = self.clock()
            await close_stream(http, self.urls(0), self.stream)
            await reading
        await self.check(http, follower)

    async def check(self, http: aiohttp.ClientSession, follower: Follower) -> None:
        reads = {}
        for g in self.gateways:
            chunks, headers = await read_all(http, g.url, self.stream)
            assert headers.get("Stream-Closed") == "true", (g.name, headers)
            reads[g.name] = (messages(chunks), chunks[-1].next_offset)
        first_msgs, first_end = next(iter(reads.values()))
        for name, (msgs, end) in reads.items():
            assert msgs == first_msgs, f"gateway {name} reads a different stream"
            assert end == first_end, f"gateway {name}: tail {end} != {first_end}"
        assert follower.got == first_msgs, (
            f"live reader: {len(follower.got)} messages, catch-up {len(first_msgs)}"
        )
        self.figures.update(**check_stream(first_msgs, self.writers))
        self.figures["follower_resumes"] = follower.resumes
        statuses: Counter[int] = Counter()
        for w in self.writers:
            statuses.update(w.statuses)
        self.figures["http_statuses"] = ",".join(f"{k}:{n}" for k, n in sorted(statuses.items()))
        errors = {k: v for w in self.writers for k, v in w.errors.items()}
        if errors:
            self.figures["http_errors"] = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items()))
        # A fault may make an append wait or fail with 503 (storage unavailable); anything
        # else from the server (a 500 for a lost race, a 409 to a plain append) is a bug.
        wrong = {k: v for k, v in errors.items() if k != 503}
        assert not wrong, f"appends answered with errors that are not 503: {wrong}"
        # Resuming mid-stream from an offset one gateway gave, on another, gives the rest.
        chunks, _ = await read_all(http, self.gateways[0].url, self.stream)
        if len(chunks) > 1 or len(first_msgs) > 1:
            mid_offset = chunks[len(chunks) // 2].offset
            before = sum(len(c.messages) for c in chunks[: len(chunks) // 2])
            rest, _ = await read_all(http, self.gateways[-1].url, self.stream, mid_offset)
            assert messages(rest) == first_msgs[before:]


async def start_gateways(stack: AsyncExitStack, settings: list[Settings]) -> list[GatewayProcess]:
    gateways = []
    for k, s in enumerate(settings):
        gw = ds_gateway(s, name=f"gw{k}")
        stack.callback(gw.close)
        await gw.start_async()
        gateways.append(gw)
    return gateways


# --- two gateways, one stream ----------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(Load(writers=3, count=60, kills=0), id="short"),
        pytest.param(
            Load(writers=8, count=500, kills=0, timeout=300),
            id="long",
            marks=[pytest.mark.slow, pytest.mark.timeout(400)],
        ),
    ],
)
async def test_two_gateways_appending_to_one_stream_store_every_append_once_in_order(
    nats_url: str, figures: Figures, load: Load
) -> None:
    s = ds_settings(nats_url)
    async with AsyncExitStack() as stack:
        gateways = await start_gateways(stack, [s, s])
        run = Run(gateways, load, figures)
        async with aiohttp.ClientSession() as http:
            await run.main(http, None)
    # Without faults every append is answered, and answered with success.
    assert all(not w.unacked and w.failed_attempts == 0 for w in run.writers), [
        (w.name, dict(w.statuses)) for w in run.writers
    ]
    assert figures.values["stored"] == load.writers * 2 * load.count


# --- a gateway killed mid-append --------------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(SHORT, id="short"),
        pytest.param(LONG, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(500)]),
    ],
)
async def test_gateway_killed_mid_append_loses_and_duplicates_nothing(
    nats_url: str, figures: Figures, load: Load
) -> None:
    s = ds_settings(nats_url)
    async with AsyncExitStack() as stack:
        gateways = await start_gateways(stack, [s, s])
        run = Run(gateways, load, figures)

        async def fault() -> None:
            for k in range(load.kills):
                await run.progress.reached(k)
                victim = gateways[k % 2]
                victim.kill()
                figures[f"kill{k}_at_s"] = run.clock()
                await victim.start_async()  # same port: clients that moved away may come back
                figures[f"restart{k}_s"] = run.clock() - figures.values[f"kill{k}_at_s"]

        async with aiohttp.ClientSession() as http:
            await run.main(http, fault)
    last_kill = figures.values[f"kill{load.kills - 1}_at_s"]
    assert figures.values["writers_done_s"] > last_kill, "the writers were done before the kill"


# --- nats-server restarted mid-stream ---------------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(SHORT, id="short"),
        pytest.param(LONG, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(500)]),
    ],
)
async def test_nats_server_restarted_mid_stream_loses_and_duplicates_nothing(
    nats_node: Node, figures: Figures, load: Load
) -> None:
    s = ds_settings(nats_node.url)
    async with AsyncExitStack() as stack:
        gateways = await start_gateways(stack, [s, s])
        run = Run(gateways, load, figures)

        async def fault() -> None:
            for k in range(load.kills):
                await run.progress.reached(k)
                nats_node.kill()
                figures[f"kill{k}_at_s"] = run.clock()
                await asyncio.sleep(load.outage)  # the outage itself: the server stays down
                await asyncio.to_thread(nats_node.start)
                figures[f"down{k}_s"] = run.clock() - figures.values[f"kill{k}_at_s"]

        async with aiohttp.ClientSession() as http:
            await run.main(http, fault)
    # Appends went on across the outage (the gateways may well ride it out unseen).
    last_kill = figures.values[f"kill{load.kills - 1}_at_s"]
    assert figures.values["writers_done_s"] > last_kill + load.outage


# --- 3-node cluster, stream leader killed -----------------------------------------------------


@pytest.mark.parametrize(
    "load",
    [
        pytest.param(SHORT, id="short"),
        pytest.param(LONG, id="long", marks=[pytest.mark.slow, pytest.mark.timeout(500)]),
    ],
)
async def test_cluster_stream_leader_killed_loses_and_duplicates_nothing(
    nats_cluster: Cluster, figures: Figures, load: Load
) -> None:
    from tests.faults.test_cluster_failover import wait_new_leader

    base = ds_settings(",".join(nats_cluster.urls), stream_replicas=3)
    async with AsyncExitStack() as stack:
        admin = await nats.connect(nats_cluster.urls, max_reconnect_attempts=-1)
        stack.push_async_callback(admin.close)
        await nats_cluster.wait_jetstream(admin)
        # The first gateway provisions the stream; the second sits on the leader's node
        # (the worst case: its own server dies under it).
        first = await start_gateways(stack, [base])
        leader = await stream_leader(admin, base.ds_stream_name)
        on_leader = [nats_cluster.node(leader).url] + [
            n.url for n in nats_cluster.nodes if n.name != leader
        ]
        second = await start_gateways(stack, [base.with_(nats_url=",".join(on_leader))])
        gateways = first + second
        run = Run(gateways, load, figures)

        async def fault() -> None:
            current = leader
            for k in range(load.kills):
                await run.progress.reached(k)
                node = nats_cluster.node(current)
                node.kill()
                figures[f"kill{k}_at_s"] = run.clock()
                current = await wait_new_leader(admin, base.ds_stream_name, current)
                figures[f"new_leader{k}_s"] = run.clock() - figures.values[f"kill{k}_at_s"]
                await asyncio.to_thread(node.start)  # back as a follower: quorum for the next

        async with aiohttp.ClientSession() as http:
            await run.main(http, fault)
