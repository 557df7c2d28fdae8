"""Finding A (docs/reliability.md): `Replica.stop()` must return even when the stop lands while the
janitor is sweeping the job records.

The janitor's sweep reads the jobs bucket with nats-py's ``Subscription.next_msg``, whose inner
``asyncio.wait_for`` (Python 3.11) loses a cancellation that arrives as the message does; the
janitor then loops on in the "cancelling" state and ``stop()`` waits for it forever. Found by
the reconnect storm (its replicas never stopped); here it is provoked directly: many records so
that a sweep takes a while, sweeps back to back, stops at moments spread over the sweeps.
"""

from __future__ import annotations

import asyncio
import random
import time

from schemas.job import JobRecord, JobStatus
from service.config import Settings
from service.server.replica import Replica
from tests.faults.conftest import Figures

RECORDS = 6000
ROUNDS = 12


async def fill_jobs_bucket(r: Replica, n: int) -> None:
    """``n`` finished job records (what a busy day leaves for ``completed_ttl``)."""
    now = int(time.time() * 1000)
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        rec = JobRecord(
            stream_id=f"old{i}",
            user_id="u1",
            status=JobStatus.COMPLETE,
            created_at=now,
            completed_at=now,
            sync_sent=False,
            owner=r.replica_id,
            lease_until=now,
            last_seq=0,
            last_index=-1,
            first_seq=0,
            collected_usage=[],
            usage_claimed=True,
        )
        async with sem:
            await r.store.create_record(rec)

    await asyncio.gather(*(one(i) for i in range(n)))


async def test_replica_stop_returns_even_when_it_lands_mid_sweep(
    settings: Settings, figures: Figures
) -> None:
    s = settings.with_(lease_ttl=0.8, heartbeat_interval=0.2, sweep_interval=0.0)
    rng = random.Random(5)
    filler = Replica(s.with_(replica_id="filler"))
    await filler.start()
    await fill_jobs_bucket(filler, RECORDS)
    await filler.stop()
    hung = 0
    rounds = 0
    worst = 0.0
    for i in range(ROUNDS):
        rounds += 1
        r = Replica(s.with_(replica_id=f"stop{i}"))
        await r.start()
        # The janitor's first sweep starts lease_ttl after start; stop somewhere in the sweeps.
        await asyncio.sleep(s.lease_ttl + rng.random() * 0.5)
        t0 = time.monotonic()
        stopping = asyncio.create_task(r.stop())
        done, _ = await asyncio.wait([stopping], timeout=s.shutdown_grace + 2)
        worst = max(worst, time.monotonic() - t0)
        if done:
            await stopping
            continue
        hung += 1
        # Unstick it for the teardown: with the connection closed the janitor's next NATS call
        # raises, its TaskGroup ends and stop() returns (with that error, already known here).
        await r.nc.close()
        try:
            await asyncio.wait_for(stopping, 10)
        except* Exception:  # the janitor's ConnectionClosedError: the hang is what we report
            pass
        break
    figures.update(records=RECORDS, rounds=rounds, stops_that_hung=hung, worst_stop_s=worst)
    assert hung == 0, f"Replica.stop() did not return within {s.shutdown_grace + 2}s"
