"""An SSE reader of one job through the gateway, as a browser's EventSource reads it.

``GET <base>/api/agents/chat/stream/<job>`` with ``Authorization: Bearer <JWT>``; every frame
carries ``id: <stream seq>``. When the connection ends before the terminal event (a gateway
restart, a refused connection, a 5xx) it comes back with ``Last-Event-ID: <last id>`` after
``retry`` seconds, exactly as EventSource does. Plain asyncio streams (HTTP/1.1, chunked or
not): the check depends on nothing the gateway itself uses.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import jwt


def hs256_token(secret: str, claims: dict[str, object]) -> str:
    """A JWT signed HS256, as LibreChat signs its tokens (the gateway's JWT_SECRET)."""
    return jwt.encode(claims, secret, algorithm="HS256")


class _Closed(Exception):
    """The server closed the response."""


@dataclass
class SseFollower:
    base: str
    job_id: str
    token: str | None = None
    prefix: str = "/api/agents/chat"
    retry: float = 0.3
    deadline: float = 600.0
    seqs: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    terminal: str | None = None
    resumes: int = 0
    refused: int = 0
    statuses: dict[int, int] = field(default_factory=dict)

    def duplicates(self) -> int:
        return len(self.seqs) - len(set(self.seqs))

    async def follow(self) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.deadline
        while self.terminal is None:
            if loop.time() > end:
                raise TimeoutError(f"SSE {self.job_id}: no terminal event in {self.deadline}s")
            try:
                await self._once()
            except (OSError, _Closed, asyncio.IncompleteReadError):
                self.refused += 1
            if self.terminal is None:
                self.resumes += 1
                await asyncio.sleep(self.retry)  # EventSource's retry delay

    async def _once(self) -> None:
        url = urlsplit(self.base)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        try:
            headers = [
                f"GET {self.prefix}/stream/{self.job_id} HTTP/1.1",
                f"Host: {host}:{port}",
                "Accept: text/event-stream",
                "Cache-Control: no-cache",
            ]
            if self.token:
                headers.append(f"Authorization: Bearer {self.token}")
            if self.seqs:
                headers.append(f"Last-Event-ID: {self.seqs[-1]}")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
            await writer.drain()
            status_line = await reader.readline()
            if not status_line:
                raise _Closed
            status = int(status_line.split()[1])
            self.statuses[status] = self.statuses.get(status, 0) + 1
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if status == 204:
                self.terminal = "ended"  # after the terminal event: nothing will come
                return
            if status != 200:
                if 400 <= status < 500:
                    body = await reader.read(2000)
                    raise RuntimeError(f"SSE {self.job_id}: HTTP {status}: {body[:300]!r}")
                return  # 5xx: come back later
            await self._frames(reader, chunked)
        finally:
            writer.close()

    async def _frames(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        buf = b""
        while self.terminal is None:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                buf += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
            buf = buf.replace(b"\r\n", b"\n")
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                self._frame(frame.decode())

    def _frame(self, frame: str) -> None:
        event, ident, data = "message", None, []
        for line in frame.split("\n"):
            if not line or line.startswith(":"):
                continue  # a heartbeat comment
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                ident = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)
        if ident is None or not ident.isdigit():
            return  # a frame without a stream seq (e.g. a sync frame): not an event
        self.seqs.append(int(ident))
        self.times.append(time.time())
        payload = "\n".join(data)
        if event == "error":
            self.terminal = "error"
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            return
        if isinstance(obj, dict) and obj.get("final") is True:
            self.terminal = "final"
