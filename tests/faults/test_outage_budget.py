"""Bug B — the outage budget: a publish rides out an unavailable event stream for
``publish_outage_budget`` seconds (producers wait), then fails the job loudly.

Two faults against a real nats-server: a stream that does not answer (503 "no responders", what
a leader election looks like to a publisher) and a frozen server (SIGSTOP: acks never come).
"""

from __future__ import annotations

import asyncio
import re
import time

import nats
import pytest
from nats.aio.client import Client as NATS

from schemas.errors import JobEnded, StoreFailed
from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings
from service.nats.directget import client_for
from service.nats.outage import OutagePolicy, ride_out
from service.nats.provision import provision
from service.nats.publisher import FencedPublisher
from tests.faults.conftest import Figures, Node, fault_settings, freeze, thaw
from tests.faults.workload import check_log, stored_log
from tests.helpers import decode, running_replica, wait_for

HEADERS = {"Genjobs-Kind": "step", "Genjobs-Index": "0", "Genjobs-Writer": "w1"}


async def test_publish_waits_for_a_stream_that_answers_within_the_budget(
    settings: Settings, nc: NATS, figures: Figures
) -> None:
    """503 until the stream exists (as during an election), then stored exactly once."""
    pub = FencedPublisher(nc, timeout=1.0, policy=OutagePolicy(budget=20.0))
    await pub.start()
    subject = settings.events_subject("b1")
    t0 = time.monotonic()
    try:
        task = asyncio.create_task(
            pub.publish_fenced(
                settings.stream_name, subject, b"{}", HEADERS, expected_last=0, index=0
            )
        )

        async def retried() -> bool:
            return pub.outage_retries >= 3

        await wait_for(retried, timeout=10)
        assert not task.done()
        await provision(nc.jetstream(), settings)  # the stream "gets a leader"
        seq = await asyncio.wait_for(task, 10)
    finally:
        await pub.close()
    last = await client_for(nc).last_msg(settings.stream_name, subject)
    assert last is not None
    assert last.seq == seq
    info = await nc.jetstream().stream_info(settings.stream_name)
    assert info.state.messages == 1
    figures.update(retries=pub.outage_retries, waited_s=time.monotonic() - t0)


async def test_publish_fails_loudly_once_the_budget_is_spent(
    settings: Settings, nc: NATS, figures: Figures
) -> None:
    budget = 1.5
    pub = FencedPublisher(nc, timeout=1.0, policy=OutagePolicy(budget=budget))
    await pub.start()
    t0 = time.monotonic()
    try:
        with pytest.raises(StoreFailed, match="outage budget") as err:
            await pub.publish_fenced(
                settings.stream_name,
                settings.events_subject("never"),
                b"{}",
                HEADERS,
                expected_last=0,
                index=0,
                retries=0,
            )
    finally:
        await pub.close()
    gave_up_after = time.monotonic() - t0
    figures.update(budget_s=budget, gave_up_after_s=gave_up_after, retries=pub.outage_retries)
    assert err.value.code == "unavailable"
    assert pub.outage_retries >= 3  # it backed off and retried, not one shot
    # Not before the budget; not much after it (one backoff step at most).
    assert budget <= gave_up_after < budget + 1.0 + 1.0


