"""Where the memory of an idle SSE connection goes: a real ``genjobs gateway`` holding N of them.

    python -m bench.sse_mem [--conns 2000,10000] [--jobs 250] [--trace] [--env K=V ...]

Processes: a nats-server, a producer (a replica and the service API holding ``--jobs`` jobs with
their opening events, then silent), the gateway under test (``genjobs gateway``, the real CLI,
with a control thread on its stdin) and one client process (raw protocols, bench/sse_client.py).
The clients open one connection per job first (the per-job state is then paid for), then the
rest in steps; at each step the server's RSS is read from ``/proc``, and glibc's ``mallinfo2``
(heap in use / free) and ``tracemalloc``'s total are read inside the gateway.

``--trace`` starts tracemalloc in the gateway (25 frames): between the last two steps it prints
the top allocation sites and a census of gc-tracked objects by type (count and ``sys.getsizeof``),
per connection. tracemalloc inflates RSS, so read RSS figures from a run without it.

``--env MALLOC_ARENA_MAX=2`` or ``--env PYTHONMALLOC=malloc`` run the gateway with that setting.
The CPU of the gateway over ``--idle`` seconds of idle connections is printed at the last step.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import select
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.infra import NatsServer, cpu_seconds, free_port, rss_bytes, spawn_child
from bench.sse_client import Totals, get_request, open_clients, wait_until
from bench.sse_run import JWT_SECRET, STREAM_PREFIX, bearer

TRACE_FRAMES = 25


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int]:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    m = libc.mallinfo2()
    return {"heap_in_use": m.uordblks, "heap_free": m.fordblks, "mmapped": m.hblkhd}


# --- in the gateway process -------------------------------------------------------------------


def _census() -> dict[str, list[int]]:
    counts: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for o in gc.get_objects():
        t = type(o)
        name = f"{t.__module__}.{t.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(o)
    return {k: [counts[k], sizes[k]] for k in counts}


def _control(out_dir: Path) -> None:
    """Answers the parent's stdin lines: ``stats NAME`` (figures; with tracemalloc on, also a
    snapshot and a census written to ``out_dir/NAME.*``)."""
    for line in sys.stdin:
        cmd, _, name = line.strip().partition(" ")
        if cmd != "stats":
            continue
        gc.collect()
        figures: dict[str, Any] = {"rss": rss_bytes(), **_mallinfo()}
        if tracemalloc.is_tracing():
            figures["traced"] = tracemalloc.get_traced_memory()[0]
            tracemalloc.take_snapshot().dump(str(out_dir / f"{name}.snap"))
            (out_dir / f"{name}.census.json").write_text(json.dumps(_census()))
        print("STATS " + json.dumps(figures), flush=True)


def gateway_child(out_dir: str, trace: bool) -> int:
    if trace:
        tracemalloc.start(TRACE_FRAMES)
    from service.cli.main import main

    threading.Thread(target=_control, args=(Path(out_dir),), daemon=True).start()
    return main(["gateway"])


# --- the producer and the clients -------------------------------------------------------------


async def producer_child(nats_url: str, prefix: str, jobs: int) -> None:
    from bench.common import bounded_map, opening_events
    from bench.sse import USER, _job
    from service.config import Settings
    from service.server.api import ServiceApi
    from service.server.replica import Replica

    replica = Replica(Settings(nats_url=nats_url, prefix=prefix))
    await replica.start()
    api = ServiceApi(replica)
    await api.start()
    try:
        handles = await bounded_map(lambda i: replica.create_job(USER, job_id=_job(i)), range(jobs))
        for h in handles:
            for ev in opening_events(h.job_id):
                await h.emit(ev)
            await h.flush()
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        await api.stop()
        await replica.stop()


async def clients_child(port: int, jobs: int) -> None:
    """Opens ``jobs`` connections (``WARM``), then ``more K`` per stdin line (``OPENED``)."""
    from bench.sse import _job

    totals = Totals()
    auth = [("Authorization", bearer())]
    n = 0
    held = []

    async def more(k: int) -> None:
        nonlocal n
        reqs = [
            get_request("127.0.0.1", port, f"{STREAM_PREFIX}/stream/{_job(i % jobs)}", auth)
            for i in range(n, n + k)
        ]
        held.extend(await open_clients("127.0.0.1", port, reqs, totals, "genjobs", offset=n))
        n += k
        await wait_until(totals, lambda: totals.first_events + totals.dropped >= n, 120.0)
        if totals.dropped or totals.bad_status:
            raise RuntimeError(f"dropped {totals.dropped}, statuses {totals.bad_status}")

    await more(jobs)
    print("WARM", flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        await more(int(line.split()[1]))
        print("OPENED", flush=True)


# --- the parent -------------------------------------------------------------------------------


class _Proc:
    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        with log.open("w") as err:
            self.p = spawn_child(argv, env, err, stdin=subprocess.PIPE)

    def expect(self, prefix: str, timeout: float = 180.0) -> str:
        assert self.p.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.p.stdout], [], [], deadline - time.monotonic())
            line = self.p.stdout.readline() if ready else ""
            if not line:
                break
            if line.startswith(prefix) or prefix in line:
                return line.strip()
        raise RuntimeError(f"no {prefix!r} from {self.p.args}")

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


def _report_trace(out: Path, a: str, b: str, conns: int, top: int) -> None:
    before = tracemalloc.Snapshot.load(str(out / f"{a}.snap"))
    after = tracemalloc.Snapshot.load(str(out / f"{b}.snap"))
    print(f"\n-- allocation sites, bytes per connection ({a} -> {b}, {conns} connections)")
    for stat in after.compare_to(before, "lineno")[:top]:
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        print(f"{stat.size_diff / conns:9.1f} B {stat.count_diff / conns:6.2f} blocks  {where}")
    print("\n-- the same, by the innermost project, aiohttp or asyncio frame of the stack")
    sites: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        if stat.size_diff <= 0:
            continue
        for frame in reversed(stat.traceback):  # oldest first: innermost last
            if any(s in frame.filename for s in ("/service/", "/aiohttp/", "/nats/", "asyncio")):
                sites[f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"] += (
                    stat.size_diff
                )
                break
        else:
            sites[f"(other) {Path(stat.traceback[0].filename).name}"] += stat.size_diff
    for where, size in sites.most_common(top):
        print(f"{size / conns:9.1f} B  {where}")
    ca = json.loads((out / f"{a}.census.json").read_text())
    cb = json.loads((out / f"{b}.census.json").read_text())
    rows = []
    for k, (n, size) in cb.items():
        n0, s0 = ca.get(k, [0, 0])
        if n > n0:
            rows.append((size - s0, n - n0, k))
    rows.sort(reverse=True)
    print("\n-- gc-tracked objects per connection (count, sys.getsizeof bytes)")
    for size, n, k in rows[:top]:
        print(f"{n / conns:6.2f} x {size / conns:8.1f} B  {k}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", default="2000,10000", help="client counts to step through")
    ap.add_argument("--jobs", type=int, default=250)
    ap.add_argument("--step", type=int, default=1000, help="connections opened per step")
    ap.add_argument("--trace", action="store_true", help="tracemalloc + census, last step")
    ap.add_argument("--idle", type=float, default=10.0, help="idle CPU window at the end (s)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--env", action="append", default=[], help="K=V for the gateway")
    ap.add_argument("--out", default="/tmp/sse_mem")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.conns.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    nats = NatsServer()
    url = nats.start()
    prefix = f"bmem{uuid.uuid4().hex[:8]}"
    port = free_port()
    base = {**os.environ, "GENJOBS_NATS_URL": url, "GENJOBS_PREFIX": prefix}
    gw_env = {
        **base,
        "GENJOBS_HTTP": f"127.0.0.1:{port}",
        "GENJOBS_JWT_SECRET": JWT_SECRET,
        "GENJOBS_LOG_LEVEL": "warning",
        **dict(kv.split("=", 1) for kv in args.env),
    }
    me = [sys.executable, "-m", "bench.sse_mem"]
    procs: list[_Proc] = []
    try:
        prod = _Proc([*me, "_producer", url, prefix, str(args.jobs)], base, out / "producer.log")
        procs.append(prod)
        prod.expect("READY")
        gw = _Proc([*me, "_gateway", str(out), str(int(args.trace))], gw_env, out / "gw.log")
        procs.append(gw)
        gw.expect("genjobs: ready")
        pid = gw.p.pid

        def stats(name: str) -> dict[str, Any]:
            gw.send(f"stats {name}")
            figures: dict[str, Any] = json.loads(gw.expect("STATS ").split(" ", 1)[1])
            return figures

        cli = _Proc([*me, "_clients", str(port), str(args.jobs)], base, out / "clients.log")
        procs.append(cli)
        cli.expect("WARM")
        have = args.jobs
        prev = warm = stats("warm")
        print(
            f"load {os.getloadavg()[0]:.2f}; warm ({have} conns): rss {warm['rss'] / 2**20:.1f} MB"
        )
        last_names = ("warm", "warm")
        for target in [*range(have + args.step, max(counts), args.step), max(counts)]:
            cli.send(f"more {target - have}")
            cli.expect("OPENED")
            step = target - have
            have = target
            name = f"c{have}"
            if args.trace and have < max(counts) - args.step:
                continue  # snapshots are slow: only the last two steps
            now = stats(name)
            line = f"{have:6d} conns: rss/conn since warm {(now['rss'] - warm['rss']) / (have - args.jobs) / 1024:5.1f} KB"
            line += f", last step {(now['rss'] - prev['rss']) / step / 1024:5.1f} KB"
            line += (
                f", heap in use {(now['heap_in_use'] - prev['heap_in_use']) / step / 1024:5.1f} KB"
            )
            line += f", heap free {now['heap_free'] / 2**20:6.1f} MB"
            if "traced" in now:
                line += f", traced {(now['traced'] - prev['traced']) / step / 1024:5.1f} KB"
            print(line, flush=True)
            prev = now
            last_names = (last_names[1], name)
        c0, t0 = cpu_seconds(pid), time.monotonic()
        time.sleep(args.idle)  # a measurement window, not a wait for a state
        cpu = 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)
        print(
            f"idle CPU at {have} conns: {cpu:.2f} % of a core ({args.idle:.0f} s); load {os.getloadavg()[0]:.2f}"
        )
        if args.trace:
            _report_trace(out, last_names[0], last_names[1], args.step, args.top)
    finally:
        for p in reversed(procs):
            p.stop()
        nats.stop()
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_gateway":
        sys.exit(gateway_child(sys.argv[2], sys.argv[3] == "1"))
    if len(sys.argv) > 1 and sys.argv[1] == "_producer":
        asyncio.run(producer_child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        sys.exit(0)
    if len(sys.argv) > 1 and sys.argv[1] == "_clients":
        asyncio.run(clients_child(int(sys.argv[2]), int(sys.argv[3])))
        sys.exit(0)
    sys.exit(main())
