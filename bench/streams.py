"""Section 8 of ``just bench``: genjobs' Durable Streams protocol beside the peers, in one run.

Every server of :mod:`bench.ds_servers` runs at once on this machine (idle while another is
measured), and one load generator, ``bench/ds_load.mjs`` (Node, keep-alive ``node:http``), is
the client of all of them, so no figure depends on a client's speed in one language and not
another. Measurements of the systems alternate round by round in rotating order, so ratios
hold on a noisy shared machine:

- append: W writers (1 or 100), each on a stream of its own, POST one JSON message of 50 bytes
  or 1 KB per request back to back for ``duration`` s: appends/s, and the servers' CPU.
- catch-up: a stream filled with ``messages`` appends of one message each, read from offset
  -1 following ``Stream-Next-Offset`` until ``Stream-Up-To-Date``; ms per full read.
- SSE: ``readers`` SSE readers over ``streams`` streams (``offset=now&live=sse``), a separate
  writer process appending ``rate`` messages/s to each; latency from the writer's stamp in the
  message to the reader's parse.

Ratios are genjobs' advantage: a peer's time over genjobs' (latency, catch-up) or genjobs' rate
over a peer's (append), so above 1 means genjobs is faster.
"""

from __future__ import annotations

import json
import select
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from bench.ds_servers import PEERS, SYSTEMS, ServerProc, ServerUnavailable, missing, server
from bench.infra import REPO, Guard, NatsCluster, cpu_seconds

LOAD = REPO / "bench" / "ds_load.mjs"
SIZES = (50, 1024)
WRITERS = (1, 100)

FULL: dict[str, Any] = {
    "append": {"duration": 2.0, "rounds": 3},
    "catchup": {"messages": 10_000, "size": 50, "reads": 5, "blocks": 3},
    "sse": {"readers": 1000, "streams": 100, "rate": 5, "duration": 5.0, "size": 50, "rounds": 2},
}
SMOKE: dict[str, Any] = {
    "append": {"duration": 0.2, "rounds": 1},
    "catchup": {"messages": 50, "size": 50, "reads": 1, "blocks": 1},
    "sse": {"readers": 20, "streams": 5, "rate": 10, "duration": 0.5, "size": 50, "rounds": 1},
}


def size_tag(size: int) -> str:
    return "1kb" if size == 1024 else f"{size}b"


