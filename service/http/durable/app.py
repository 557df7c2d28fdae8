"""The Durable Streams HTTP protocol as an aiohttp sub-application (mounted at ``/v1/stream``).

Routes: ``PUT`` create, ``POST`` append/close, ``GET`` catch-up / long-poll / SSE, ``HEAD``
metadata, ``DELETE``, ``OPTIONS`` preflight, all on ``/v1/stream/<name>``. Every response
carries the browser security and CORS headers, errors included (docs/http.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

import nats.errors
from aiohttp import web
from nats.aio.client import Client as NATS
from yarl import URL

from service.config import Settings
from service.nats.directget import DirectGetError, ReplayTimeout
from service.nats.outage import TRANSIENT_ERRORS

from . import protocol as p
from .access import Principal, may_access, principal_of
from .appends import Appends
from .collector import Collector
from .jobs import JobStreams
from .lifecycle import Lifecycle
from .live import LiveWatchers
from .model import AppendRequest, CreateSpec, DsError, Producer, StreamRecord
from .reading import Readers, View, parse_read_query
from .storage import DurableStore

log = logging.getLogger("genjobs.http.durable")

UNAVAILABLE: Final[tuple[type[Exception], ...]] = (
    ReplayTimeout,
    DirectGetError,
    *TRANSIENT_ERRORS,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
)
"""NATS errors that mean "not now": answered 503 with Retry-After, never 500."""

STORE: Final = web.AppKey("ds_store", DurableStore)
LIVE: Final = web.AppKey("ds_live", LiveWatchers)
LIFE: Final = web.AppKey("ds_life", Lifecycle)
READERS: Final = web.AppKey("ds_readers", Readers)
APPENDS: Final = web.AppKey("ds_appends", Appends)
SETTINGS: Final = web.AppKey("ds_settings", Settings)
MOUNT: Final = web.AppKey("ds_mount", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_response(e: DsError) -> web.Response:
    headers = {"Content-Type": "text/plain", **e.headers}
    return web.Response(status=e.status, text=None, body=e.message.encode(), headers=headers)


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except DsError as e:
        return _error_response(e)
    except UNAVAILABLE as e:
        log.warning("%s %s: stream storage unavailable: %r", request.method, request.path, e)
        return _error_response(DsError(503, "stream storage unavailable", {"Retry-After": "1"}))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h["X-Content-Type-Options"] = "nosniff"
    h["Cross-Origin-Resource-Policy"] = "cross-origin"
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = p.CORS_ALLOW_METHODS
    h["Access-Control-Allow-Headers"] = p.CORS_ALLOW_HEADERS
    h["Access-Control-Expose-Headers"] = p.CORS_EXPOSE_HEADERS


class DurableHandlers:
    """PUT, POST, HEAD, DELETE and OPTIONS of a Durable Stream; GET is :class:`.reading.Readers`'."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    @property
    def store(self) -> DurableStore:
        return self.app[STORE]

    @property
    def readers(self) -> Readers:
        return self.app[READERS]

    @property
    def life(self) -> Lifecycle:
        return self.app[LIFE]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        if method == "OPTIONS":
            return web.Response(status=204)
        name = request.match_info["name"]
        if method == "GET":
            return await self.get(request, name)
        if method == "POST":
            return await self.post(request, name)
        if method == "PUT":
            return await self.put(request, name)
        if method == "HEAD":
            return await self.head(request, name)
        if method == "DELETE":
            return await self.delete(request, name)
        raise DsError(405, "Method not allowed", {"Allow": p.CORS_ALLOW_METHODS})

    # --- helpers ----------------------------------------------------------------------

    async def _body(self, request: web.Request) -> bytes:
        limit = self.store.max_payload
        length = request.content_length
        if length is not None and length > limit:
            raise DsError(413, f"Body larger than {limit} bytes")
        data = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            data += chunk
            if len(data) > limit:
                raise DsError(413, f"Body larger than {limit} bytes")
        return bytes(data)

    async def _stream(
        self, request: web.Request, name: str, *, touch: bool
    ) -> tuple[StreamRecord, int]:
        rec, rev = await self.life.resolve(name, touch=touch)
        if not may_access(rec.user, rec.tenant, principal_of(request)):
            raise DsError(403, "Not your stream")
        return rec, rev

    def _source_name(self, raw: str) -> str:
        """``Stream-Forked-From`` names a stream by its path (or URL) under the mount."""
        path = URL(raw).path if "://" in raw else raw
        mount = self.app[MOUNT].rstrip("/") + "/"
        return path[len(mount) :] if path.startswith(mount) else path.lstrip("/")

    # --- PUT ------------------------------------------------------------------------------

    async def put(self, request: web.Request, name: str) -> web.StreamResponse:
        h = request.headers
        fork_from = h.get(p.H_FORKED_FROM)
        ttl_raw, exp_raw = h.get(p.H_TTL), h.get(p.H_EXPIRES_AT)
        if ttl_raw and exp_raw:
            raise DsError(400, "Cannot specify both Stream-TTL and Stream-Expires-At")
        ttl = None
        if ttl_raw:
            ttl = p.parse_ttl(ttl_raw)
            if ttl is None:
                raise DsError(400, "Invalid Stream-TTL value")
        expires_ts = None
        if exp_raw:
            expires_ts = p.parse_expires_at(exp_raw)
            if expires_ts is None:
                raise DsError(400, "Invalid Stream-Expires-At timestamp")
        fork_offset = None
        raw_offset = h.get(p.H_FORK_OFFSET)
        if raw_offset:
            fork_offset = p.parse_offset(raw_offset)
            if fork_offset is None:
                raise DsError(400, "Invalid Stream-Fork-Offset format")
        fork_sub = None
        raw_sub = h.get(p.H_FORK_SUB_OFFSET)
        if raw_sub is not None:
            if not fork_from:
                raise DsError(400, "Stream-Fork-Sub-Offset requires Stream-Forked-From")
            fork_sub = p.parse_sub_offset(raw_sub)
            if fork_sub is None:
                raise DsError(400, "Invalid Stream-Fork-Sub-Offset format")
            if fork_sub > 0 and fork_offset is None:
                raise DsError(400, "Stream-Fork-Sub-Offset requires Stream-Fork-Offset")
        body = await self._body(request)
        who = principal_of(request)
        spec = CreateSpec(
            content_type=p.creation_content_type(h.get("Content-Type")),
            ttl=ttl,
            expires_at=exp_raw or None,
            expires_ts=expires_ts,
            closed=h.get(p.H_CLOSED) == "true",
            body=body,
            fork_from=self._source_name(fork_from) if fork_from else None,
            fork_offset=fork_offset,
            fork_sub=fork_sub,
            tenant=who.tenant if who else None,
            user=who.user if who else None,
        )
        if spec.fork_from is not None:
            await self._check_source(request, spec.fork_from)
        outcome = await self.life.create(name, spec)
        if not may_access(outcome.record.user, outcome.record.tenant, who):
            raise DsError(403, "Not your stream")
        headers = {
            "Content-Type": outcome.record.content_type,
            p.H_NEXT_OFFSET: p.format_offset(outcome.tail),
        }
        if outcome.created:
            headers["Location"] = str(request.url.with_query(None))
        if outcome.closed:
            headers[p.H_CLOSED] = "true"
        return web.Response(status=201 if outcome.created else 200, headers=headers)

    async def _check_source(self, request: web.Request, source: str) -> None:
        got = await self.store.lookup(source)
        if got is not None and not may_access(got[0].user, got[0].tenant, principal_of(request)):
            raise DsError(403, "Not your stream")

    # --- POST -----------------------------------------------------------------------------

    async def post(self, request: web.Request, name: str) -> web.StreamResponse:
        h = request.headers
        close = h.get(p.H_CLOSED) == "true"
        producer = _producer(
            h.get(p.H_PRODUCER_ID), h.get(p.H_PRODUCER_EPOCH), h.get(p.H_PRODUCER_SEQ)
        )
        body = await self._body(request)
        content_type = h.get("Content-Type")
        if not body and not close:
            raise DsError(400, "Empty body")
        if body and not content_type:
            raise DsError(400, "Content-Type header is required")
        rec, _ = await self._stream(request, name, touch=True)
        payload: bytes | None = None
        if body:
            if p.media_type(content_type) != p.media_type(rec.content_type):
                # A closed stream answers "closed" first (the specification's precedence).
                tail, closed = await self.store.tail(self.store.source(rec))
                if closed:
                    raise DsError(
                        409,
                        "Stream is closed",
                        {p.H_CLOSED: "true", p.H_NEXT_OFFSET: p.format_offset(tail)},
                    )
                raise DsError(409, "Content-type mismatch")
            payload = body
            if p.is_json(rec.content_type):
                try:
                    payload = p.json_fragment(body, allow_empty=False)
                except p.JsonBodyError as e:
                    raise DsError(400, str(e)) from e
        outcome = await self.app[APPENDS].append(
            rec,
            AppendRequest(payload, close=close, producer=producer, stream_seq=h.get(p.H_SEQ)),
        )
        return web.Response(status=outcome.status, headers=outcome.headers)

    # --- HEAD / DELETE ----------------------------------------------------------------------

    async def head(self, request: web.Request, name: str) -> web.StreamResponse:
        rec, _ = await self._stream(request, name, touch=False)
        extra = {}
        if rec.ttl is not None:
            extra[p.H_TTL] = str(rec.ttl)
        if rec.expires_at is not None:
            extra[p.H_EXPIRES_AT] = rec.expires_at
        return await self.readers.head(self._view(rec), extra)

    async def delete(self, request: web.Request, name: str) -> web.StreamResponse:
        await self._stream(request, name, touch=False)
        await self.life.delete(name)
        return web.Response(status=204)

    # --- GET ------------------------------------------------------------------------------

    async def get(self, request: web.Request, name: str) -> web.StreamResponse:
        after, start, live = parse_read_query(request)
        rec, _ = await self._stream(request, name, touch=True)
        return await self.readers.get(request, self._view(rec), after, start, live)

    def _view(self, rec: StreamRecord) -> View:
        async def touch() -> None:
            await self.store.touch(rec)

        return View(self.store.source(rec), rec.content_type, rec.inc, touch)


