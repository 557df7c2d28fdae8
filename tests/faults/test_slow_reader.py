"""Item 6 — slow reader: a reader that stops reading must not grow its replica's memory past a
bound, and must resume correctly afterwards.

The reader lives in a separate replica process (tests/faults/slow_reader_child.py) so that its
memory is measured alone, from /proc, while the job's owner (this process) streams far more
data than the bound through it. Why a bound exists: each reader holds at most
``reader_queue`` events; past that it drops its queue and re-reads from its cursor later
(service/client/reader.py, "catch-up mode").
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings
from tests.faults.conftest import Figures
from tests.faults.workload import check_log, stored_log
from tests.helpers import running_replica
from tests.procs import REPO


@dataclass(frozen=True)
class Slow:
    events: int
    size: int
    """Bytes per event."""
    flush_every: int
    queue: int
    bound_mb: float
    """Allowed RSS growth of the reader's process while it does not read."""
    timeout: float


CASES = [
    pytest.param(Slow(4000, 16_000, 2, 100, 8.0, 50), id="short"),
    pytest.param(
        Slow(30_000, 16_000, 2, 100, 8.0, 400),
        id="long",
        marks=[pytest.mark.slow, pytest.mark.timeout(500)],
    ),
]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("case", CASES)
async def test_reader_that_stops_reading_keeps_memory_bounded_and_resumes_exactly(
    settings: Settings, nats_url: str, nc: NATS, figures: Figures, case: Slow
) -> None:
    async with running_replica(settings, replica_id="slow-owner") as owner:
        job = await owner.create_job("u1", job_id="slow")
        await job.emit(sim.created_event("slow"))
        await job.emit(sim.run_step("step_text", 0))
        await job.flush()
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.faults.slow_reader_child",
            nats_url,
            settings.prefix,
            "slow",
            str(case.queue),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None
        assert child.stdout is not None

        async def ask(cmd: str) -> dict[str, Any]:
            assert child.stdin is not None
            assert child.stdout is not None
            child.stdin.write(cmd.encode() + b"\n")
            await child.stdin.drain()
            line = await child.stdout.readline()
            assert line, "the reader process died"
            out: dict[str, Any] = json.loads(line)
            return out

        try:
            async with asyncio.timeout(case.timeout):
                ready = json.loads(await child.stdout.readline())
                base_kb = ready["rss_kb"]
                peak_kb, max_buffered, reports = base_kb, 0, 0
                pad = "x" * case.size
                for i in range(case.events):
                    # Attachments: big, never merged, and not part of the aggregated content
                    # (whose snapshot must fit in one NATS message).
                    await job.emit({"event": "attachment", "data": {"i": i, "pad": pad}})
                    if (i + 1) % case.flush_every == 0:
                        await job.flush()
                    if (i + 1) % 250 == 0:
                        rep = await ask("report")
                        reports += 1
                        peak_kb = max(peak_kb, rep["rss_kb"], rss_kb(child.pid))
                        max_buffered = max(max_buffered, rep["buffered"])
                        assert rep["buffered"] <= case.queue
                done = await job.complete(sim.final_event("slow"))
                rep = await ask("report")
                peak_kb = max(peak_kb, rep["rss_kb"])
                catchups_while_stopped = rep["catchups"]
                got = await ask("resume")
                assert await child.wait() == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()

    hub = LiveHub(nc, settings)
    log = await stored_log(hub, "slow", timeout=60)
    await hub.close()
    check_log(log)
    rest = [e for e in log if e.seq > ready["first_seq"]]
    digest = hashlib.sha256()
    for e in rest:
        digest.update(e.seq.to_bytes(8, "big") + e.data)
    stored_bytes = sum(len(e.data) for e in log)
    growth_mb = (peak_kb - base_kb) / 1024
    figures.update(
        events_produced=case.events,
        messages_stored=len(log),
        mb_streamed=stored_bytes / 2**20,
        reader_queue=case.queue,
        max_buffered=max_buffered,
        catchups=catchups_while_stopped,
        rss_base_mb=base_kb / 1024,
        rss_growth_mb=growth_mb,
        rss_bound_mb=case.bound_mb,
        received_after_resume=got["count"] - 1,
        lost=max(0, len(rest) - (got["count"] - 1)),
        duplicated=got["duplicates"],
    )
    assert got["last_seq"] == done["seq"] == log[-1].seq
    assert got["ordered"]
    assert got["duplicates"] == 0
    assert got["count"] == 1 + len(rest)
    assert got["digest"] == digest.hexdigest(), "the resumed reader's events differ from the log"
    assert catchups_while_stopped >= 1
    assert stored_bytes / 2**20 > 2 * case.bound_mb, "not enough data to test the bound"
    assert growth_mb < case.bound_mb
