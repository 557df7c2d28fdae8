"""Durable Streams clients read a running genjobs job at ``/v1/stream/jobs/<job>``.

The two official clients, unchanged: ``@durable-streams/client`` (TypeScript, run by Node from
the repo's ``package.json``: ``tests/js/ds_job_reader.mjs``) and ``durable-streams`` (Python,
from PyPI). Each opens the job while it is still generating, drops off every few events and
resumes from the offset the client reported, in SSE and in long-poll mode; what it read must be
exactly the job's stored events, each once, in order, ending with the terminal event, and the
stream must then say it is closed.

The gateway is a real process (``python -m service.cli gateway``); the job runs on a replica
in the test's process, pacing its events so that the readers really follow it live.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.client.reader import LiveHub
from service.config import Settings
from service.server.replica import Replica
from tests.faults.gateway import ds_gateway, stream_url
from tests.faults.workload import Producer, script, stored_log
from tests.helpers import decode
from tests.procs import GatewayProcess

REPO = Path(__file__).resolve().parent.parent
READER_JS = REPO / "tests" / "js" / "ds_job_reader.mjs"
TOKENS = 40
DROP_EVERY = 7
TIMEOUT = 45.0

# The clients are the subject here, and the gateway is its own process: one loop suffices.
pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])


def _node_missing() -> str | None:
    """Why the TypeScript client cannot run here; installs it (``npm ci`` from the repo's
    lock file, as the conformance run does) when only node_modules is missing or stale."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "Node.js (node, npm) is not installed"
    from conformance.run import ensure_node_modules

    ensure_node_modules()
    return None


def job_url(gateway: GatewayProcess, job_id: str) -> str:
    return stream_url(gateway.url, f"jobs/{job_id}")


class LiveJob:
    """A gateway, a replica and one paced job on it; ``stored()`` is what the job stored."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings.with_(long_poll_timeout=1.0)
        self.gateway = ds_gateway(self.s, name="gw")
        self.replica = Replica(self.s)
        self.job_id = ""
        self.producer: Producer | None = None

    async def __aenter__(self) -> LiveJob:
        await self.gateway.start_async()
        await self.replica.start()
        job = await self.replica.create_job("user1")
        self.job_id = job.job_id
        self.producer = Producer(
            job, script(job.job_id, TOKENS), random.Random(5), burst=(1, 2), pace=0.03
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.replica.stop()
        finally:
            self.gateway.close()

    async def stored(self) -> list[dict[str, Any]]:
        hub = LiveHub(self.replica.nc, self.s)
        try:
            return [decode(e.data) for e in await stored_log(hub, self.job_id)]
        finally:
            await hub.close()


async def closed_at(url: str, offset: str) -> bool:
    """A catch-up read at ``offset`` is empty and says the stream is closed."""
    async with aiohttp.ClientSession() as http, http.get(url, params={"offset": offset}) as r:
        assert r.status == 200, (r.status, await r.text())
        assert json.loads(await r.read()) == []
        return r.headers.get("Stream-Closed") == "true"


def check(items: list[Any], stored: list[dict[str, Any]], sessions: int) -> None:
    assert len(stored) >= TOKENS // 2, "the job stored too few events to test resumption"
    assert items == stored, (
        f"read {len(items)} events, the job stored {len(stored)}; first difference at "
        f"{next((i for i, (a, b) in enumerate(zip(items, stored, strict=False)) if a != b), None)}"
    )
    assert stored[-1].get("final") or stored[-1].get("error"), stored[-1]
    assert sessions > 2, f"only {sessions} sessions: the reader never dropped off mid-job"


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_typescript_client_follows_a_running_job_across_drops_and_reads_every_event_once(
    settings: Settings, live: str
) -> None:
    reason = _node_missing()
    if reason is not None:
        pytest.skip(reason)
    async with LiveJob(settings) as lj:
        assert lj.producer is not None
        url = job_url(lj.gateway, lj.job_id)
        async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tg:
            tg.create_task(lj.producer.run())
            proc = await asyncio.create_subprocess_exec(
                "node",
                str(READER_JS),
                url,
                live,
                str(DROP_EVERY),
                str(TIMEOUT - 5),
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
        lines = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        assert proc.returncode == 0, (lines[-1:], err.decode()[-2000:])
        assert lines[-1].get("done"), lines[-1]
        items = [line["item"] for line in lines if "item" in line]
        assert lj.producer.result is not None, "the job did not complete"
        check(items, await lj.stored(), lines[-1]["sessions"])
        assert await closed_at(url, lines[-2]["offset"])


async def python_client_read(url: str, live: str) -> tuple[list[Any], int, str]:
    """Read with the ``durable-streams`` Python client, dropping off after every DROP_EVERY
    events and resuming from the last ``next_offset`` it reported, until the terminal event.

    The 0.1.0 client predates stream closure (it knows no ``Stream-Closed``), so, like any
    consumer of a genjobs job, it stops at the job's terminal event."""
    from durable_streams import astream

    items: list[Any] = []
    offset = "-1"
    sessions = 0
    while True:
        sessions += 1
        dropped = False
        async with astream(url, offset=offset, live=live) as res:
            async for ev in res.iter_events(mode="json"):
                items.extend(ev.data)
                offset = ev.next_offset
                if items and (items[-1].get("final") or items[-1].get("error")):
                    return items, sessions, offset
                if len(items) // DROP_EVERY > (len(items) - len(ev.data)) // DROP_EVERY:
                    dropped = True
                    break
        assert dropped, f"session {sessions} ended without the terminal event"


@pytest.mark.parametrize("live", ["sse", "long-poll"])
async def test_python_client_follows_a_running_job_across_drops_and_reads_every_event_once(
    settings: Settings, live: str
) -> None:
    async with LiveJob(settings) as lj:
        assert lj.producer is not None
        url = job_url(lj.gateway, lj.job_id)
        async with asyncio.timeout(TIMEOUT), asyncio.TaskGroup() as tg:
            tg.create_task(lj.producer.run())
            reading = tg.create_task(python_client_read(url, live))
        items, sessions, offset = reading.result()
        assert lj.producer.result is not None, "the job did not complete"
        check(items, await lj.stored(), sessions)
        assert await closed_at(url, offset)
