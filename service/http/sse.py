"""Server-sent events for one job: frames with ``id: <stream seq>``, heartbeats, slow clients.

A response is one task (aiohttp's handler task) that hands its connection to the job's one
live delivery in this process (``service/client/fanout.py``): connections at the live edge share
one reader, and each batch of events is encoded once (:class:`Frames`: the SSE bytes and the HTTP
chunk) and pushed to every attached connection's transport; a connection that resumes from
further back catches up on its own first. No other task per connection: one
:class:`Heartbeats` task per process walks the open responses.

Every frame carries ``id: <seq>``, the event's stream sequence, so a browser's ``EventSource``
reconnect (``Last-Event-ID``) continues after the last frame it parsed, with no gap and no
duplicate. A frame is written in one piece, so a client that loses the connection mid-frame
never dispatches half of one.

Slow clients are bounded: what one client has not read yet stays in its socket's write buffer,
at most ``sse_max_buffer`` bytes (the transport's high-water mark). A client that keeps it full
for ``sse_close_grace`` seconds is disconnected: the ``retry:`` hint sent at the start of every
response tells it when to come back, and it resumes by id. Meanwhile its reader holds at most
``reader_queue`` events (the SDK's catch-up mode), so memory per connection has a bound either
way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from aiohttp import web

from service.client.reader import ReadEvent

from .config import HttpSettings

if TYPE_CHECKING:
    from .metrics import Metrics

log = logging.getLogger("genjobs.http.sse")

SSE_HEADERS: Final = {
    # LibreChat's headers (api/server/controllers/agents/request.js), so proxies and its client
    # treat the gateway's stream exactly as LibreChat's own.
    "Content-Type": "text/event-stream",
    "Content-Encoding": "identity",
    "Cache-Control": "no-cache, no-transform",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
HEARTBEAT_FRAME: Final = b": heartbeat\n\n"


def data_lines(data: bytes) -> bytes:
    """``data:`` lines of a payload; a payload with line breaks becomes several lines (the
    client joins them with ``\\n``, which gives the same JSON text back)."""
    if b"\n" not in data and b"\r" not in data:
        return b"data: " + data + b"\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return b"".join(b"data: " + line + b"\n" for line in lines)


def frame(seq: int, event: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\n%s\n" % (seq, event.encode(), data_lines(data))


def event_frame(ev: ReadEvent) -> bytes:
    """An event as LibreChat's client expects it: ``event: error`` for an error terminal,
    ``event: message`` for everything else (its payload decides what the client does)."""
    return frame(ev.seq, "error" if ev.kind == "error" else "message", ev.data)


class Frames:
    """A batch of frames encoded once for every connection it goes to: the bytes as the body
    carries them (``raw``) and as one HTTP/1.1 chunk (``chunked``), ``count`` frames, made at
    loop time ``at``."""

    __slots__ = ("at", "chunked", "count", "raw")

    def __init__(self, raw: bytes, count: int) -> None:
        self.raw = raw
        self.chunked = b"%x\r\n%b\r\n" % (len(raw), raw)
        self.count = count
        self.at = asyncio.get_running_loop().time()


class SlowClient(Exception):
    """The client kept its buffer full for longer than the grace period."""


class SseResponse:
    """One open SSE response: write frames, heartbeat, drop a slow client."""

    __slots__ = (
        "_over_since",
        "chunked",
        "done",
        "hs",
        "last_write",
        "metrics",
        "request",
        "resp",
    )

    def __init__(
        self, request: web.Request, resp: web.StreamResponse, hs: HttpSettings, metrics: Metrics
    ) -> None:
        self.request = request
        self.resp = resp
        self.hs = hs
        self.metrics = metrics
        self.last_write = 0.0
        self._over_since = 0.0
        self.done = False
        """The handler has stopped writing events: no more heartbeats."""
        # Whether aiohttp frames the body as chunks (HTTP/1.1; an HTTP/1.0 body is raw).
        self.chunked = resp.headers.get("Transfer-Encoding") == "chunked"

    @classmethod
    async def open(
        cls, request: web.Request, hs: HttpSettings, metrics: Metrics, *, status: int = 200
    ) -> SseResponse:
        """Send the headers and the ``retry:`` hint.

        Raises:
            ConnectionError: the client is gone.
        """
        resp = web.StreamResponse(status=status, headers=SSE_HEADERS)
        await resp.prepare(request)
        transport = request.transport
        if transport is not None:
            # The socket buffer is the client's queue: past this, writes wait (and time out).
            transport.set_write_buffer_limits(high=hs.sse_max_buffer)
        self = cls(request, resp, hs, metrics)
        await self.write(b"retry: %d\n\n" % hs.sse_retry_ms)
        return self

    def buffered(self) -> int:
        transport = self.request.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def write(self, data: bytes) -> None:
        """Write ``data`` now; a client whose buffer is full gets ``sse_close_grace`` seconds.

        Raises:
            SlowClient: the buffer stayed full for the grace period.
            ConnectionError: the client is gone.
        """
        loop = asyncio.get_running_loop()
        self.last_write = loop.time()
        if self.buffered() < self.hs.sse_max_buffer:
            await self.resp.write(data)  # below the high-water mark: returns at once
            return
        try:
            async with asyncio.timeout(self.hs.sse_close_grace):
                # Until the transport is below its low-water mark again. aiohttp's own write
                # waits only for what went through it, and shared batches (push) do not.
                await self.request.writer.drain()
                await self.resp.write(data)
        except TimeoutError:
            raise SlowClient(
                f"{self.buffered()} bytes unread for {self.hs.sse_close_grace:g}s"
            ) from None

    def push(self, frames: Frames) -> bool:
        """Write a shared batch (``service/client/fanout.py``) to the socket now, without
        waiting; False when the client is gone or its buffer is at the high-water mark: the
        connection then continues on its own through :meth:`write`, whose grace applies.

        The bytes go to the transport directly, framed as the response's chunked body: one
        encoding and one chunk header per batch for all connections, no task woken per
        connection. The response's own writes (headers, ``retry:``, heartbeats, the end) go
        through aiohttp on the same transport, in order.
        """
        transport = self.request.transport
        if (
            transport is None
            or transport.is_closing()
            or transport.get_write_buffer_size() >= self.hs.sse_max_buffer
        ):
            return False
        transport.write(frames.chunked if self.chunked else frames.raw)
        self.last_write = frames.at
        return True

    async def heartbeat(self, now: float) -> None:
        """Called by :class:`Heartbeats`: a comment if nothing was written for a while; a client
        that has not read its buffer for two rounds is dropped.

        Raises:
            ConnectionError: the client is gone.
        """
        if self.done:
            return
        if self.buffered() >= self.hs.sse_max_buffer:
            if self._over_since == 0.0:
                self._over_since = now
            elif now - self._over_since >= self.hs.sse_close_grace:
                self.drop_slow("not reading")
            return
        self._over_since = 0.0
        if now - self.last_write >= self.hs.sse_heartbeat * 0.9:
            self.last_write = now
            await self.resp.write(HEARTBEAT_FRAME)

    def drop_slow(self, why: str) -> None:
        """Close the connection of a client that does not keep up; it resumes by id."""
        self.metrics.sse_slow.inc()
        log.info("SSE client %s dropped as too slow (%s)", self.request.remote, why)
        self.close(abort_after=self.hs.sse_close_grace)

    def close(self, *, abort_after: float = 0.0) -> None:
        """End the connection without the end of the chunked body, so every client (sse.js
        included) sees a broken stream and reconnects. What is buffered is still sent for
        ``abort_after`` seconds, then the socket is reset."""
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return
        if abort_after <= 0:
            transport.abort()
            return
        transport.close()
        asyncio.get_running_loop().call_later(abort_after, transport.abort)

    async def finish(self) -> None:
        """The terminal frame is written: end the body (bounded by the grace period)."""
        try:
            async with asyncio.timeout(self.hs.sse_close_grace):
                await self.resp.write_eof()
        except TimeoutError:
            self.close()


class Heartbeats:
    """One task per process: a ``: heartbeat`` comment on every response that has been quiet
    for ``sse_heartbeat`` seconds, and slow clients that stopped reading are dropped."""

    def __init__(self, hs: HttpSettings) -> None:
        self.hs = hs
        self.open: set[SseResponse] = set()

    @contextlib.contextmanager
    def register(self, sse: SseResponse) -> Iterator[None]:
        self.open.add(sse)
        try:
            yield
        finally:
            sse.done = True
            self.open.discard(sse)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = max(0.01, self.hs.sse_heartbeat / 3)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for sse in list(self.open):
                try:
                    await sse.heartbeat(now)
                except ConnectionError:
                    sse.close()
                except Exception:
                    # One broken response must not stop the heartbeats of all the others.
                    log.exception("heartbeat to %s failed; closing it", sse.request.remote)
                    sse.close()