def _producer(pid: str | None, epoch: str | None, seq: str | None) -> Producer | None:
    if pid is None and epoch is None and seq is None:
        return None
    if pid is None or epoch is None or seq is None:
        raise DsError(400, "Producer-Id, Producer-Epoch and Producer-Seq go together")
    if not pid:
        raise DsError(400, "Invalid Producer-Id: must not be empty")
    e, s = p.parse_producer_int(epoch), p.parse_producer_int(seq)
    if e is None:
        raise DsError(400, "Invalid Producer-Epoch: must be a non-negative integer")
    if s is None:
        raise DsError(400, "Invalid Producer-Seq: must be a non-negative integer")
    return Producer(pid, e, s)


def build_app(
    nc: NATS,
    settings: Settings,
    *,
    mount: str = "/v1/stream",
    middlewares: Sequence[Any] = (),
) -> web.Application:
    app = web.Application(middlewares=[_errors, *middlewares])
    app[SETTINGS] = settings
    app[MOUNT] = mount
    app[STORE] = store = DurableStore(nc, settings)
    app[LIFE] = Lifecycle(store)
    app[APPENDS] = Appends(store)
    app[LIVE] = live = LiveWatchers(nc)
    app[READERS] = Readers(store, live, settings)
    handlers = DurableHandlers(app)
    jobs = JobStreams(store, app[READERS], settings)
    app.router.add_route("*", "/jobs/{job}", jobs.dispatch)  # before the catch-all
    app.router.add_route("*", "/{name:.+}", handlers.dispatch)
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_lifetime)
    app.on_shutdown.append(_stop_readers)
    return app