async def test_frozen_server_shorter_than_the_budget_is_ridden_out_longer_fails_the_job(
    nats_node: Node, figures: Figures
) -> None:
    """SIGSTOP the single server: acks stop coming. A job whose outage ends within the budget
    completes with every event exactly once; a job frozen past the budget fails, and its
    terminal error (written once the server is back) says why."""
    s = fault_settings(
        nats_node.url,
        publish_timeout=0.5,
        publish_retries=0,
        publish_outage_budget=3.0,
        request_timeout=2.0,
    )
    assert nats_node.pid is not None
    pid = nats_node.pid
    async with running_replica(s, replica_id="budget") as replica:
        reader_nc = await nats.connect(nats_node.url, max_reconnect_attempts=-1)
        hub = LiveHub(reader_nc, s)
        try:
            # 1. An outage shorter than the budget: the producer waits, nothing is lost.
            ok = await replica.create_job("u1", job_id="short-outage")
            await ok.emit(sim.created_event("short-outage"))
            await ok.emit(sim.run_step("step_text", 0))
            await ok.flush()
            await freeze(pid)
            try:
                t0 = time.monotonic()
                await ok.emit(sim.text_delta("step_text", "during "))
                flushing = asyncio.create_task(ok.flush())
                await asyncio.sleep(1.5)  # the fault's duration
                assert not flushing.done()  # backpressure: the producer waits
            finally:
                thaw(pid)
            await asyncio.wait_for(flushing, s.publish_outage_budget + 5)
            ridden_out = time.monotonic() - t0
            await ok.emit(sim.text_delta("step_text", "after"))
            done = await ok.complete(sim.final_event("short-outage"))
            assert done["status"] == "complete"
            log = await stored_log(hub, "short-outage")
            check_log(log)
            assert [e.kind for e in log].count("step") == 3  # run step + 2 deltas, each once

            # 2. An outage longer than the budget: the job fails loudly.
            bad = await replica.create_job("u1", job_id="long-outage")
            await bad.emit(sim.created_event("long-outage"))
            await bad.flush()
            await freeze(pid)
            try:
                t0 = time.monotonic()
                await bad.emit(sim.run_step("step_text", 0))
                flushing = asyncio.create_task(bad.flush())
                await asyncio.sleep(s.publish_outage_budget + 2.0)  # the fault's duration
            finally:
                thaw(pid)
            with pytest.raises(JobEnded):
                await asyncio.wait_for(flushing, 30)
            failed_after = time.monotonic() - t0
            log = await stored_log(hub, "long-outage")
            check_log(log)
            assert log[-1].kind == "error"
            message = decode(log[-1].data)["error"]
            assert "outage budget" in message, message
            rec, _ = await replica.ops.record("long-outage", "u1", None)
            assert rec.status.value == "error"
        finally:
            await hub.close()
            await reader_nc.close()
    figures.update(
        budget_s=s.publish_outage_budget,
        ridden_out_s=ridden_out,
        failed_after_s=failed_after,
        error=message,
    )
    assert failed_after >= s.publish_outage_budget
    # It gave up because the budget was spent (not on the first timeouts, not much later).
    m = re.search(r"unavailable for ([0-9.]+) s", message)
    assert m is not None, message
    assert s.publish_outage_budget <= float(m.group(1)) < s.publish_outage_budget * 2


async def test_kv_write_rides_out_a_bucket_that_does_not_answer(
    settings: Settings, nc: NATS, figures: Figures
) -> None:
    """The job record, user index and cleanup writes get the same budget as events: a KV
    write whose bucket answers 503 (as while its own leader is elected, which happens apart
    from the event stream's) is retried until the bucket answers."""
    js = nc.jetstream(timeout=1.0)
    bucket = f"{settings.prefix}-ride"
    tries = 0

    async def put() -> int:
        nonlocal tries
        tries += 1
        ack = await js.publish(f"$KV.{bucket}.k", b"v")
        return int(ack.seq)

    task = asyncio.create_task(ride_out(put, OutagePolicy(budget=20.0), what="test put"))

    async def retried() -> bool:
        return tries >= 3

    await wait_for(retried, timeout=10)
    assert not task.done()
    await js.create_key_value(bucket=bucket)  # the bucket "gets a leader"
    assert await asyncio.wait_for(task, 10) == 1
    entry = await (await js.key_value(bucket)).get("k")
    assert entry.value == b"v"
    figures.update(tries=tries)
    with pytest.raises(StoreFailed, match="outage budget"):
        await ride_out(
            lambda: js.publish(f"$KV.{bucket}-none.k", b"v"),
            OutagePolicy(budget=0.5),
            what="never answered",
        )
