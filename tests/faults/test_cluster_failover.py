"""Item 3 — cluster failover: a 3-node NATS cluster on loopback, the event stream and every KV
bucket at 3 replicas; kill -9 the stream leader mid-generation.

The replica is connected to the leader's node on purpose (the worst case: its own server dies
and it must reconnect to a node it only learnt about from the cluster's gossip), readers to
another node. What must hold: no acknowledged event is lost, no reader sees a gap or a
duplicate, every job completes; the stall (how long producers and readers waited) is reported.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
from dataclasses import dataclass

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from service.client.reader import LiveHub
from service.nats.provision import provision
from service.server.replica import Replica
from tests.faults.conftest import Cluster, Figures, fault_settings, freeze, stream_leader, thaw
from tests.faults.workload import (
    Clock,
    Follower,
    Producer,
    check_log,
    log_tokens,
    lost_and_duplicated,
    replica_must_survive,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import aggregate

log = logging.getLogger("genjobs.tests.failover")


@dataclass(frozen=True)
class Failover:
    jobs: int
    readers: int
    tokens: int
    kills: int
    pace: float
    timeout: float
    freeze: float = 0.0
    """Seconds a second node stays frozen (SIGSTOP) after the kill: no quorum, no leader."""
    seed: int = 3


CASES = [
    pytest.param(Failover(8, 2, 150, 1, 0.02, 80), id="short"),
    pytest.param(
        Failover(60, 3, 600, 3, 0.02, 400),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(600)],
    ),
]

QUORUM_LOST = Failover(8, 2, 150, 1, 0.02, 80, freeze=8.0)


async def wait_new_leader(nc: NATS, stream: str, old: str, timeout: float = 60.0) -> str:
    """Until the stream reports a leader other than ``old``, woken by nats-server's
    ``$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.<stream>`` advisory (subscribed before the first
    look, so an election after it wakes us). An advisory lost while this client reconnects is
    covered by looking again after at most a second without one."""
    elected: asyncio.Queue[None] = asyncio.Queue()

    async def on_advisory(_msg: Msg) -> None:
        elected.put_nowait(None)

    sub = await nc.subscribe(f"$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{stream}", cb=on_advisory)
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    leader = await stream_leader(nc, stream)
                    if leader != old:
                        return leader
                except (AssertionError, nats.errors.Error, TimeoutError) as e:
                    log.debug("no new leader of %s yet: %r", stream, e)  # electing
                try:
                    async with asyncio.timeout(1.0):
                        await elected.get()
                except TimeoutError:
                    log.debug("no election advisory for %s within 1 s; looking again", stream)
    finally:
        await sub.unsubscribe()


@pytest.mark.parametrize("case", CASES)
async def test_stream_leader_kill9_loses_nothing_and_reports_the_stall(
    nats_cluster: Cluster, cluster_nc: NATS, figures: Figures, case: Failover
) -> None:
    await failover_run(nats_cluster, cluster_nc, figures, case)


# One loop: the outage is a fixed 8 s whatever the loop (the slowest short case), and the
# loop-specific paths (reconnect, election, retries) are covered by the case above under both.
@pytest.mark.asyncio(loop_factories=["asyncio"])
# nats-py leaks a socket when a reconnect attempt reaches the frozen server: TCP connects, INFO
# never comes, and the timed-out transport is dropped unclosed (Client._attempt_reconnect).
# Not ours; the leaked objects are collected (and so reported) inside this test.
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <(function (StreamWriter|_SelectorTransport)"
    "[.]__del__|socket[.]socket):pytest.PytestUnraisableExceptionWarning"
)
async def test_quorum_lost_8s_after_leader_kill_jobs_ride_it_out(
    nats_cluster: Cluster, cluster_nc: NATS, figures: Figures
) -> None:
    """The leader is killed and a second node frozen (SIGSTOP) for 8 s: no quorum, no stream
    leader, no KV leader. Jobs wait (their publishes retry within ``publish_outage_budget``,
    producers feel backpressure) and then finish exactly; readers see errors and resume by seq."""
    await failover_run(nats_cluster, cluster_nc, figures, QUORUM_LOST)


async def failover_run(
    nats_cluster: Cluster, cluster_nc: NATS, figures: Figures, case: Failover
) -> None:
    rng = random.Random(case.seed)
    clock = Clock()
    s = fault_settings(nats_cluster.urls[0], stream_replicas=3)
    await provision(cluster_nc.jetstream(timeout=10), s)
    leader = await stream_leader(cluster_nc, s.stream_name)
    first_leader = leader
    # The replica sits on the leader's node; the readers on another one.
    s = s.with_(nats_url=nats_cluster.node(leader).url)
    reader_url = next(n.url for n in nats_cluster.nodes if n.name != leader)
    replica = Replica(s)
    await replica.start()
    hub: LiveHub | None = None

    async def on_reconnect() -> None:
        if hub is not None:
            hub.on_reconnected()

    reader_nc = await nats.connect(
        reader_url, reconnected_cb=on_reconnect, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )
    hub = LiveHub(reader_nc, s, idle_check=2.0)
    total = case.jobs * len(script("x", case.tokens))
    progress = 0
    kill_at = [(total * (k + 1) // (case.kills + 2), asyncio.Event()) for k in range(case.kills)]

    def on_ack(n: int) -> None:
        nonlocal progress
        progress += n
        for at, ev in kill_at:
            if progress >= at:
                ev.set()

    producers = []
    followers = []
    for j in range(case.jobs):
        job_id = f"fail{j}"
        job = await replica.create_job("user1", job_id=job_id)
        producers.append(
            Producer(job, script(job_id, case.tokens), rng, pace=case.pace, on_ack=on_ack)
        )
        followers += [Follower(job_id) for _ in range(case.readers)]

    elections: list[float] = []
    killed: list[str] = []

    async def failover() -> None:
        nonlocal leader
        for k, (_, reached) in enumerate(kill_at):
            await reached.wait()
            node = nats_cluster.node(leader)
            t0 = clock()
            await asyncio.to_thread(node.kill)
            killed.append(leader)
            if case.freeze:
                frozen = next(n for n in nats_cluster.nodes if n.alive and n.name != leader)
                assert frozen.pid is not None
                await freeze(frozen.pid)  # the survivors have no quorum
                try:
                    await asyncio.sleep(case.freeze)  # the fault's duration
                finally:
                    thaw(frozen.pid)
            leader = await wait_new_leader(cluster_nc, s.stream_name, leader)
            elections.append(clock() - t0)
            if k + 1 < len(kill_at):
                await asyncio.to_thread(node.start)  # back as a follower, for the next kill

    try:
        async with asyncio.timeout(case.timeout), asyncio.TaskGroup() as tg:
            watchdog = tg.create_task(replica_must_survive(replica))
            work = [tg.create_task(failover())]
            work += [tg.create_task(f.follow(lambda: hub)) for f in followers]
            work += [tg.create_task(p.run()) for p in producers]
            await asyncio.wait(work)
            watchdog.cancel()
        run_s = clock()

        lost = dups = stored = 0
        for p in producers:
            assert p.result is not None, f"{p.job_id} did not complete: {p.gave_up!r}"
            log = await stored_log(hub, p.job_id)
            check_log(log)
            stored += len(log)
            tokens = log_tokens(log)
            l_, d_ = lost_and_duplicated(script_tokens(p.events), tokens)
            lost, dups = lost + l_, dups + d_
            assert tokens == script_tokens(p.events)
            seqs = [e.seq for e in log]
            expected = aggregate(p.events)
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                assert f.terminal.kind == "final"
                lost += f.missing(seqs)
                dups += f.duplicates()
                assert aggregate(f.steps) == expected
        figures.update(
            jobs=case.jobs,
            readers=len(followers),
            leader_kills=len(killed),
            frozen_s=case.freeze,
            first_leader=first_leader,
            election_max_s=max(elections),
            events_produced=sum(p.emitted for p in producers),
            events_acked=sum(p.acked for p in producers),
            messages_stored=stored,
            messages_received=sum(len(f.seqs) for f in followers),
            lost=lost,
            duplicated=dups,
            max_producer_stall_s=max(p.max_flush_s for p in producers),
            max_reader_stall_s=max(f.max_stall for f in followers),
            reader_outage_errors=sum(f.outage_errors for f in followers),
            publish_retries=replica.store.publisher.outage_retries,
            outage_budget_s=s.publish_outage_budget,
            replica_reconnects=replica.nc.stats["reconnects"],
            run_s=run_s,
        )
        await replica.stop()
    finally:
        await hub.close()
        await reader_nc.close()
        if not replica.stopped:  # a failure path: the replica must not outlive the test
            try:
                await replica.kill()
            except* Exception:  # its supervisor's own failure, already reported by the watchdog
                pass
        if case.freeze:
            gc.collect()  # nats-py's leaked sockets (see CASES) are reported here, not later
    assert lost == 0
    assert dups == 0
    assert replica.nc.stats["reconnects"] >= 1  # its own server died under it
    # Every job rode the outage out: nobody waited longer than the budget allows.
    assert max(p.max_flush_s for p in producers) < s.publish_outage_budget + s.publish_timeout
