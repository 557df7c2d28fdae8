"""The Durable Streams reference server as the SSE bench's baseline, and a small HTTP client for it.

``@durable-streams/server`` (Node, in memory; installed by ``npm ci`` from the repo's
package.json) runs in a process of its own (``bench/durable_ref.mjs``), stopped when the bench
exits: the script ends when its stdin closes. The bench feeds it the same events genjobs gets
(one ``POST`` per event, JSON mode, from a separate process, as a producer would) and reads them
over its SSE (``GET <stream>?offset=-1&live=sse``) with the same clients as the gateway.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading

from bench.infra import REPO, die_with_parent

SCRIPT = REPO / "bench" / "durable_ref.mjs"
PACKAGE = REPO / "node_modules" / "@durable-streams" / "server" / "package.json"


def durable_ref_missing() -> str | None:
    """Why the reference server cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node not found on PATH: install Node.js (Debian's nodejs) and run `npm ci`"
    if not PACKAGE.is_file():
        return "@durable-streams/server not installed: run `npm ci` in the repo"
    return None


def durable_ref_versions() -> dict[str, str]:
    """The reference server's package version and Node's, for the report."""
    try:
        package = str(json.loads(PACKAGE.read_text())["version"])
    except (OSError, ValueError, KeyError):
        package = "absent"
    node = shutil.which("node")
    version = "absent"
    if node is not None:
        try:
            out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=10)
            version = out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            version = f"unavailable ({e})"
    return {"package": package, "node": version}


class DurableRefServer:
    """``node bench/durable_ref.mjs``: readiness is its ``READY <url>`` line, never guessed."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.tail: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self, timeout: float = 20.0) -> str:
        """Raises: RuntimeError when the server does not come up."""
        node = shutil.which("node")
        assert node is not None
        self._proc = subprocess.Popen(
            [node, str(SCRIPT)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=die_with_parent,
        )
        ready = threading.Event()
        threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
        if not ready.wait(timeout):
            self.stop()
            raise RuntimeError("durable streams server did not start: " + " | ".join(self.tail))
        return self.url

    def _drain(self, ready: threading.Event) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        for line in proc.stdout:
            self.tail = [*self.tail[-20:], line.rstrip()]
            if line.startswith("READY "):
                self.url = line.split()[1]
                ready.set()

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the script stops itself
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class HttpConnection:
    """One keep-alive HTTP/1.1 connection, one request at a time (an appending producer)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        if self._w is None or self._r is None or self._r.at_eof():
            # New, or closed by the server's keep-alive timeout (5 s) while the stream was idle.
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        lines.append(f"Content-Length: {len(body)}")
        self._w.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._r.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        got = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                got[k.strip().lower()] = v.strip()
        if got.get("transfer-encoding") == "chunked":
            data = await self._chunked()
        else:
            size = int(got.get("content-length", "0"))
            data = await self._r.readexactly(size) if size else b""
        return int(status_line.split(" ", 2)[1]), got, data

    async def _chunked(self) -> bytes:
        assert self._r is not None
        parts = []
        while True:
            size = int((await self._r.readuntil(b"\r\n")).split(b";", 1)[0], 16)
            if size == 0:
                await self._r.readuntil(b"\r\n")  # no trailers from this server
                return b"".join(parts)
            parts.append(await self._r.readexactly(size))
            await self._r.readexactly(2)

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            await self._w.wait_closed()
            self._w = None


def stream_path(name: str) -> str:
    return f"/v1/stream/{name}"


async def create_json_stream(conn: HttpConnection, name: str) -> None:
    status, _, body = await conn.request(
        "PUT", stream_path(name), headers={"Content-Type": "application/json"}
    )
    if status not in (200, 201):
        raise RuntimeError(f"PUT {name}: {status} {body[:200]!r}")


async def append(conn: HttpConnection, name: str, payload: bytes, *, close: bool = False) -> str:
    """One message; returns the stream's next offset (the message's own offset)."""
    headers = {"Content-Type": "application/json"}
    if close:
        headers["Stream-Closed"] = "true"
    status, got, body = await conn.request("POST", stream_path(name), payload, headers)
    if status not in (200, 204):
        raise RuntimeError(f"POST {name}: {status} {body[:200]!r}")
    return got.get("stream-next-offset", "")