async def _stop_readers(app: web.Application) -> None:
    """Shutdown: waiting long-polls and SSE readers end now instead of at their timeout."""
    app[LIVE].begin_close()


async def _lifetime(app: web.Application) -> AsyncIterator[None]:
    store, live, settings = app[STORE], app[LIVE], app[SETTINGS]
    await store.open()
    tasks = [
        asyncio.create_task(_sweep_forever(Collector(app[LIFE]), settings.sweep_interval)),
        asyncio.create_task(_wake_on_reconnect(store.nc, live)),
    ]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        await live.close()
        await store.close()


RECONNECT_CHECK: Final = 1.0


async def _wake_on_reconnect(nc: NATS, live: LiveWatchers) -> None:
    """Core messages published while the connection was down never arrive: after a reconnect
    every waiting reader re-reads from the stream now, instead of at its next keep-alive. (The
    connection's callbacks belong to its owner, so the reconnect counter is watched.)"""
    seen = nc.stats["reconnects"]
    while True:
        await asyncio.sleep(RECONNECT_CHECK)
        now = nc.stats["reconnects"]
        if now == seen or not nc.is_connected:
            continue
        try:
            await nc.flush(timeout=5)  # the re-sent subscriptions are in place first
        except UNAVAILABLE as e:
            log.warning("flush after a reconnect failed: %r", e)
            continue
        seen = now
        live.wake_all()


async def _sweep_forever(collector: Collector, interval: float) -> None:
    """Expire streams nobody touches any more (access expires them lazily, too)."""
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await collector.sweep()
        except Exception:
            log.exception("durable streams sweep failed; retrying in %.0f s", interval)
        else:
            if swept.expired:
                log.info("expired %d durable streams", swept.expired)


__all__ = ["Principal", "build_app"]
