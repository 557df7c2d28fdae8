"""Which asyncio HTTP stack holds idle SSE connections most cheaply: aiohttp or Starlette+uvicorn.

    python -m bench.sse_stack [--conns 2000] [--idle 10] [--stacks aiohttp,starlette]

For each stack a minimal SSE handler runs in its own process (on uvloop; uvicorn also with
httptools), a client process opens ``--conns`` connections that each read the response head and
one event and then stay idle, and the server's RSS growth per connection and its CPU time while
the connections sit idle for ``--idle`` seconds (one ``: heartbeat`` per connection every 5 s)
are read from ``/proc``. The handlers do the same work: headers, one frame, a heartbeat loop.

This is the measurement behind choosing aiohttp for the gateway (``service/http``); the full
gateway is measured by ``just bench``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

from bench.infra import free_port

HEARTBEAT = 5.0

AIOHTTP_SERVER = """
import asyncio, sys, uvloop
from aiohttp import web

async def sse(request):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        await resp.write(b"id: 1\\nevent: message\\ndata: {}\\n\\n")
        while True:
            await asyncio.sleep(%(hb)s)
            await resp.write(b": heartbeat\\n\\n")
    except ConnectionError:
        pass
    return resp

app = web.Application()
app.router.add_get("/sse", sse)
uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None,
            backlog=4096)
"""

STARLETTE_SERVER = """
import asyncio, sys
import uvicorn
from starlette.applications import Starlette
from starlette.responses import StreamingResponse
from starlette.routing import Route

async def frames():
    yield b"id: 1\\nevent: message\\ndata: {}\\n\\n"
    while True:
        await asyncio.sleep(%(hb)s)
        yield b": heartbeat\\n\\n"

async def sse(request):
    return StreamingResponse(frames(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})

app = Starlette(routes=[Route("/sse", sse)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False, backlog=4096)
"""

CLIENT = """
import asyncio, sys

async def one(port, ready):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /sse HTTP/1.1\\r\\nHost: bench\\r\\nAccept: text/event-stream\\r\\n\\r\\n")
    await r.readuntil(b"data: {}")
    ready.append(1)
    while await r.read(65536):
        pass

async def main(port, n):
    ready = []
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(one(port, ready)))
        if i % 200 == 199:
            await asyncio.sleep(0.05)
    while len(ready) < n:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.gather(*tasks)

asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def measure(stack: str, conns: int, idle: float) -> dict[str, Any]:
    code = (AIOHTTP_SERVER if stack == "aiohttp" else STARLETTE_SERVER) % {"hb": HEARTBEAT}
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", code, str(port)])
    try:
        _wait_port(port)
        # One warm-up connection so that lazily imported code is in the baseline.
        warm = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT.replace("await asyncio.gather(*tasks)", ""),
                str(port),
                "1",
            ],
            capture_output=True,
            timeout=30,
            check=True,
        )
        assert b"ready" in warm.stdout
        base_rss = _rss_kb(server.pid)
        cpu0 = _cpu_s(server.pid)
        t0 = time.monotonic()
        client = subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(port), str(conns)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert client.stdout is not None
            line = client.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"{stack}: client did not get ready: {line!r}")
            setup_s = time.monotonic() - t0
            cpu_setup = _cpu_s(server.pid) - cpu0
            rss_open = _rss_kb(server.pid)
            cpu1 = _cpu_s(server.pid)
            time.sleep(idle)
            cpu_idle = _cpu_s(server.pid) - cpu1
            rss_idle = _rss_kb(server.pid)
        finally:
            client.kill()
            client.wait()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    per_conn = (max(rss_open, rss_idle) - base_rss) * 1024 / conns
    return {
        "stack": stack,
        "conns": conns,
        "setup_s": setup_s,
        "setup_cpu_ms_per_1000": cpu_setup * 1000 / conns * 1000,
        "rss_bytes_per_conn": per_conn,
        "idle_cpu_pct_core": cpu_idle / idle * 100,
        "base_rss_mb": base_rss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--conns", type=int, default=2000)
    p.add_argument("--idle", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--stacks", default="aiohttp,starlette")
    args = p.parse_args(argv)
    if "starlette" in args.stacks:
        try:
            import starlette  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            print("needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    print(
        f"{args.conns} idle SSE connections, heartbeat every {HEARTBEAT:g} s, "
        f"{args.idle:g} s idle window, load {os.getloadavg()[0]:.2f}"
    )
    print(f"{'stack':<10} {'RSS/conn':>10} {'idle CPU':>9} {'setup CPU/1000':>15} {'base RSS':>9}")
    for _ in range(args.rounds):
        for stack in args.stacks.split(","):
            r = measure(stack, args.conns, args.idle)
            print(
                f"{r['stack']:<10} {r['rss_bytes_per_conn'] / 1024:>8.1f}KB "
                f"{r['idle_cpu_pct_core']:>8.2f}% {r['setup_cpu_ms_per_1000']:>12.0f} ms "
                f"{r['base_rss_mb']:>7.1f}MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    raise SystemExit(main())
