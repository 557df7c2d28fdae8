"""HTTP gateway test harness: a replica with its API, a gateway on its own NATS connection (a
plain client, as `genjobs gateway` runs), tokens, and a raw SSE client built on aiohttp's
client that parses frames exactly as the EventSource spec says."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt
import msgspec
import nats
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.reader import LiveHub, read_all
from service.config import Settings
from service.http.app import GatewayServer, build_app
from service.http.config import HttpSettings
from service.server.api import ServiceApi
from service.server.replica import Replica

from .helpers import running_replica

SECRET = "test-secret-for-the-gateway-tests-not-for-production"
TIMEOUT = 15.0


def token(user: str, tenant: str | None = None, *, ttl: float = 300, secret: str = SECRET) -> str:
    claims: dict[str, Any] = {"id": user, "exp": int(time.time() + ttl)}
    if tenant is not None:
        claims["tenantId"] = tenant
    return jwt.encode(claims, secret, algorithm="HS256")


def auth(user: str, tenant: str | None = None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user, tenant)}"}


def http_settings(**changes: Any) -> HttpSettings:
    base = HttpSettings(
        listen="127.0.0.1:0",
        jwt_secret=SECRET,
        sse_heartbeat=15.0,
        sse_close_grace=1.0,
        idle_timeout=10.0,
    )
    return base.with_(**changes)


@asynccontextmanager
async def serving(settings: Settings, replica_id: str = "rA") -> AsyncIterator[Replica]:
    async with running_replica(settings.with_(replica_id=replica_id)) as replica:
        api = ServiceApi(replica)
        await api.start()
        try:
            yield replica
        finally:
            await api.stop()


@dataclass
class Gateway:
    nc: NATS
    server: GatewayServer
    url: str


@asynccontextmanager
async def gateway(
    settings: Settings, hs: HttpSettings | None = None, *, nc: NATS | None = None
) -> AsyncIterator[Gateway]:
    """A gateway on its own connection, as `genjobs gateway` runs it; ``nc``: on that
    connection instead (the caller's, which it does not drain)."""
    assert settings.nats_url is not None
    own = nc is None
    if nc is None:
        nc = await nats.connect(settings.nats_url, name="test-gateway")
    try:
        hs = hs or http_settings()
        server = GatewayServer(build_app(nc, settings, hs), hs, shutdown_timeout=2.0)
        url = await server.start()
        try:
            yield Gateway(nc, server, url)
        finally:
            await server.stop()
    finally:
        if own:
            await nc.drain()


@dataclass
class Frame:
    id: str | None
    event: str
    data: str
    retry: int | None = None

    def json(self) -> Any:
        return msgspec.json.decode(self.data)


@dataclass
class SseRead:
    status: int
    headers: dict[str, str]
    frames: list[Frame] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    complete: bool = False
    """The body ended cleanly (the server closed it after the terminal frame)."""
    broken: bool = False
    """The connection broke (no clean end of the body)."""
    body: Any = None


class SseParser:
    """The EventSource parsing rules: fields until a blank line dispatches; ``:`` comments."""

    def __init__(self, out: SseRead) -> None:
        self.out = out
        self._buf = b""
        self._fields: dict[str, list[str]] = {}

    def feed(self, data: bytes) -> list[Frame | str]:
        """Returns what got complete: frames, and comments as strings."""
        self._buf += data
        got: list[Frame | str] = []
        while b"\n" in self._buf:
            raw, self._buf = self._buf.split(b"\n", 1)
            line = raw.decode().rstrip("\r")
            if line == "":
                f = self._fields
                if "data" in f or "id" in f or "event" in f:
                    frame = Frame(
                        (f.get("id") or [None])[-1],
                        (f.get("event") or ["message"])[-1],
                        "\n".join(f.get("data", [])),
                    )
                    self.out.frames.append(frame)
                    got.append(frame)
                self._fields = {}
            elif line.startswith(":"):
                self.out.comments.append(line[1:].strip())
                got.append(line[1:].strip())
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "retry" and value.isdigit():
                    self.out.retry = int(value)
                else:
                    self._fields.setdefault(name, []).append(value)
        return got


async def parse_body(
    resp: aiohttp.ClientResponse,
    out: SseRead,
    *,
    stop_after: int | None = None,
    on_frame: Any = None,
    until: Any = None,
) -> SseRead:
    parser = SseParser(out)
    try:
        async for chunk in resp.content.iter_any():
            for item in parser.feed(chunk):
                if isinstance(item, Frame):
                    if on_frame is not None:
                        await on_frame(item)
                    if stop_after is not None and len(out.frames) >= stop_after:
                        return out
                if until is not None and until(out):
                    return out
        out.complete = True
    except aiohttp.ClientPayloadError:
        out.broken = True
    return out


async def read_sse(
    session: aiohttp.ClientSession,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    on_frame: Any = None,
    until: Any = None,
    timeout: float = TIMEOUT,
) -> SseRead:
    """GET ``url`` and parse SSE per the spec (fields, comments, blank line dispatches).

    ``stop_after``: drop the connection after that many dispatched frames (a client losing
    its network); ``until(read)``: drop it once that is true (checked after every frame and
    comment). A non-2xx or non-SSE answer is returned with its JSON ``body``.
    """
    async with (
        asyncio.timeout(timeout),
        session.get(url, headers=headers or {}) as resp,
    ):
        out = SseRead(resp.status, dict(resp.headers))
        if resp.status != 200 or resp.content_type != "text/event-stream":
            text = await resp.text()
            out.body = msgspec.json.decode(text) if text else None
            return out
        return await parse_body(resp, out, stop_after=stop_after, on_frame=on_frame, until=until)


async def produce(
    replica: Replica,
    user: str,
    job_id: str,
    *,
    tokens: int = 30,
    tenant: str | None = None,
    gate: asyncio.Event | None = None,
    gate_at: int = 10,
    created: asyncio.Event | None = None,
) -> None:
    """A simulated generation; with ``gate`` it waits at event ``gate_at`` until it is set;
    ``created`` is set once the job exists."""
    job = await replica.create_job(user, conversation_id=job_id, tenant_id=tenant)
    if created is not None:
        created.set()
    async with job:
        for i, event in enumerate(sim.generation(job.job_id, tokens=tokens)):
            if gate is not None and i == gate_at:
                await gate.wait()
            if job.aborted.is_set():
                return
            await job.emit(event)
        await job.record_usage(sim.usage_openai())
        await job.complete(sim.final_event(job.job_id))


async def stored(nc: NATS, settings: Settings, job_id: str) -> list[tuple[str, str]]:
    """(id, data) of every event a browser should see: what the job's log holds, usage aside."""
    async with LiveHub(nc, settings) as hub:
        events = await read_all(hub, job_id, timeout=TIMEOUT)
    return [(str(ev.seq), ev.data.decode()) for ev in events if ev.kind != "usage"]


def seen(frames: list[Frame]) -> list[tuple[str, str]]:
    return [(f.id or "", f.data) for f in frames]
