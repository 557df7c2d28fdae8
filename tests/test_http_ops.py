"""Operating the gateway: /healthz, /readyz flipping with NATS, /metrics, heartbeats, slow
clients bounded and resumed, and bad input (malformed ids, huge headers, slowloris, many
connections dropped at once) answered without disturbing anything else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.config import Settings
from service.http.app import (
    FANOUT_KEY,
    HEARTBEATS_KEY,
    HUB_KEY,
    METRICS_KEY,
    GatewayServer,
    build_app,
)
from service.http.health import ConnectionWatch, replica_readiness
from service.nats.embedded import EmbeddedServer

from .conftest import REPO
from .helpers import wait_for
from .http_helpers import (
    Gateway,
    SseRead,
    auth,
    gateway,
    http_settings,
    parse_body,
    produce,
    read_sse,
    seen,
    serving,
    stored,
)

CHAT = "/api/agents/chat"


async def metric(s: aiohttp.ClientSession, gw: Gateway, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 when absent)."""
    async with s.get(f"{gw.url}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


# --- health, readiness, metrics -------------------------------------------------------------------


async def test_healthz_and_readyz_when_everything_is_up(settings: Settings) -> None:
    async with serving(settings), gateway(settings) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/healthz") as resp:
            assert resp.status == 200
            assert (await resp.json())["ok"] is True
        async with s.get(f"{gw.url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert body["ready"] is True
        assert set(body["checks"]) == {"nats", "jetstream", "api"}


async def test_readyz_is_503_when_no_replica_answers(settings: Settings) -> None:
    async with gateway(settings) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503
        assert body["checks"]["nats"]["ok"] is True
        assert body["checks"]["jetstream"]["ok"] is False  # not even provisioned
        assert body["checks"]["api"]["ok"] is False


async def test_readyz_flips_when_nats_goes_away_and_comes_back(
    settings: Settings, tmp_path: Path
) -> None:
    """The gateway in a replica (as `serve --http` runs it): not ready while NATS is away, and
    its outage check, read from the replica's own health(), fails once the outage outlasts the
    budget; ready again after NATS is."""

    srv = EmbeddedServer(tmp_path / "js", conf=REPO / "nats.conf", port=-1)
    srv.start()
    try:
        own = settings.with_(nats_url=srv.url, publish_outage_budget=0.5)
        async with serving(own) as replica, aiohttp.ClientSession() as s:
            hs = http_settings(node_id=replica.replica_id, ready_timeout=0.5)
            watch = ConnectionWatch(replica.nc)
            app = build_app(
                replica.nc,
                own,
                hs,
                watch=watch,
                readiness=replica_readiness(replica.health),
            )
            async with GatewayServer(app, hs) as server:
                url = f"{server.url}/readyz"

                async def ready() -> tuple[int, dict[str, dict[str, object]]]:
                    async with s.get(url) as resp:
                        return resp.status, (await resp.json())["checks"]

                assert (await ready())[0] == 200
                port = srv.port
                assert srv.stop() is not None  # by its pid
                await wait_for(lambda: _status_is(ready, 503), timeout=10)
                # Past the outage budget the replica's own check fails too.
                await wait_for(lambda: _outage_failed(ready), timeout=10)
                health = replica.health()
                assert health["overBudget"] is True, health
                assert health["natsDownFor"] > own.publish_outage_budget, health
                _, checks = await ready()
                assert "outage budget 0.5s" in str(checks["outage"]["detail"]), checks
                srv = EmbeddedServer(tmp_path / "js", conf=REPO / "nats.conf", port=port or -1)
                srv.start()
                await wait_for(lambda: _status_is(ready, 200), timeout=20)
                _, checks = await ready()
                assert checks["outage"] == {"ok": True, "detail": "connected"}
                assert replica.health()["overBudget"] is False
    finally:
        srv.stop()


async def _status_is(ready: object, status: int) -> bool:
    got, _ = await ready()  # type: ignore[operator]
    return bool(got == status)


async def _outage_failed(ready: object) -> bool:
    _, checks = await ready()  # type: ignore[operator]
    return checks["outage"]["ok"] is False


async def test_metrics_count_streams_resumes_aborts_and_jobs(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-m1", tokens=5)
        log = await stored(gw.nc, settings, "job-m1")
        url = f"{gw.url}{CHAT}/stream/job-m1"
        await read_sse(s, url, headers=auth("u1"))
        await read_sse(s, url, headers={**auth("u1"), "Last-Event-ID": log[2][0]})
        await read_sse(s, f"{url}?resume=true", headers=auth("u1"))
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-m2", gate=gate, created=created))
            await created.wait()
            async with s.post(
                f"{gw.url}{CHAT}/abort", json={"streamId": "job-m2"}, headers=auth("u1")
            ):
                pass
            gate.set()
        node = gw.server.hs.node_id
        assert await metric(s, gw, "genjobs_http_sse_opened_total", node=node) == 3
        assert await metric(s, gw, "genjobs_http_sse_connections", node=node) == 0
        assert (
            await metric(s, gw, "genjobs_http_sse_events_total", node=node) == len(log) * 2 - 3 + 1
        )
        assert await metric(s, gw, "genjobs_http_resumes_total", kind="last_event_id") == 1
        assert await metric(s, gw, "genjobs_http_resumes_total", kind="snapshot") == 1
        assert await metric(s, gw, "genjobs_http_aborts_total", result="aborted") == 1
        assert await metric(s, gw, "genjobs_jobs", status="complete") == 1
        assert await metric(s, gw, "genjobs_jobs", status="aborted") == 1
        assert await metric(s, gw, "genjobs_nats_connected") == 1
        route = f"{CHAT}/stream/{{streamId}}"
        assert await metric(s, gw, "genjobs_http_requests_total", route=route, status="200") == 3


async def test_replica_metrics_have_publish_ack_latency(settings: Settings) -> None:
    async with serving(settings) as replica, aiohttp.ClientSession() as s:
        hs = http_settings(node_id=replica.replica_id)
        app = build_app(replica.nc, settings, hs)
        replica.store.publisher.on_ack = app[METRICS_KEY].ack_observer
        async with GatewayServer(app, hs) as server:
            await produce(replica, "u1", "job-ack", tokens=5)
            gw = Gateway(replica.nc, server, server.url)
            stored_events = await metric(s, gw, "genjobs_events_stored_total")
            assert stored_events >= 5
            assert await metric(s, gw, "genjobs_publish_ack_seconds_count") == stored_events


# --- heartbeats and slow clients -----------------------------------------------------------------


async def test_quiet_stream_gets_heartbeat_comments(settings: Settings) -> None:
    hs = http_settings(sse_heartbeat=0.2)
    async with (
        serving(settings) as replica,
        gateway(settings, hs) as gw,
        aiohttp.ClientSession() as s,
    ):
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-hb", gate=gate, created=created))
            await created.wait()
            got = await read_sse(
                s,
                f"{gw.url}{CHAT}/stream/job-hb",
                headers=auth("u1"),
                until=lambda r: r.comments.count("heartbeat") >= 2,
            )
            gate.set()
        assert got.comments.count("heartbeat") >= 2
        assert got.frames  # the events came too


async def test_slow_client_is_dropped_and_resumes_by_id_exactly_once(settings: Settings) -> None:
    hs = http_settings(sse_max_buffer=16 * 1024, sse_close_grace=0.3)
    async with (
        serving(settings) as replica,
        gateway(settings, hs) as gw,
        aiohttp.ClientSession(read_bufsize=4096) as s,
    ):
        job = await replica.create_job("u1", conversation_id="job-slow")
        url = f"{gw.url}{CHAT}/stream/job-slow"
        async with s.get(url, headers=auth("u1")) as resp:
            assert resp.status == 200
            # The client stops reading; the producer writes 4 MB.
            async with job:
                await job.emit(
                    {"event": "on_run_step", "data": {"id": "s1", "index": 0, "stepIndex": 0,
                     "type": "message_creation", "stepDetails": {"type": "message_creation",
                     "message_creation": {"message_id": "m1"}}}}
                )  # fmt: skip
                for i in range(200):
                    text = f"{i:04d}" + "x" * 20_000
                    await job.emit(
                        {"event": "on_message_delta", "data": {"id": "s1", "delta": {
                            "content": [{"type": "text", "text": text}]}}}
                    )  # fmt: skip
                await job.complete({"final": True})

            async def dropped() -> bool:
                return await metric(s, gw, "genjobs_http_sse_slow_disconnects_total") == 1

            await wait_for(dropped, timeout=20)
            # It reads what reached it before the drop: whole frames only, then a broken body.
            first = await parse_body(resp, SseRead(resp.status, dict(resp.headers)))
        assert first.broken
        assert first.frames
        rest = await read_sse(s, url, headers={**auth("u1"), "Last-Event-ID": first.frames[-1].id})
        assert rest.complete
        assert seen(first.frames + rest.frames) == await stored(gw.nc, settings, "job-slow")


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"{CHAT}/stream/a.b",
        f"{CHAT}/stream/a%20b",
        f"{CHAT}/stream/{'x' * 129}",
        f"{CHAT}/stream/a*b",
        f"{CHAT}/status/a%3Eb",
    ],
)
async def test_malformed_ids_are_400_json(settings: Settings, path: str) -> None:
    async with serving(settings), gateway(settings) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}{path}", headers=auth("u1")) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["error"].startswith("Invalid")


