"""GET on a Durable Stream: catch-up, long-poll and SSE, over any readable view.

A view is a Durable Stream (its record) or a genjobs job's event log (:mod:`.jobs`): both are
JetStream subjects read by Direct Get from an offset, woken by their republished live subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from service.config import Settings

from . import protocol as p
from .access import principal_of
from .live import LiveWatchers, Watch
from .model import DsError, ReadResult, Source
from .storage import READ_MAX_BYTES, DurableStore

log = logging.getLogger("genjobs.http.durable")

EVENT_CACHE: Final = 256
EVENT_KEY_MSGS: Final = 16
SSE_MAX_SECONDS: Final = 60.0
"""An SSE response ends after this long; the client reconnects from its last offset."""


async def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class View:
    """What a GET reads: where (``source``), as what (``content_type``), the ETag's identity
    of this stream (``tag``: its incarnation, or a job's generation), and what to do on every
    read (``touch``: reset a TTL)."""

    source: Source
    content_type: str
    tag: str
    touch: Callable[[], Awaitable[None]] = _nothing


def parse_read_query(request: web.Request) -> tuple[int | None, str, str | None]:
    """(offset as a sequence, or ``None`` for ``now``; the raw start offset; live mode).

    Raises:
        DsError: 400 on an empty, repeated or malformed offset, or a live mode without one.
    """
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
    if raw is None or raw == p.OFFSET_START:
        return 0, p.OFFSET_START, live
    if raw == p.OFFSET_NOW:
        return None, raw, live
    after = p.parse_offset(raw)
    if after is None:
        raise DsError(400, "Invalid offset format")
    return after, raw, live


class Readers:
    def __init__(self, store: DurableStore, live: LiveWatchers, settings: Settings) -> None:
        self.store = store
        self.live = live
        self.s = settings
        # Encoded SSE data events of recent message sets: a thousand readers of one stream
        # woken by one append send the same bytes, encoded once. Stored messages never change,
        # and their sequences name them within a stream.
        self._events: OrderedDict[tuple[object, ...], bytes] = OrderedDict()

    def _data_event(
        self, view: View, res: ReadResult, parts: list[bytes], json_mode: bool
    ) -> bytes:
        key: tuple[object, ...] | None = None
        if len(res.msgs) <= EVENT_KEY_MSGS:
            key = (view.source.stream, view.content_type, *(m.seq for m in res.msgs))
            event = self._events.get(key)
            if event is not None:
                return event
        payload = p.json_body(parts) if json_mode else b"".join(parts)
        event = p.sse_data(payload, content_type=view.content_type)
        if key is not None:
            self._events[key] = event
            if len(self._events) > EVENT_CACHE:
                self._events.popitem(last=False)
        return event

    async def get(
        self, request: web.Request, view: View, after: int | None, start: str, live: str | None
    ) -> web.StreamResponse:
        if live == "sse":
            return await self._sse(request, view, after, request.query.get("cursor"))
        if live == "long-poll":
            return await self._long_poll(request, view, after, start)
        if after is None:
            return await self._at_now(view)
        res = await self.store.read(view.source, after)
        return self._data_response(request, view, res, start, cursor=None)

    async def head(self, view: View, extra: dict[str, str]) -> web.Response:
        tail, closed = await self.store.tail(view.source)
        offset = p.format_offset(tail)
        headers = {
            "Content-Type": view.content_type,
            p.H_NEXT_OFFSET: offset,
            "Cache-Control": "no-store",
            "ETag": f'"{view.tag}:-1:{offset}{":c" if closed else ""}"',
            **extra,
        }
        if closed:
            headers[p.H_CLOSED] = "true"
        return web.Response(status=200, headers=headers)

    async def _at_now(self, view: View) -> web.Response:
        tail, closed = await self.store.tail(view.source)
        headers = {
            "Content-Type": view.content_type,
            p.H_NEXT_OFFSET: p.format_offset(tail),
            p.H_UP_TO_DATE: "true",
            "Cache-Control": "no-store",
        }
        if closed:
            headers[p.H_CLOSED] = "true"
        body = b"[]" if p.is_json(view.content_type) else b""
        return web.Response(status=200, body=body, headers=headers)

    def _data_response(
        self,
        request: web.Request,
        view: View,
        res: ReadResult,
        start: str,
        *,
        cursor: str | None,
    ) -> web.Response:
        parts = [m.data for m in res.msgs if m.data]
        body = p.json_body(parts) if p.is_json(view.content_type) else b"".join(parts)
        offset = p.format_offset(res.next_seq)
        closed = res.closed and res.up_to_date
        etag = f'"{view.tag}:{start}:{offset}{":c" if closed else ""}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"Content-Type": view.content_type, p.H_NEXT_OFFSET: offset, "ETag": etag}
        if res.up_to_date:
            headers[p.H_UP_TO_DATE] = "true"
        if closed:
            headers[p.H_CLOSED] = "true"
        if cursor is not None:
            headers[p.H_CURSOR] = cursor
        if parts:
            scope = "public" if principal_of(request) is None else "private"
            headers["Cache-Control"] = f"{scope}, max-age=60, stale-while-revalidate=300"
        else:
            headers["Cache-Control"] = "no-store"
        return web.Response(status=200, body=body, headers=headers)

    async def _long_poll(
        self, request: web.Request, view: View, after: int | None, start: str
    ) -> web.StreamResponse:
        cursor = request.query.get("cursor")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.s.long_poll_timeout
        async with self.live.watch(view.source.live_subject) as w:
            if after is None:
                after, _ = await self.store.tail(view.source)
            res = await self.store.read(view.source, after)
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
                if remaining <= 0 or not await w.wait(remaining) or self.live.closing:
                    return web.Response(
                        status=204,
                        headers={
                            p.H_NEXT_OFFSET: offset,
                            p.H_UP_TO_DATE: "true",
                            p.H_CURSOR: p.response_cursor(cursor),
                            "Cache-Control": "no-store",
                        },
                    )
                await view.touch()
                res = await self._next(w, view.source, res.next_seq)
        return self._data_response(request, view, res, start, cursor=p.response_cursor(cursor))

    async def _next(self, w: Watch, source: Source, after: int) -> ReadResult:
        """What follows ``after`` once woken: from the live messages when they continue it
        without a gap, else read from the stream."""
        msgs, newest = w.recent_after(after, READ_MAX_BYTES)
        if not msgs:
            return await self.store.read(source, after)
        last = msgs[-1]
        return ReadResult(msgs, last.seq, newest, newest and source.closes(last))

    async def _sse(
        self, request: web.Request, view: View, after: int | None, cursor: str | None
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "Connection": "keep-alive",
            "X-Accel-Buffering": "no",
        }
        if not p.is_text(view.content_type):
            headers[p.H_SSE_ENCODING] = "base64"
        resp = web.StreamResponse(status=200, headers=headers)
        loop = asyncio.get_running_loop()
        ends = loop.time() + SSE_MAX_SECONDS
        timeout = self.s.long_poll_timeout
        json_mode = p.is_json(view.content_type)
        async with self.live.watch(view.source.live_subject) as w:
            if after is None:
                after, _ = await self.store.tail(view.source)
            await resp.prepare(request)
            announce = True  # a control event is due even without data
            woke = False
            try:
                while True:
                    if woke:
                        res = await self._next(w, view.source, after)
                    else:
                        res = await self.store.read(view.source, after)
                    parts = [m.data for m in res.msgs if m.data]
                    after = res.next_seq
                    offset = p.format_offset(after)
                    out = self._data_event(view, res, parts, json_mode) if parts else b""
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
                        announce = woke = False
                        continue
                    remaining = ends - loop.time()
                    if remaining <= 0:
                        break
                    woke = await w.wait(min(timeout, remaining))
                    announce = not woke
                    if self.live.closing:
                        break
                    await view.touch()
            except ConnectionResetError:
                log.debug("SSE reader of %s went away", view.source.subject)
        with contextlib.suppress(ConnectionResetError):
            await resp.write_eof()
        return resp