class Section:
    """Runs the section; ``run()`` returns the raw results that :func:`bench.collect.streams`
    turns into figures."""

    def __init__(
        self,
        plan: dict[str, Any],
        work: Path,
        guard: Guard,
        *,
        nats_url: str,
        nats_pid: int | None,
        timeout: float,
    ) -> None:
        self.plan = plan
        self.work = work
        self.guard = guard
        self.nats_url = nats_url
        self.nats_pid = nats_pid
        self.timeout = timeout
        self.servers: dict[str, ServerProc] = {}
        self.skipped: dict[str, str] = {}
        self.cluster: NatsCluster | None = None

    # --- servers ------------------------------------------------------------------------------

    def _start_cluster(self) -> str:
        self.cluster = NatsCluster()
        try:
            url = self.cluster.start()
        finally:
            for pid in self.cluster.pids:
                self.guard.watch(pid)
        return url

    def _start_all(self) -> None:
        cluster_url = ""
        for system in SYSTEMS:
            reason = missing(system)
            if reason is not None:
                self.skipped[system] = reason
                print(f"   {system}: skipped ({reason})", flush=True)
                continue
            if system == "genjobs_r3":
                cluster_url = self._start_cluster()
            prefix = f"bds{uuid.uuid4().hex[:8]}"
            proc = server(system, nats_url=self.nats_url, prefix=prefix, cluster_url=cluster_url)
            try:
                proc.start()
            except ServerUnavailable as e:
                self.skipped[system] = f"error: {e}"
                print(f"!! {system} did not start: {e}", flush=True)
                continue
            self.guard.watch(proc.pid)
            self.servers[system] = proc
            print(f"   {system}: {proc.url} (pid {proc.pid})", flush=True)

    def _stop_all(self) -> None:
        for proc in self.servers.values():
            proc.terminate()
        for proc in self.servers.values():
            proc.stop()
        if self.cluster is not None:
            self.cluster.stop()

    # --- the load generator -------------------------------------------------------------------

    def _params(self, system: str, **p: Any) -> Path:
        path = self.work / f"ds-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps({"base": self.servers[system].url, **p}))
        return path

    def _node(self, mode: str, params: Path) -> dict[str, Any]:
        try:
            out = subprocess.run(
                ["node", str(LOAD), mode, str(params)],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=self.timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"ds_load {mode} timed out after {self.timeout:.0f}s"}
        return _last_json(out.stdout, out.stderr, out.returncode)

    def _cpu(self, system: str) -> dict[str, float]:
        pids = {"server": self.servers[system].pid}
        if system == "genjobs":
            pids["nats"] = self.nats_pid
        if system == "genjobs_r3" and self.cluster is not None:
            pids.update({f"nats{i}": pid for i, pid in enumerate(self.cluster.pids)})
        return {k: cpu_seconds(p) for k, p in pids.items() if p is not None}

    def _measured(self, system: str, mode: str, params: Path) -> dict[str, Any]:
        c0, t0 = self._cpu(system), time.monotonic()
        result = self._node(mode, params)
        c1, wall = self._cpu(system), max(1e-9, time.monotonic() - t0)
        if "error" not in result:
            result["cpu_pct"] = {k: round(100 * (c1[k] - c0[k]) / wall, 1) for k in c0}
        return result

    # --- the figures --------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        self._start_all()
        try:
            raw: dict[str, Any] = {"skipped": dict(self.skipped)}
            raw["append"] = self.append()
            raw["catchup"] = self.catchup()
            raw["sse"] = self.sse()
            raw["skipped"] = dict(self.skipped)
            return raw
        finally:
            self._stop_all()

    def _order(self, r: int) -> list[str]:
        systems = [s for s in SYSTEMS if s in self.servers]
        k = r % len(systems) if systems else 0
        return systems[k:] + systems[:k]

    def append(self) -> list[dict[str, Any]]:
        p = self.plan["append"]
        rounds = []
        for r in range(p["rounds"]):
            row: dict[str, Any] = {}
            for size in SIZES:
                for writers in WRITERS:
                    for system in self._order(r):
                        key = f"{size_tag(size)}.{writers}w.{system}"
                        tag = f"a{r}-{size_tag(size)}-{writers}-{uuid.uuid4().hex[:6]}"
                        params = self._params(
                            system, tag=tag, writers=writers, size=size, duration=p["duration"]
                        )
                        row[key] = self._measured(system, "append", params)
                        _say(f"append {key}", row[key], "rate", "/s")
            rounds.append(row)
        return rounds

    def catchup(self) -> dict[str, Any]:
        p = self.plan["catchup"]
        out: dict[str, Any] = {}
        for system in self._order(0):
            name = f"catchup-{uuid.uuid4().hex[:8]}"
            fill = self._node(
                "fill",
                self._params(system, stream=name, count=p["messages"], size=p["size"]),
            )
            out[system] = {"fill": fill, "stream": name, "blocks": []}
            _say(f"catch-up fill {system}", fill, "seconds", " s")
        for b in range(p["blocks"]):
            for system in self._order(b):
                if "error" in out[system]["fill"]:
                    continue
                params = self._params(
                    system, stream=out[system]["stream"], reads=p["reads"], expect=p["messages"]
                )
                block = self._node("catchup", params)
                out[system]["blocks"].append(block)
                _say(f"catch-up {system}", block, "ms", " ms")
        return out

    def sse(self) -> list[dict[str, Any]]:
        p = self.plan["sse"]
        rounds = []
        for r in range(p["rounds"]):
            row = {}
            for system in self._order(r):
                row[system] = self._sse_run(system, p)
                _say(f"SSE {system}", row[system], "p99_ms_all", " ms p99")
            rounds.append(row)
        return rounds

    def _sse_run(self, system: str, p: dict[str, Any]) -> dict[str, Any]:
        """Readers first (they print their ready line once all are connected), then the
        writer; the readers end when each holds every message or at their deadline."""
        expect = round(p["rate"] * p["duration"])
        readers = self._params(
            system,
            tag=f"sse-{uuid.uuid4().hex[:8]}",
            readers=p["readers"],
            streams=p["streams"],
            expect=expect,
            ready_timeout=30,
            deadline=p["duration"] * 3 + 15,
        )
        proc = subprocess.Popen(
            ["node", str(LOAD), "sse", str(readers)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], self.timeout)
            line = proc.stdout.readline() if ready else ""
            first = json.loads(line) if line.startswith("{") else {"error": "no ready line"}
            if not first.get("ready"):
                proc.kill()
                _, err = proc.communicate()
                return {"error": first.get("error") or f"readers not ready: {err[-500:]}"}
            c0, t0 = self._cpu(system), time.monotonic()
            writer = self._node(
                "pace",
                self._params(
                    system,
                    streams_names=first["streams"],
                    rate=p["rate"],
                    duration=p["duration"],
                    size=p["size"],
                ),
            )
            c1, wall = self._cpu(system), max(1e-9, time.monotonic() - t0)
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return {"error": "SSE readers timed out"}
        result = _last_json(out, err, proc.returncode)
        if "error" in writer:
            return {"error": f"writer: {writer['error']}"}
        if "error" not in result:
            result["writer"] = writer
            result["cpu_pct"] = {k: round(100 * (c1[k] - c0[k]) / wall, 1) for k in c0}
            if result["deliveries"] != result["expected_deliveries"]:
                result["error"] = (
                    f"{result['deliveries']} of {result['expected_deliveries']} deliveries"
                )
        return result


def _last_json(stdout: str, stderr: str, rc: int) -> dict[str, Any]:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"ds_load exited {rc} without a result: {stderr.strip()[-500:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _say(what: str, result: dict[str, Any], key: str, unit: str) -> None:
    if "error" in result:
        print(f"!! {what}: {result['error'][:300]}", flush=True)
        return
    value = result.get(key)
    if isinstance(value, list):
        value = sorted(value)[len(value) // 2]
    text = f"{value:,.1f}" if isinstance(value, (int, float)) else str(value)
    print(f"   {what}: {text}{unit}", flush=True)


__all__ = ["FULL", "PEERS", "SIZES", "SMOKE", "SYSTEMS", "WRITERS", "Section", "size_tag"]