async def test_unknown_route_is_404_json(settings: Settings) -> None:
    async with gateway(settings) as gw, aiohttp.ClientSession() as s:
        async with s.get(f"{gw.url}/nope") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "Not Found"
        async with s.delete(f"{gw.url}{CHAT}/active") as resp:
            assert resp.status == 405


async def raw_request(url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(65536)
    finally:
        writer.close()


async def test_huge_headers_are_refused_and_nothing_else_is_disturbed(settings: Settings) -> None:
    async with serving(settings), gateway(settings) as gw, aiohttp.ClientSession() as s:
        huge_value = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        many = (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(500))
            + b"\r\n"
        )
        long_line = b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        for data in (huge_value, many, long_line):
            answer = await raw_request(gw.url, data)
            status = int(answer.split(b" ", 2)[1])
            assert status in (400, 414, 431), answer[:200]
        async with s.get(f"{gw.url}/healthz") as resp:
            assert resp.status == 200


async def test_slowloris_client_is_cut_off_after_the_idle_timeout(settings: Settings) -> None:
    hs = http_settings(idle_timeout=1.0)
    async with gateway(settings, hs) as gw, aiohttp.ClientSession() as s:
        host, port = gw.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            closed = asyncio.get_running_loop().create_future()

            async def trickle() -> None:
                # One header byte every 0.2 s: never a complete request head.
                while not closed.done():
                    writer.write(b"X")
                    await asyncio.sleep(0.2)  # the attacker's pace, not a wait for state

            async with asyncio.TaskGroup() as tg:
                t = tg.create_task(trickle())
                async with asyncio.timeout(10):
                    data = await reader.read()  # EOF when the server closes it
                closed.set_result(None)
                t.cancel()
            assert data == b""
            # Others were served meanwhile and still are.
            async with s.get(f"{gw.url}/healthz") as resp:
                assert resp.status == 200
        finally:
            writer.close()


