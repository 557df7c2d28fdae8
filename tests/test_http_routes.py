"""LibreChat's routes on the gateway (real nats-server, real replica): authentication (HS256,
JWKS/RS256, cookie, query, dev mode), ownership (403), unknown jobs (404), the ?resume=true
sync frame, a LibreChat-shaped (sse.js-style) client reconnecting with ?resume=true, active,
status and abort."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from service.config import Settings
from service.http.app import GatewayServer

from .helpers import aggregate
from .http_helpers import (
    SECRET,
    Frame,
    auth,
    gateway,
    http_settings,
    produce,
    read_sse,
    seen,
    serving,
    stored,
    token,
)

CHAT = "/api/agents/chat"


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dTE6cHc="},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {token('u1', secret='another-secret-of-sufficient-length!!')}"},
        {"Authorization": f"Bearer {token('u1', ttl=-60)}"},
        {"Authorization": f"Bearer {jwt.encode({'id': 'u1'}, SECRET, algorithm='HS256')}"},
        {"Authorization": f"Bearer {jwt.encode({'sub': 'u1', 'exp': 2**40}, SECRET)}"},
        {"Authorization": f"Bearer {jwt.encode({'id': 'a.b', 'exp': 2**40}, SECRET)}"},
    ],
    ids=["missing", "basic", "garbage", "bad-signature", "expired", "no-exp", "no-id", "bad-id"],
)
async def test_requests_without_a_valid_token_get_401(
    settings: Settings, headers: dict[str, str]
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-auth", tokens=3)
        for method, path in (
            ("GET", "/stream/job-auth"),
            ("GET", "/active"),
            ("GET", "/status/job-auth"),
            ("POST", "/abort"),
        ):
            async with s.request(method, f"{gw.url}{CHAT}{path}", headers=headers) as resp:
                assert resp.status == 401, (method, path)
                body = await resp.json()
                assert body["error"] == "Unauthorized"
                assert resp.headers["WWW-Authenticate"] == "Bearer"


async def test_another_users_or_tenants_job_is_403_and_an_unknown_one_404(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-t", tokens=3, tenant="t1")
        url = f"{gw.url}{CHAT}/stream/job-t"
        for headers in (auth("u2", "t1"), auth("u1", "t2"), auth("u1")):
            got = await read_sse(s, url, headers=headers)
            assert got.status == 403
            assert got.body["error"] == "Unauthorized"
            async with s.get(f"{gw.url}{CHAT}/status/job-t", headers=headers) as resp:
                assert resp.status == 403
            async with s.post(
                f"{gw.url}{CHAT}/abort", json={"streamId": "job-t"}, headers=headers
            ) as resp:
                assert resp.status == 403
        assert (await read_sse(s, url, headers=auth("u1", "t1"))).status == 200
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/nope", headers=auth("u1"))
        assert got.status == 404
        assert got.body == {
            "error": "Stream not found",
            "message": "The generation job does not exist or has expired.",
        }


async def test_token_from_cookie_or_query_for_clients_that_cannot_send_headers(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw:
        await produce(replica, "u1", "job-c", tokens=3)
        log = await stored(gw.nc, settings, "job-c")
        async with aiohttp.ClientSession(cookies={"genjobs_token": token("u1")}) as s:
            got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-c")
            assert seen(got.frames) == log
        async with aiohttp.ClientSession() as s:
            got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-c?token={token('u1')}")
            assert seen(got.frames) == log
            got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-c?token={token('u2')}")
            assert got.status == 403


async def test_query_token_can_be_switched_off(settings: Settings) -> None:
    hs = http_settings(jwt_query_param="")
    async with serving(settings) as replica, gateway(settings, hs) as gw:
        await produce(replica, "u1", "job-q", tokens=3)
        async with aiohttp.ClientSession() as s:
            got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-q?token={token('u1')}")
            assert got.status == 401


async def test_dev_mode_without_auth_takes_the_user_from_a_header(settings: Settings) -> None:
    hs = http_settings(auth="none", jwt_secret=None)
    async with (
        serving(settings) as replica,
        gateway(settings, hs) as gw,
        aiohttp.ClientSession() as s,
    ):
        await produce(replica, "u1", "job-dev", tokens=3)
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-dev", headers={"X-Genjobs-User": "u1"})
        assert got.status == 200
        assert (await read_sse(s, f"{gw.url}{CHAT}/stream/job-dev?user=u1")).status == 200
        assert (await read_sse(s, f"{gw.url}{CHAT}/stream/job-dev")).status == 403  # user "dev"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@asynccontextmanager
async def jwks_server(key: rsa.RSAPrivateKey, kid: str) -> AsyncIterator[str]:
    """An identity provider's JWKS endpoint on a random local port."""
    pub = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                      "n": _b64(pub.n), "e": _b64(pub.e)}]}  # fmt: skip

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(jwks)

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", handler)
    server = GatewayServer(app, http_settings())
    url = await server.start()
    try:
        yield f"{url}/.well-known/jwks.json"
    finally:
        await server.stop()


