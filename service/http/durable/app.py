"""The Durable Streams HTTP protocol as an aiohttp sub-application (mounted at ``/v1/stream``).

Routes: ``PUT`` create, ``POST`` append/close, ``GET`` catch-up / long-poll / SSE, ``HEAD``
metadata, ``DELETE``, ``OPTIONS`` preflight, all on ``/v1/stream/<name>``. Every response
carries the browser security and CORS headers, errors included (docs/http.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final

from aiohttp import web
from nats.aio.client import Client as NATS
from yarl import URL

from service.config import Settings
from service.nats.directget import DirectGetError, ReplayTimeout

from . import protocol as p
from .access import Principal, may_access, principal_of
from .lifecycle import Lifecycle
from .live import LiveWatchers
from .model import AppendRequest, CreateSpec, DsError, Producer, ReadResult, StreamRecord
from .storage import DurableStore

log = logging.getLogger("genjobs.http.durable")

STORE: Final = web.AppKey("ds_store", DurableStore)
LIVE: Final = web.AppKey("ds_live", LiveWatchers)
LIFE: Final = web.AppKey("ds_life", Lifecycle)
SETTINGS: Final = web.AppKey("ds_settings", Settings)
MOUNT: Final = web.AppKey("ds_mount", str)

SSE_MAX_SECONDS: Final = 60.0
"""An SSE response ends after this long; the client reconnects from its last offset."""

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
    except (ReplayTimeout, DirectGetError) as e:
        log.warning("%s %s: stream storage unavailable: %s", request.method, request.path, e)
        return _error_response(DsError(503, "stream storage unavailable"))


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    h = response.headers
    h["X-Content-Type-Options"] = "nosniff"
    h["Cross-Origin-Resource-Policy"] = "cross-origin"
    h["Access-Control-Allow-Origin"] = "*"
    h["Access-Control-Allow-Methods"] = p.CORS_ALLOW_METHODS
    h["Access-Control-Allow-Headers"] = p.CORS_ALLOW_HEADERS
    h["Access-Control-Expose-Headers"] = p.CORS_EXPOSE_HEADERS


class DurableHandlers:
    def __init__(self, app: web.Application) -> None:
        self.app = app

    @property
    def store(self) -> DurableStore:
        return self.app[STORE]

    @property
    def life(self) -> Lifecycle:
        return self.app[LIFE]

    @property
    def live(self) -> LiveWatchers:
        return self.app[LIVE]

    @property
    def settings(self) -> Settings:
        return self.app[SETTINGS]

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

    def _cache_control(self, request: web.Request) -> str:
        scope = "public" if principal_of(request) is None else "private"
        return f"{scope}, max-age=60, stale-while-revalidate=300"

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
                tail, closed = await self.store.tail(rec)
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
        outcome = await self.store.append(
            rec,
            AppendRequest(payload, close=close, producer=producer, stream_seq=h.get(p.H_SEQ)),
        )
        return web.Response(status=outcome.status, headers=outcome.headers)

    # --- HEAD / DELETE ----------------------------------------------------------------------

    async def head(self, request: web.Request, name: str) -> web.StreamResponse:
        rec, _ = await self._stream(request, name, touch=False)
        tail, closed = await self.store.tail(rec)
        offset = p.format_offset(tail)
        headers = {
            "Content-Type": rec.content_type,
            p.H_NEXT_OFFSET: offset,
            "Cache-Control": "no-store",
            "ETag": f'"{rec.inc}:-1:{offset}{":c" if closed else ""}"',
        }
        if closed:
            headers[p.H_CLOSED] = "true"
        if rec.ttl is not None:
            headers[p.H_TTL] = str(rec.ttl)
        if rec.expires_at is not None:
            headers[p.H_EXPIRES_AT] = rec.expires_at
        return web.Response(status=200, headers=headers)

    async def delete(self, request: web.Request, name: str) -> web.StreamResponse:
        await self._stream(request, name, touch=False)
        await self.life.delete(name)
        return web.Response(status=204)

    # --- GET ------------------------------------------------------------------------------

    async def get(self, request: web.Request, name: str) -> web.StreamResponse:
        q = request.query
        offsets = q.getall("offset", [])
        if len(offsets) > 1:
            raise DsError(400, "Multiple offset parameters not allowed")
        raw = offsets[0] if offsets else None
        live = q.get("live")
        if raw == "":
            raise DsError(400, "Empty offset parameter")
        if raw is None and live in ("long-poll", "sse"):
            raise DsError(400, f"{live} requires an offset parameter")
        after: int | None  # None: offset=now
        if raw is None or raw == p.OFFSET_START:
            after = 0
        elif raw == p.OFFSET_NOW:
            after = None
        else:
            after = p.parse_offset(raw)
            if after is None:
                raise DsError(400, "Invalid offset format")
        rec, _ = await self._stream(request, name, touch=True)
        if live == "sse":
            return await self._sse(request, rec, after, q.get("cursor"))
        if live == "long-poll":
            return await self._long_poll(request, rec, after, raw or p.OFFSET_START)
        if after is None:
            return await self._at_now(rec)
        res = await self.store.read(rec, after)
        return self._data_response(request, rec, res, raw or p.OFFSET_START, cursor=None)

    async def _at_now(self, rec: StreamRecord) -> web.Response:
        tail, closed = await self.store.tail(rec)
        headers = {
            "Content-Type": rec.content_type,
            p.H_NEXT_OFFSET: p.format_offset(tail),
            p.H_UP_TO_DATE: "true",
            "Cache-Control": "no-store",
        }
        if closed:
            headers[p.H_CLOSED] = "true"
        body = b"[]" if p.is_json(rec.content_type) else b""
        return web.Response(status=200, body=body, headers=headers)

    def _data_response(
        self,
        request: web.Request,
        rec: StreamRecord,
        res: ReadResult,
        start: str,
        *,
        cursor: str | None,
    ) -> web.Response:
        parts = [m.data for m in res.msgs if m.data]
        body = p.json_body(parts) if p.is_json(rec.content_type) else b"".join(parts)
        offset = p.format_offset(res.next_seq)
        closed = res.closed and res.up_to_date
        etag = f'"{rec.inc}:{start}:{offset}{":c" if closed else ""}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"Content-Type": rec.content_type, p.H_NEXT_OFFSET: offset, "ETag": etag}
        if res.up_to_date:
            headers[p.H_UP_TO_DATE] = "true"
        if closed:
            headers[p.H_CLOSED] = "true"
        if cursor is not None:
            headers[p.H_CURSOR] = cursor
        headers["Cache-Control"] = self._cache_control(request) if parts else "no-store"
        return web.Response(status=200, body=body, headers=headers)

    async def _long_poll(
        self, request: web.Request, rec: StreamRecord, after: int | None, start: str
    ) -> web.StreamResponse:
        cursor = request.query.get("cursor")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.long_poll_timeout
        async with self.live.watch(rec.inc) as w:
            if after is None:
                after, _ = await self.store.tail(rec)
            res = await self.store.read(rec, after)
            while not any(m.data for m in res.msgs):
                offset = p.format_offset(res.next_seq)
                if res.closed:
                    return web.Response(
                        status=204,
                        headers={
                            p.H_NEXT_OFFSET: offset,
                            p.H_UP_TO_DATE: "true",
                            p.H_CLOSED: "true",
                        },
                    )
                remaining = deadline - loop.time()
                if remaining <= 0 or not await w.wait(remaining):
                    return web.Response(
                        status=204,
                        headers={
                            p.H_NEXT_OFFSET: offset,
                            p.H_UP_TO_DATE: "true",
                            p.H_CURSOR: p.response_cursor(cursor),
                            "Cache-Control": "no-store",
                        },
                    )
                await self.store.touch(rec)
                res = await self.store.read(rec, res.next_seq)
        return self._data_response(request, rec, res, start, cursor=p.response_cursor(cursor))

    async def _sse(
        self, request: web.Request, rec: StreamRecord, after: int | None, cursor: str | None
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        }
        if not p.is_text(rec.content_type):
            headers[p.H_SSE_ENCODING] = "base64"
        resp = web.StreamResponse(status=200, headers=headers)
        loop = asyncio.get_running_loop()
        ends = loop.time() + SSE_MAX_SECONDS
        timeout = self.settings.long_poll_timeout
        json_mode = p.is_json(rec.content_type)
        async with self.live.watch(rec.inc) as w:
            if after is None:
                after, _ = await self.store.tail(rec)
            await resp.prepare(request)
            announce = True  # a control event is due even without data
            try:
                while True:
                    res = await self.store.read(rec, after)
                    parts = [m.data for m in res.msgs if m.data]
                    after = res.next_seq
                    offset = p.format_offset(after)
                    out = b""
                    if parts:
                        payload = p.json_body(parts) if json_mode else b"".join(parts)
                        out = p.sse_data(payload, content_type=rec.content_type)
                    if res.up_to_date and res.closed:
                        out += p.sse_control(offset, cursor=None, up_to_date=True, closed=True)
                        await resp.write(out)
                        break
                    if parts or announce:
                        out += p.sse_control(
                            offset,
                            cursor=p.response_cursor(cursor),
                            up_to_date=res.up_to_date,
                            closed=False,
                        )
                        await resp.write(out)
                    if not res.up_to_date:
                        announce = False
                        continue
                    remaining = ends - loop.time()
                    if remaining <= 0:
                        break
                    announce = not await w.wait(min(timeout, remaining))
                    if self.live.closing:
                        break
                    await self.store.touch(rec)
            except ConnectionResetError:
                log.debug("SSE reader of %s went away", rec.inc)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp


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
    app[LIVE] = LiveWatchers(nc, settings)
    handlers = DurableHandlers(app)
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
    sweeper = asyncio.create_task(_sweep_forever(app[LIFE], settings.sweep_interval))
    try:
        yield
    finally:
        sweeper.cancel()
        await asyncio.wait([sweeper])
        await live.close()
        await store.close()


async def _sweep_forever(life: Lifecycle, interval: float) -> None:
    """Expire streams nobody touches any more (access expires them lazily, too)."""
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await life.sweep()
        except Exception:
            log.exception("durable streams sweep failed; retrying in %.0f s", interval)
        else:
            if swept:
                log.info("expired %d durable streams", swept)


__all__ = ["Principal", "build_app"]