async def test_many_sse_connections_dropped_at_once_leave_nothing_behind(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-many", gate=gate, created=created))
            await created.wait()
            host, port = gw.url.removeprefix("http://").split(":")
            request = (
                f"GET {CHAT}/stream/job-many HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {auth('u1')['Authorization'][7:]}\r\n\r\n"
            ).encode()
            conns = []
            for _ in range(500):
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(request)
                conns.append((reader, writer))
            for reader, _ in conns:
                async with asyncio.timeout(20):
                    await reader.readuntil(b"retry:")  # the response is open
            app = gw.server.app
            assert len(app[HEARTBEATS_KEY].open) == 500
            fanout = app[FANOUT_KEY]

            async def attached() -> bool:
                return fanout.sinks("job-many") == 500

            # All at the live edge: one shared delivery, one reader in the hub for 500.
            await wait_for(attached, timeout=20)
            assert app[HUB_KEY].watchers("job-many") == 1
            for _, writer in conns:
                writer.transport.abort()  # all at once, no goodbye

            async def released() -> bool:
                return (
                    not app[HEARTBEATS_KEY].open
                    and app[HUB_KEY].watchers("job-many") == 0
                    and fanout.groups() == 0
                )

            await wait_for(released, timeout=20)
            # Nothing else was disturbed: a new reader gets the whole job.
            gate.set()
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-many", headers=auth("u1"))
        assert seen(got.frames) == await stored(gw.nc, settings, "job-many")
        assert await metric(s, gw, "genjobs_http_sse_connections") == 0
