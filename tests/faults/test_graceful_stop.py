"""Item 5 — graceful stop: SIGTERM a real `genjobs serve` owning running jobs mid-generation.

Remote producers stream into the replica over plain NATS (docs/protocol.md, remote producers), readers follow every job.
What must hold (docs/reliability.md): every running job gets its terminal event ("interrupted: replica
shutting down"), every batch the replica acknowledged is stored, the producers learn that their
job ended, nobody keeps waiting, and the process exits 0 within the grace period.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import nats
import pytest

from service.client.reader import LiveHub
from service.config import Settings
from tests.faults.conftest import Figures, fault_settings
from tests.faults.producer import RemoteProducer, api
from tests.faults.workload import (
    Clock,
    Follower,
    Progress,
    check_log,
    log_tokens,
    lost_and_duplicated,
    script,
    script_tokens,
    stored_log,
)
from tests.helpers import aggregate, decode
from tests.procs import ServeProcess

SHUTDOWN_MESSAGE = "interrupted: replica shutting down"


@dataclass(frozen=True)
class Stop:
    jobs: int
    readers: int
    tokens: int
    pace: float
    timeout: float


CASES = [
    pytest.param(Stop(10, 2, 400, 0.02, 50), id="short"),
    pytest.param(
        Stop(100, 3, 1000, 0.02, 150),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(300)],
    ),
]


@pytest.mark.parametrize("case", CASES)
async def test_sigterm_mid_generation_ends_every_job_and_exits_0_within_grace(
    nats_url: str, figures: Figures, case: Stop
) -> None:
    s: Settings = fault_settings(nats_url, replica_id="graceful", shutdown_grace=5.0)
    serve = ServeProcess(s, uvloop=True)
    await asyncio.to_thread(serve.start)
    nc = await nats.connect(nats_url, name="faults-remote-producers")
    hub = LiveHub(nc, s, idle_check=2.0)
    clock = Clock()
    try:
        producers: list[RemoteProducer] = []
        followers: list[Follower] = []
        for j in range(case.jobs):
            job_id = f"graceful{j}"
            rec = await api(nc, s, "create", {"userId": "u1", "jobId": job_id})
            assert rec["owner"] == "graceful"
            producers.append(
                RemoteProducer(nc, s, job_id, script(job_id, case.tokens), pace=case.pace)
            )
            followers += [Follower(job_id) for _ in range(case.readers)]
        progress = Progress(sum(len(p.events) for p in producers), [0.3])
        for p in producers:
            p.on_ack = progress
        stop_s: float | None = None
        code: int | None = None

        async def terminate() -> None:
            nonlocal stop_s, code
            await progress.reached(0)
            t0 = time.monotonic()
            serve.sigterm()
            code = await asyncio.to_thread(serve.wait, s.shutdown_grace + 10)
            stop_s = time.monotonic() - t0
            terminated.set_result(clock())

        terminated: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(case.timeout), asyncio.TaskGroup() as tg:
            tg.create_task(terminate())
            for f in followers:
                tg.create_task(f.follow(lambda: hub))
            for p in producers:
                tg.create_task(p.run())
        t_term = terminated.result()
        assert code == 0, f"exit code {code}\n{serve.tail()}"
        assert stop_s is not None
        assert stop_s < s.shutdown_grace, serve.tail()

        lost = dups = stored = 0
        for p in producers:
            log = await stored_log(hub, p.job_id)
            check_log(log)
            stored += len(log)
            assert log[-1].kind == "error", f"{p.job_id} ended with {log[-1].kind}"
            assert decode(log[-1].data)["error"] == SHUTDOWN_MESSAGE
            acked = script_tokens(p.events[: p.acked_events])
            tokens = log_tokens(log)
            l_, d_ = lost_and_duplicated(acked, tokens)
            lost, dups = lost + l_, dups + d_
            assert tokens[: len(acked)] == acked
            # The producer learned that its job ended (an error reply, or "not running").
            assert p.result is None, p
            assert p.error is not None or p.gone_status == "error", p
            seqs = [e.seq for e in log]
            steps = aggregate([decode(e.data) for e in log if e.kind == "step"])
            for f in (f for f in followers if f.job_id == p.job_id):
                assert f.terminal is not None
                assert f.terminal.seq == seqs[-1]
                lost += f.missing(seqs)
                dups += f.duplicates()
                assert aggregate(f.steps) == steps
        figures.update(
            jobs=case.jobs,
            readers=len(followers),
            events_sent=sum(p.sent_events for p in producers),
            events_acked=sum(p.acked_events for p in producers),
            messages_stored=stored,
            lost=lost,
            duplicated=dups,
            exit_code=code,
            stop_s=stop_s,
            grace_s=s.shutdown_grace,
            max_reader_stall_s=max(f.max_stall for f in followers),
            producers_told_by_error_reply=sum(p.error is not None for p in producers),
            producers_told_by_status=sum(p.gone_status is not None for p in producers),
            sigterm_at_s=t_term - (stop_s or 0),
        )
        assert lost == 0
        assert dups == 0
    finally:
        serve.close()
        await hub.close()
        await nc.close()