async def test_rs256_tokens_are_checked_against_the_identity_providers_jwks(
    settings: Settings,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with jwks_server(key, "k1") as jwks_url:
        hs = http_settings(jwt_secret=None, jwt_jwks_url=jwks_url, jwt_user_claim="sub")
        async with (
            serving(settings) as replica,
            gateway(settings, hs) as gw,
            aiohttp.ClientSession() as s,
        ):
            await produce(replica, "u1", "job-rs", tokens=3)
            claims = {"sub": "u1", "exp": int(time.time()) + 60}
            good = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
            forged = jwt.encode(claims, other, algorithm="RS256", headers={"kid": "k1"})
            hs256 = jwt.encode(claims, SECRET, algorithm="HS256", headers={"kid": "k1"})
            url = f"{gw.url}{CHAT}/stream/job-rs"
            got = await read_sse(s, url, headers={"Authorization": f"Bearer {good}"})
            assert got.status == 200
            assert got.frames[-1].json()["final"] is True
            for bad in (forged, hs256):
                got = await read_sse(s, url, headers={"Authorization": f"Bearer {bad}"})
                assert got.status == 401


# --- ?resume=true and a LibreChat-shaped client ---------------------------------------------------


async def test_resume_true_starts_with_the_snapshot_then_continues_after_its_seq(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                produce(replica, "u1", "job-rt", tokens=30, gate=gate, gate_at=25, created=created)
            )
            await created.wait()
            url = f"{gw.url}{CHAT}/stream/job-rt"
            # A first reader sees 8 events, so the job is under way when the second comes.
            await read_sse(s, url, headers=auth("u1"), stop_after=8)
            got = await read_sse(s, f"{url}?resume=true", headers=auth("u1"), stop_after=1)
            sync = got.frames[0].json()
            assert sync["sync"] is True
            assert sync["pendingEvents"] == []
            state = sync["resumeState"]
            assert {"runSteps", "aggregatedContent", "seq"} <= set(state)
            assert got.frames[0].id == str(state["seq"])

            async def on_frame(f: Frame) -> None:
                gate.set()  # the snapshot is of a running job; the rest streams live

            rest = await read_sse(s, f"{url}?resume=true", headers=auth("u1"), on_frame=on_frame)
        log = await stored(gw.nc, settings, "job-rt")
        sync = rest.frames[0].json()
        snap_seq = sync["resumeState"]["seq"]
        # The snapshot is the content of every event up to its seq; the rest follows, once.
        covered = [json.loads(data) for sid, data in log if int(sid) <= snap_seq]
        assert sync["resumeState"]["aggregatedContent"] == aggregate(covered)
        assert seen(rest.frames[1:]) == [(sid, d) for sid, d in log if int(sid) > snap_seq]


async def test_resume_true_on_a_finished_job_still_delivers_its_final(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-rf", tokens=5)
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-rf?resume=true", headers=auth("u1"))
        assert got.frames[0].json()["sync"] is True
        assert got.frames[-1].json()["final"] is True
        assert len(got.frames) == 2
        assert got.complete


async def test_librechat_client_reconnecting_with_resume_rebuilds_the_producers_text(
    settings: Settings,
) -> None:
    """sse.js as LibreChat uses it: a custom Authorization header, no Last-Event-ID, and after
    a network error a new request with ?resume=true. Its content is the sync frame's
    aggregatedContent (every event up to the snapshot's seq) plus every later event, once."""
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(
                produce(replica, "u1", "job-lc", tokens=40, gate=gate, gate_at=30, created=created)
            )
            await created.wait()
            url = f"{gw.url}{CHAT}/stream/job-lc"
            first = await read_sse(s, url, headers=auth("u1"), stop_after=5)
            assert first.frames[0].json()["created"] is True

            async def on_frame(f: Frame) -> None:
                gate.set()  # the rest of the generation streams live to the resumed client

            second = await read_sse(s, f"{url}?resume=true", headers=auth("u1"), on_frame=on_frame)
        log = await stored(gw.nc, settings, "job-lc")
        state = second.frames[0].json()["resumeState"]
        covered = [json.loads(d) for sid, d in log if int(sid) <= state["seq"]]
        later = [(sid, d) for sid, d in log if int(sid) > state["seq"]]
        assert state["aggregatedContent"] == aggregate(covered)
        assert seen(second.frames[1:]) == later
        assert len(later) > 1  # it did stream live after the snapshot
        final = second.frames[-1].json()
        assert final["final"] is True
        assert second.complete


async def test_error_terminal_is_an_error_event_and_ends_the_stream(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        job = await replica.create_job("u1", conversation_id="job-err")
        async with job:
            await job.emit({"event": "on_message_delta", "data": {"id": "s", "delta": {}}})
            await job.fail("model exploded")
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-err", headers=auth("u1"))
        assert got.frames[-1].event == "error"
        assert got.frames[-1].json() == {"error": "model exploded"}
        assert got.complete


# --- active, status, abort ------------------------------------------------------------------


async def test_active_and_status_show_the_callers_jobs(settings: Settings) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-a1", gate=gate, created=created))
            await created.wait()
            await produce(replica, "u2", "job-b1", tokens=3)
            async with s.get(f"{gw.url}{CHAT}/active", headers=auth("u1")) as resp:
                assert resp.status == 200
                assert await resp.json() == {"activeJobIds": ["job-a1"]}
            async with s.get(f"{gw.url}{CHAT}/active", headers=auth("u2")) as resp:
                assert await resp.json() == {"activeJobIds": []}
            async with s.get(f"{gw.url}{CHAT}/status/job-a1", headers=auth("u1")) as resp:
                body = await resp.json()
            assert body["active"] is True
            assert body["streamId"] == "job-a1"
            assert body["status"] == "running"
            assert isinstance(body["aggregatedContent"], list)
            assert isinstance(body["createdAt"], int)
            assert "runSteps" in body["resumeState"]
            gate.set()
        async with s.get(f"{gw.url}{CHAT}/status/job-b1", headers=auth("u2")) as resp:
            body = await resp.json()
        assert (body["active"], body["status"]) == (False, "complete")
        assert body["resumeState"] is None
        async with s.get(f"{gw.url}{CHAT}/status/nope", headers=auth("u1")) as resp:
            assert resp.status == 200
            assert await resp.json() == {"active": False}


async def test_abort_by_stream_id_ends_every_open_stream_with_the_abort_final(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-ab", gate=gate, created=created))
            await created.wait()
            url = f"{gw.url}{CHAT}/stream/job-ab"
            opened = asyncio.Event()

            async def on_frame(f: Frame) -> None:
                opened.set()

            watcher = tg.create_task(read_sse(s, url, headers=auth("u1"), on_frame=on_frame))
            await opened.wait()
            async with s.post(
                f"{gw.url}{CHAT}/abort", json={"streamId": "job-ab"}, headers=auth("u1")
            ) as resp:
                assert resp.status == 200
                assert await resp.json() == {"success": True, "aborted": "job-ab"}
            got = await watcher
            gate.set()
        final = got.frames[-1].json()
        assert final["final"] is True
        assert got.complete
        assert seen(got.frames) == await stored(gw.nc, settings, "job-ab")


@pytest.mark.parametrize(
    "body",
    [{"conversationId": "job-k"}, {"abortKey": "job-k:1700000000000"}, {}],
    ids=["conversationId", "abortKey", "latest-running"],
)
async def test_abort_finds_the_job_as_librechat_does(
    settings: Settings, body: dict[str, Any]
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        gate, older, newer = asyncio.Event(), asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u1", "job-old", gate=gate, created=older))
            await older.wait()
            tg.create_task(produce(replica, "u1", "job-k", gate=gate, created=newer))
            await newer.wait()
            async with s.post(f"{gw.url}{CHAT}/abort", json=body, headers=auth("u1")) as resp:
                assert resp.status == 200
                assert await resp.json() == {"success": True, "aborted": "job-k"}
            async with s.get(f"{gw.url}{CHAT}/active", headers=auth("u1")) as resp:
                assert await resp.json() == {"activeJobIds": ["job-old"]}
            gate.set()


async def test_abort_of_an_unknown_job_is_404_and_bad_bodies_400(settings: Settings) -> None:
    async with serving(settings), gateway(settings) as gw, aiohttp.ClientSession() as s:
        url = f"{gw.url}{CHAT}/abort"
        async with s.post(url, json={"streamId": "nope"}, headers=auth("u1")) as resp:
            assert resp.status == 404
            assert await resp.json() == {"error": "Job not found", "streamId": "nope"}
        async with s.post(url, json={}, headers=auth("u1")) as resp:
            assert resp.status == 404
        for bad in (b"{not json", b"[1]", b'{"streamId": 5}', b'{"streamId": "a.b"}'):
            async with s.post(
                url, data=bad, headers={**auth("u1"), "Content-Type": "application/json"}
            ) as resp:
                assert resp.status == 400, bad
                assert "error" in await resp.json()


async def test_abort_of_a_finished_job_succeeds_and_its_stream_is_unchanged(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw, aiohttp.ClientSession() as s:
        await produce(replica, "u1", "job-fin", tokens=3)
        async with s.post(
            f"{gw.url}{CHAT}/abort", json={"streamId": "job-fin"}, headers=auth("u1")
        ) as resp:
            assert resp.status == 200
            assert await resp.json() == {"success": True, "aborted": "job-fin"}
        got = await read_sse(s, f"{gw.url}{CHAT}/stream/job-fin", headers=auth("u1"))
        assert seen(got.frames) == await stored(gw.nc, settings, "job-fin")
        assert got.frames[-1].json()["final"] is True


async def test_abort_body_over_the_request_limit_is_413(settings: Settings) -> None:
    small = settings.with_(max_request_bytes=1024)
    async with serving(settings), gateway(small) as gw, aiohttp.ClientSession() as s:
        big = {"streamId": "job-x", "pad": "x" * 4096}
        async with s.post(f"{gw.url}{CHAT}/abort", json=big, headers=auth("u1")) as resp:
            assert resp.status == 413
            assert "error" in await resp.json()


async def test_cors_for_configured_origins_only(settings: Settings) -> None:
    hs = http_settings(cors_origins="https://chat.example, https://other.example")
    async with serving(settings), gateway(settings, hs) as gw, aiohttp.ClientSession() as s:
        url = f"{gw.url}{CHAT}/active"
        pre = {"Origin": "https://chat.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization,last-event-id"}  # fmt: skip
        async with s.options(url, headers=pre) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example"
            assert resp.headers["Access-Control-Allow-Credentials"] == "true"
            allowed = resp.headers["Access-Control-Allow-Headers"].lower()
            assert "authorization" in allowed
            assert "last-event-id" in allowed
        origin = {"Origin": "https://chat.example"}
        async with s.get(url, headers={**auth("u1"), **origin}) as resp:
            assert resp.status == 200
            assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        async with s.get(url, headers=origin) as resp:  # errors carry them too
            assert resp.status == 401
            assert resp.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        async with s.get(url, headers={**auth("u1"), "Origin": "https://evil.example"}) as resp:
            assert "Access-Control-Allow-Origin" not in resp.headers
