"""A cheap SSE client for holding thousands of connections: raw asyncio protocols, no HTTP library.

The fan-out bench runs the clients on the same 2 cores as the server it measures, so each
client must cost as little as possible: one ``asyncio.Protocol`` per connection that writes a
hand-built GET, reads the response head, undoes chunked transfer encoding and cuts the body
into SSE events at blank lines. Per complete batch of events it does three C-level scans
(regexes over the bytes): the token stamps (latency, see :mod:`bench.common`), the ``id:``
lines (each event once, in order), and the terminal marker. Nothing is JSON-decoded.

Works for genjobs' gateway (``id: <seq>`` + ``event: message`` frames, ends after the final
event) and for the Durable Streams reference server (``event: data`` + ``event: control``
frames, ends with ``"streamClosed":true``).
"""

from __future__ import annotations

import asyncio
import re
import time
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

from bench.common import _TEXT_RE

_ID_RE = re.compile(rb"^id: ?(\d+)", re.MULTILINE)
_GENJOBS_END = re.compile(rb'^data: ?\{"final":true|^event: ?error', re.MULTILINE)
_DS_END = re.compile(rb'"streamClosed":true')


@dataclass
class Totals:
    """What all clients of one process saw (one object shared by every protocol)."""

    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    emitted_ns: array[int] = field(default_factory=lambda: array("q"))
    events: int = 0
    tokens: int = 0
    heads: int = 0
    first_events: int = 0
    ended: int = 0
    dropped: int = 0
    bad_status: dict[int, int] = field(default_factory=dict)
    duplicates: int = 0
    out_of_order: int = 0
    last_token_ns: int = 0
    """When the last token was parsed (CLOCK_MONOTONIC): the end of the delivery window."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class SseClient(asyncio.Protocol):
    """One SSE connection. ``flavour`` is ``genjobs`` or ``ds`` (Durable Streams)."""

    __slots__ = (
        "_chunk_crlf",
        "_chunk_left",
        "_chunked",
        "_end_re",
        "_head",
        "_head_done",
        "_request",
        "_sse",
        "_tail",
        "done",
        "first_event_ns",
        "last_id",
        "sent_ns",
        "status",
        "totals",
        "transport",
        "waiter",
    )

    def __init__(self, request: bytes, totals: Totals, flavour: str) -> None:
        self._request = request
        self.totals = totals
        self._end_re = _GENJOBS_END if flavour == "genjobs" else _DS_END
        self.transport: asyncio.Transport | None = None
        self._head = b""
        self._head_done = False
        self._chunked = False
        self._chunk_left = 0  # data bytes left in the current chunk
        self._chunk_crlf = 0  # bytes of the CRLF after the current chunk still to skip
        self._tail = b""  # an unfinished chunk-size line
        self._sse = b""  # an unfinished SSE event
        self.status = 0
        self.last_id = 0
        self.sent_ns = 0
        self.first_event_ns = 0
        self.done = False
        self.waiter: asyncio.Future[None] | None = None  # set once the head is in (or failed)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.sent_ns = time.monotonic_ns()
        self.transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._head_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self._head[:end], self._head[end + 4 :]
            self._head = b""
            self._head_done = True
            self._on_head(head)
            if self.done or not data:
                return
        if self._chunked:
            data = self._dechunk(data)
        if data:
            self._on_sse(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done:
            self.done = True
            self.totals.dropped += 1
            self.totals.changed.set()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # --- parsing ------------------------------------------------------------------------------

    def _on_head(self, head: bytes) -> None:
        status_line, _, headers = head.partition(b"\r\n")
        self.status = int(status_line.split(b" ", 2)[1])
        self._chunked = b"transfer-encoding: chunked" in headers.lower()
        t = self.totals
        t.heads += 1
        if self.status != 200:
            t.bad_status[self.status] = t.bad_status.get(self.status, 0) + 1
            self.finish(ended=False)
        t.changed.set()
        self._wake()

    def _dechunk(self, data: bytes) -> bytes:
        out: list[bytes] = []
        pos, n = 0, len(data)
        if self._tail:
            data, self._tail = self._tail + data, b""
            n = len(data)
        while pos < n:
            if self._chunk_crlf:
                skip = min(self._chunk_crlf, n - pos)
                pos += skip
                self._chunk_crlf -= skip
                continue
            if self._chunk_left:
                take = min(self._chunk_left, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_crlf = 2
                continue
            nl = data.find(b"\r\n", pos)
            if nl < 0:
                self._tail = data[pos:]
                break
            size = int(data[pos:nl].split(b";", 1)[0], 16)
            pos = nl + 2
            if size == 0:  # the last chunk: the server ended the response
                break
            self._chunk_left = size
        return b"".join(out)

    def _on_sse(self, data: bytes) -> None:
        buf = self._sse + data if self._sse else data
        cut = buf.rfind(b"\n\n")
        if cut < 0:
            self._sse = buf
            return
        complete, self._sse = buf[: cut + 2], buf[cut + 2 :]
        now = time.monotonic_ns()
        t = self.totals
        if not self.first_event_ns and b"data:" in complete:  # not a comment or retry hint
            self.first_event_ns = now
            t.first_events += 1
            t.changed.set()
        t.events += complete.count(b"\n\n")
        for m in _ID_RE.finditer(complete):
            seq = int(m.group(1))
            if seq == self.last_id:
                t.duplicates += 1
            elif seq < self.last_id:
                t.out_of_order += 1
            self.last_id = seq
        for m in _TEXT_RE.finditer(complete):
            for stamp in m.group(1).split():
                emitted = int(stamp)
                t.latency_ms.append((now - emitted) / 1e6)
                t.emitted_ns.append(emitted)
                t.tokens += 1
            t.last_token_ns = now
        if self._end_re.search(complete):
            self.finish(ended=True)

    def finish(self, *, ended: bool) -> None:
        if self.done:
            return
        self.done = True
        if ended:
            self.totals.ended += 1
        self.totals.changed.set()
        if self.transport is not None:
            self.transport.close()


def get_request(host: str, port: int, path: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """An HTTP/1.1 GET for an event stream, as a browser would send it."""
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Accept: text/event-stream",
        "Cache-Control: no-cache",
        *(f"{k}: {v}" for k, v in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def source_address(i: int, spread: int = 64) -> tuple[str, int]:
    """A loopback source address for client ``i``: 127.0.0.2 - 127.0.0.65, any port.

    Spreading the clients over many source addresses multiplies the ephemeral ports available
    (one range per address), so tens of thousands of connections, and the ``TIME_WAIT`` they
    leave after a run, never exhaust them.
    """
    return (f"127.0.0.{2 + i % spread}", 0)


async def open_clients(
    host: str,
    port: int,
    requests: list[bytes],
    totals: Totals,
    flavour: str,
    *,
    in_flight: int = 200,
    offset: int = 0,
) -> list[SseClient]:
    """Open one client per request, at most ``in_flight`` handshakes at a time; returns once
    every connection has its response head (or failed)."""
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(in_flight)
    clients: list[SseClient] = []

    async def one(i: int, request: bytes) -> None:
        async with sem:
            client = SseClient(request, totals, flavour)
            client.waiter = loop.create_future()
            clients.append(client)
            await loop.create_connection(
                lambda: client, host, port, local_addr=source_address(offset + i)
            )
            await client.waiter

    async with asyncio.TaskGroup() as tg:
        for i, request in enumerate(requests):
            tg.create_task(one(i, request))
    return clients


async def wait_until(totals: Totals, ready: object, timeout: float) -> None:
    """Until ``ready()`` (a callable returning bool) holds; raises TimeoutError after ``timeout``."""
    assert callable(ready)
    async with asyncio.timeout(timeout):
        while not ready():
            totals.changed.clear()
            await totals.changed.wait()
