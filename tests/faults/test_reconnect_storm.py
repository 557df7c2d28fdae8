"""Item 1 — reconnect storm: many readers per job leave and resume by seq at random moments,
on random gateways (connections), while whole gateways restart under them.

Nothing is injected into NATS here: the fault is the readers' own churn, which is what a fleet
of browsers behind SSE gateways produces on a bad day. Every reader must end with every event
of its job exactly once, in order, and with the job's full content.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError

from service.client.reader import HubClosed, LiveHub
from service.config import Settings
from service.nats.directget import client_for
from service.nats.provision import provision
from tests.faults.conftest import Figures, Node, fault_settings, freeze, thaw
from tests.faults.workload import (
    Clock,
    Follower,
    Producer,
    check_log,
    log_tokens,
    lost_and_duplicated,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import aggregate, running_replica, wait_for


@dataclass(frozen=True)
class Storm:
    jobs: int
    readers: int
    reconnects: int
    tokens: int
    gateways: int
    gateway_restarts: int
    pace: float
    timeout: float
    seed: int = 7


CASES = [
    pytest.param(Storm(20, 3, 3, 30, 3, 2, 0.01, 45), id="short"),
    pytest.param(
        Storm(200, 5, 10, 100, 4, 12, 0.02, 600),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(900)],
    ),
]


class Gateways:
    """A pool of reader connections, each with its LiveHub; one can be restarted at any time."""

    def __init__(self, url: str, settings: Settings, rng: random.Random) -> None:
        self.url = url
        self.s = settings
        self.rng = rng
        self.pool: list[tuple[NATS, LiveHub]] = []
        self.restarts = 0

    async def _open(self) -> tuple[NATS, LiveHub]:
        nc = await nats.connect(self.url, name="faults-gateway")
        return nc, LiveHub(nc, self.s)

    async def start(self, n: int) -> None:
        self.pool = [await self._open() for _ in range(n)]

    def pick(self) -> LiveHub:
        return self.rng.choice(self.pool)[1]

    async def restart_one(self) -> None:
        """Replace one gateway, then close the old one under its readers (they are cut off)."""
        i = self.rng.randrange(len(self.pool))
        old_nc, old_hub = self.pool[i]
        self.pool[i] = await self._open()
        await old_hub.close()
        await old_nc.close()
        self.restarts += 1

    async def close(self) -> None:
        for nc, hub in self.pool:
            await hub.close()
            await nc.close()


@pytest.mark.parametrize("case", CASES)
async def test_reconnect_storm_every_reader_gets_every_event_once(
    settings: Settings, nats_url: str, figures: Figures, case: Storm
) -> None:
    rng = random.Random(case.seed)
    clock = Clock()
    total_events = case.jobs * len(script("x", case.tokens))
    progress = 0
    thresholds = [
        (total_events * (k + 1) // (case.gateway_restarts + 1), asyncio.Event())
        for k in range(case.gateway_restarts)
    ]

    def on_ack(n: int) -> None:
        nonlocal progress
        progress += n
        for at, ev in thresholds:
            if progress >= at:
                ev.set()

    gateways = Gateways(nats_url, settings, rng)
    await gateways.start(case.gateways)

    async def storm() -> None:
        for _, reached in thresholds:
            await reached.wait()
            await gateways.restart_one()

    async with (
        running_replica(settings, replica_id="storm-a") as r1,
        running_replica(settings, replica_id="storm-b") as r2,
    ):
        producers: list[Producer] = []
        followers: list[Follower] = []
        for j in range(case.jobs):
            job_id = f"storm{j}"
            owner = (r1, r2)[j % 2]
            job = await owner.create_job(f"user{j % 7}", job_id=job_id)
            p = Producer(job, script(job_id, case.tokens), rng, pace=case.pace, on_ack=on_ack)
            producers.append(p)
            for _ in range(case.readers):
                drops = rng.sample(range(1, p.min_messages), case.reconnects)
                followers.append(Follower(job_id, drops=drops))
        async with asyncio.timeout(case.timeout), asyncio.TaskGroup() as tg:
            storm_task = tg.create_task(storm())
            for f in followers:
                tg.create_task(f.follow(gateways.pick))
            await asyncio.gather(*(p.run() for p in producers))
            # Every producer finished: the storm has seen all its thresholds.
            await storm_task
        generation_s = clock()
        await gateways.close()

        check_nc = await nats.connect(nats_url)
        hub = LiveHub(check_nc, settings)
        stored_total = lost = dups = 0
        for p in producers:
            assert p.result is not None, f"{p.job_id}: producer did not complete ({p.gave_up!r})"
            log = await stored_log(hub, p.job_id)
            check_log(log)
            assert log[-1].kind == "final"
            l_, d_ = lost_and_duplicated(script_tokens(p.events), log_tokens(log))
            lost += l_
            dups += d_
            stored_total += len(log)
            seqs = [e.seq for e in log]
            expected = aggregate(p.events)
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                lost += f.missing(seqs)
                dups += f.duplicates()
                assert f.in_order(), f"{f.job_id}: events out of order"
                assert aggregate(f.steps) == expected, f"{f.job_id}: reader content differs"
        await hub.close()
        await check_nc.close()

    received = sum(len(f.seqs) for f in followers)
    figures.update(
        jobs=case.jobs,
        readers=len(followers),
        events_produced=total_events + case.jobs,
        messages_stored=stored_total,
        messages_received=received,
        lost=lost,
        duplicated=dups,
        planned_resumes=sum(len(f.drops) for f in followers),
        resumes=sum(f.resumes for f in followers),
        gateway_restarts=gateways.restarts,
        forced_resumes=sum(f.forced for f in followers),
        cut_off_mid_request=sum(f.cut_timeouts for f in followers),
        max_stall_s=max(f.max_stall for f in followers),
        max_resume_stall_s=max(f.max_resume_stall for f in followers),
        generation_s=generation_s,
    )
    assert lost == 0
    assert dups == 0
    # Every planned drop happened (each before its job's terminal event), plus the forced ones.
    assert all(f.resumes == len(f.drops) + f.forced for f in followers)
    assert gateways.restarts == case.gateway_restarts


async def test_gateway_closing_under_a_replaying_reader_ends_it_at_once(
    nats_node: Node, figures: Figures
) -> None:
    """What the storm's gateway restarts hit (``cut_off_mid_request``): a reader in the middle
    of a replay when its gateway shuts down should end at once with HubClosed (or the
    documented ConnectionClosedError), so its client resumes elsewhere without delay."""
    s = fault_settings(nats_node.url, request_timeout=3.0)
    nc = await nats.connect(nats_node.url, max_reconnect_attempts=-1)
    js = nc.jetstream()
    await provision(js, s)
    headers = {"Genjobs-Kind": "created", "Genjobs-Index": "0"}
    await js.publish(s.events_subject("cut"), b'{"created": true}', headers=headers)
    hub = LiveHub(nc, s)
    async with hub.subscribe("cut") as reader:
        assert (await anext(reader)).index == 0
        assert nats_node.pid is not None
        await freeze(nats_node.pid)  # a frozen server: requests go unanswered
        pending = asyncio.create_task(anext(reader))
        hub.on_reconnected()  # as after a reconnect: the reader re-reads from its cursor

        async def replaying() -> bool:  # its re-read request is out, unanswered
            return bool(client_for(nc)._pending)

        await wait_for(replaying, timeout=2)
        assert not pending.done()
        t0 = time.monotonic()
        await hub.close()  # the gateway shuts down: hub first, then its connection
        await nc.close()
        try:
            with pytest.raises((HubClosed, ConnectionClosedError)):
                await pending
            ended_after = time.monotonic() - t0
        finally:
            thaw(nats_node.pid)
    figures.update(ended_after_s=ended_after, request_timeout_s=s.request_timeout)
    assert ended_after < 1.0
