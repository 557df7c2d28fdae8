"""The gateway's SSE route against a real nats-server and a real replica: every frame carries
its stream seq, a client that drops and comes back with Last-Event-ID (or ?after=, or
?resume=true) sees every event exactly once, and the stream ends after the terminal event."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from service.config import Settings

from .http_helpers import (
    Frame,
    auth,
    gateway,
    produce,
    read_sse,
    seen,
    serving,
    stored,
)

CHAT = "/api/agents/chat"


async def test_stream_of_a_finished_job_is_its_log_with_ids_then_ends(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw:
        await produce(replica, "u1", "job-done")
        async with aiohttp.ClientSession() as s:
            got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-done", headers=auth("u1"))
        assert got.status == 200
        assert got.headers["Content-Type"].startswith("text/event-stream")
        assert got.headers["Cache-Control"] == "no-cache, no-transform"
        assert got.headers["X-Accel-Buffering"] == "no"
        assert got.headers["Content-Encoding"] == "identity"
        assert got.retry == 1000
        assert got.complete
        assert not got.broken
        assert seen(got.frames) == await stored(gw.nc, settings, "job-done")
        assert {f.event for f in got.frames} == {"message"}
        assert got.frames[-1].json()["final"] is True


async def test_client_dropping_mid_stream_resumes_by_last_event_id_exactly_once(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                produce(
                    replica, "u1", "job-live", tokens=40, gate=gate, gate_at=20, created=created
                )
            )
            url = f"{gw.url}{CHAT}/stream/job-live"
            await created.wait()
            # Read part of it live, then drop the connection.
            first = await read_sse(s, url, headers=auth("u1"), stop_after=5)
            assert first.status == 200
            assert len(first.frames) == 5
            last_id = first.frames[-1].id
            assert last_id is not None
            gate.set()
            rest = await read_sse(s, url, headers={**auth("u1"), "Last-Event-ID": last_id})
        assert rest.complete
        assert seen(first.frames + rest.frames) == await stored(gw.nc, settings, "job-live")


async def test_after_query_parameter_continues_like_last_event_id(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-after")
        log = await stored(gw.nc, settings, "job-after")
        cut = log[7][0]
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-after?after={cut}", headers=auth("u1"))
        assert seen(got.frames) == log[8:]
        # The header wins over the query (a browser reconnect keeps the first URL).
        got = await read_sse(
            s,
            f"{gw.url}{CHAT}/stream/job-after?after=0",
            headers={**auth("u1"), "Last-Event-ID": log[-3][0]},
        )
        assert seen(got.frames) == log[-2:]


async def test_reconnect_after_the_terminal_event_gets_204(settings: Settings) -> None:
    """204 is how an EventSource learns to stop reconnecting."""
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-204")
        log = await stored(gw.nc, settings, "job-204")
        got = await read_sse(
            s, f"{gw.url}{CHAT}/stream/job-204", headers={**auth("u1"), "Last-Event-ID": log[-1][0]}
        )
        assert got.status == 204


@pytest.mark.parametrize("bad", ["x", "-1", "1.5", "99999999999999999999"])
async def test_malformed_last_event_id_is_400_json(settings: Settings, bad: str) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-bad", tokens=3)
        got = await read_sse(
            s, f"{gw.url}{CHAT}/stream/job-bad", headers={**auth("u1"), "Last-Event-ID": bad}
        )
        assert got.status == 400
        assert got.body["error"] == "Invalid sequence"


async def test_gateway_stopping_breaks_streams_and_they_resume_on_another_gateway(
    settings: Settings,
) -> None:
    """A stopping gateway ends its SSE responses without a clean end (every client library
    reconnects then); the client continues on another gateway by Last-Event-ID."""
    async with (
        serving(settings) as replica,
        gateway(settings) as other,
        aiohttp.ClientSession() as s,
    ):
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-gw", gate=gate, created=created))
            await created.wait()
            async with gateway(settings) as first_gw:
                got_some = asyncio.Event()

                async def on_frame(f: Frame) -> None:
                    got_some.set()

                reading = tg.create_task(
                    read_sse(s, f"{first_gw.url}{CHAT}/stream/job-gw", headers=auth("u1"),
                             on_frame=on_frame)
                )  # fmt: skip
                await got_some.wait()
            first = await reading  # the gateway stopped under it
            assert first.broken
            assert first.frames
            gate.set()
            rest = await read_sse(
                s,
                f"{other.url}{CHAT}/stream/job-gw",
                headers={**auth("u1"), "Last-Event-ID": first.frames[-1].id or ""},
            )
        assert rest.complete
        assert seen(first.frames + rest.frames) == await stored(other.nc, settings, "job-gw")


async def test_last_event_id_wins_over_resume_true(settings: Settings) -> None:
    """An EventSource reconnect keeps its URL (?resume=true) and adds Last-Event-ID: it knows
    its position, so it gets no snapshot, only what follows."""
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-both")
        log = await stored(gw.nc, settings, "job-both")
        got = await read_sse(
            s,
            f"{gw.url}{CHAT}/stream/job-both?resume=true",
            headers={**auth("u1"), "Last-Event-ID": log[4][0]},
        )
        assert seen(got.frames) == log[5:]


def test_frames_carry_the_seq_and_split_line_breaks_into_data_lines() -> None:
    from service.http.sse import frame

    assert frame(7, "message", b'{"a":1}') == b'id: 7\nevent: message\ndata: {"a":1}\n\n'
    assert frame(8, "error", b'{\n"a":\r\n1}\r') == (
        b'id: 8\nevent: error\ndata: {\ndata: "a":\ndata: 1}\ndata: \n\n'
    )
