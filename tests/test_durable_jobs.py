"""genjobs jobs read as Durable Streams (``/v1/stream/jobs/<job>``), against a real
nats-server and a real replica: JSON values = the job's events, offsets = their stream
sequences, closed by the terminal event, read-only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec
import nats
import pytest

from service import simulate
from service.config import Settings
from service.http.durable.protocol import format_offset, parse_offset
from service.http.durable.standalone import start_site
from service.server.replica import Replica
from tests.helpers import running_replica


@pytest.fixture
async def site(settings: Settings) -> AsyncIterator[tuple[Replica, str]]:
    s = settings.with_(long_poll_timeout=5.0)
    async with running_replica(s) as replica:
        nc = await nats.connect(s.nats_url or "", name="ds-jobs")
        runner, url = await start_site(nc, s)
        try:
            yield replica, url + "/v1/stream/jobs/"
        finally:
            await runner.cleanup()
            await nc.drain()


async def until(
    http: aiohttp.ClientSession, url: str, offset: str, want: int
) -> tuple[list[Any], str, dict[str, str]]:
    """Long-poll from ``offset`` until ``want`` events arrived (or the stream closed)."""
    events: list[Any] = []
    headers: dict[str, str] = {}
    while len(events) < want:
        async with http.get(url, params={"offset": offset, "live": "long-poll"}) as r:
            assert r.status in (200, 204)
            headers = dict(r.headers)
            offset = r.headers["Stream-Next-Offset"]
            if r.status == 200:
                assert r.headers["Content-Type"] == "application/json"
                events += msgspec.json.decode(await r.read())
            if r.headers.get("Stream-Closed") == "true":
                break
    return events, offset, headers


async def test_a_running_job_reads_as_a_json_stream_closed_by_its_terminal_event(
    site: tuple[Replica, str],
) -> None:
    replica, base = site
    job = await replica.create_job("u1", conversation_id="conv-ds")
    url = base + job.job_id
    async with aiohttp.ClientSession() as http:
        async with job:
            sent = list(simulate.generation(job.job_id, tokens=6))
            for ev in sent[:3]:
                await job.emit(ev)
            first, offset, h = await until(http, url, "-1", 1)
            assert first
            assert "Stream-Closed" not in h
            for ev in sent[3:]:
                await job.emit(ev)
            await job.complete(simulate.final_event(job.job_id))
        # Resume from the offset given: the rest up to the terminal event, nothing twice.
        rest, end, h = await until(http, url, offset, 10**6)
        assert h.get("Stream-Closed") == "true"
        assert rest[-1].get("final") is True
        assert parse_offset(end) is not None
        assert end > offset
        # A catch-up read of the whole job: the same events, closed at the same end.
        async with http.get(url) as r:
            whole = msgspec.json.decode(await r.read())
            assert r.headers["Stream-Closed"] == "true"
            assert r.headers["Stream-Next-Offset"] == end
        assert whole == first + rest
        assert sum(1 for ev in whole if ev.get("final")) == 1
        # SSE from the start: the same events, then the final control event.
        async with http.get(url, params={"offset": "-1", "live": "sse"}) as r:
            text = (await r.read()).decode()
        assert text.rstrip().endswith('"streamClosed":true}')
        sse_events = [
            v
            for block in text.split("\n\n")
            if block.startswith("event: data")
            for v in msgspec.json.decode(
                "\n".join(ln[5:] for ln in block.split("\n")[1:] if ln.startswith("data:"))
            )
        ]
        assert sse_events == whole
        async with http.head(url) as r:
            assert r.headers["Stream-Next-Offset"] == end
            assert r.headers["Stream-Closed"] == "true"


async def test_a_job_stream_is_read_only_and_unknown_jobs_are_404(
    site: tuple[Replica, str],
) -> None:
    replica, base = site
    job = await replica.create_job("u2")
    async with aiohttp.ClientSession() as http:
        async with job:
            for method in ("POST", "PUT", "DELETE"):
                async with http.request(method, base + job.job_id, data=b"[1]") as r:
                    assert r.status == 405
                    assert r.headers["X-Content-Type-Options"] == "nosniff"
            await job.complete(simulate.final_event(job.job_id))
        async with http.get(base + "no-such-job") as r:
            assert r.status == 404
        async with http.get(base + job.job_id, params={"offset": format_offset(0)}) as r:
            assert r.status == 200
