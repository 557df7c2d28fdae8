"""The ``sse`` section of ``just bench``: how one run drives its processes (see :mod:`bench.sse`).

For each client count and each system (genjobs' gateway, then the Durable Streams reference
server), a fresh server process, a producer process and a client process; the server's memory
and CPU are read from ``/proc`` by this process at the points the children announce on their
stdout (``WARM``, ``READY``). Then the resume measurement, on a fresh server each.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.durable_ref import DurableRefServer
from bench.infra import REPO, cpu_seconds, free_port, rss_bytes, spawn_child
from service.cli.common import READY_MARK

if TYPE_CHECKING:
    from bench.run import Bench

STREAM_PREFIX = "/api/agents/chat"
JWT_SECRET = "bench-only-secret-not-for-production-0123456789"
USER = "bench-user"


def bearer(user: str = USER) -> str:
    """A LibreChat-style access token (HS256, user id in ``id``) for the gateway."""
    import jwt

    token: str = jwt.encode(
        {"id": user, "exp": int(time.time()) + 3600}, JWT_SECRET, algorithm="HS256"
    )
    return f"Bearer {token}"


class GatewayServer:
    """``genjobs gateway`` in a process of its own; ready at its ``genjobs: ready`` line."""

    def __init__(self, nats_url: str, prefix: str, log: Path) -> None:
        self.nats_url, self.prefix, self.log = nats_url, prefix, log
        self.port = free_port()
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> None:
        """Raises: RuntimeError when the gateway does not say it is ready in time."""
        env = {
            **os.environ,
            "GENJOBS_NATS_URL": self.nats_url,
            "GENJOBS_PREFIX": self.prefix,
            "GENJOBS_HTTP": f"127.0.0.1:{self.port}",
            "GENJOBS_JWT_SECRET": JWT_SECRET,
            "GENJOBS_LOG_LEVEL": "warning",
        }
        with self.log.open("w") as err:
            self._proc = spawn_child([sys.executable, "-m", "service.cli", "gateway"], env, err)
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        line = self._proc.stdout.readline() if ready else ""
        if READY_MARK in line:
            # Nothing else is printed on stdout; the pipe stays open and unread.
            return
        self.stop()
        tail = self.log.read_text().strip().splitlines()[-10:] if self.log.is_file() else []
        raise RuntimeError("genjobs gateway did not become ready: " + " | ".join(tail or [line]))

    def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Child:
    """A bench worker with pipes: it announces phases on stdout and waits for ``GO`` on stdin."""

    def __init__(self, bench: Bench, task: str, params: dict[str, Any], **extra: Any) -> None:
        self.bench, self.task = bench, task
        argv, self.out, self.log = bench._argv(task, bench._cfg(params, **extra))
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )

    def expect(self, word: str, timeout: float) -> None:
        """Raises: RuntimeError when the child says something else, exits or takes too long."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().strip() if ready else ""
        if line != word:
            self.kill()
            reason = self.bench._result(self.task, self.out, self.log, self.proc.returncode)
            raise RuntimeError(f"{self.task}: no {word} ({reason.get('error') or line!r})")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return {"error": f"{self.task} timed out after {timeout:.0f}s"}
        return self.bench._result(self.task, self.out, self.log, rc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _cpu(pid: int | None) -> float:
    assert pid is not None
    return cpu_seconds(pid)


def _rss(pid: int | None) -> int:
    assert pid is not None
    return rss_bytes(pid)


class SseSection:
    def __init__(self, bench: Bench, ds_reason: str | None) -> None:
        self.bench = bench
        self.p = bench.plan["sse"]
        self.ds_reason = ds_reason
        self.timeout = bench.timeout

    def systems(self) -> list[str]:
        return ["genjobs"] + ([] if self.ds_reason else ["ds"])

    def run(self) -> dict[str, Any]:
        out: dict[str, Any] = {"runs": {}, "resume": {}}
        for n in self.p["clients"]:
            for system in self.systems():
                params = {**self.p, "clients": n, "timeout": self.timeout / 3}
                try:
                    out["runs"][f"{system}.{n}"] = self._fanout(system, params)
                except RuntimeError as e:
                    print(f"!! sse {system} {n} clients: {e}", flush=True)
                    out["runs"][f"{system}.{n}"] = {"error": str(e)}
                run = out["runs"][f"{system}.{n}"]
                self._say(f"sse {system} {n:,} clients", run)
        for system in self.systems():
            try:
                out["resume"][system] = self._resume(system)
            except RuntimeError as e:
                out["resume"][system] = {"error": str(e)}
        return out

    def _say(self, what: str, run: dict[str, Any]) -> None:
        if "error" in run:
            text = run["error"]
        else:
            c = run["clients"]
            text = (
                f"p99 {c['p99_ms_all']:.1f} ms, {run['deliveries_per_s']:,.0f} deliveries/s, "
                f"{run['cpu_per_1000_pct']:.1f} % CPU per 1,000, {run['idle_kb']:.1f} KB idle"
            )
        print(f"   {what}: {text}", flush=True)

    def _server(self, system: str, prefix: str) -> GatewayServer | DurableRefServer:
        if system == "genjobs":
            log = self.bench.work / f"gateway-{prefix}.log"
            gw = GatewayServer(self.bench.nats.url, prefix, log)
            gw.start()
            return gw
        ds = DurableRefServer()
        ds.start()
        return ds

    def _extra(self, system: str, server: GatewayServer | DurableRefServer, prefix: str) -> Any:
        if system == "genjobs":
            return {
                "prefix": prefix,
                "port": server.port,
                "flavour": "genjobs",
                "stream_prefix": STREAM_PREFIX,
                "headers": {"Authorization": bearer()},
            }
        assert isinstance(server, DurableRefServer)
        return {"ds_url": server.url, "port": server.port, "flavour": "ds", "headers": {}}

    def _fanout(self, system: str, p: dict[str, Any]) -> dict[str, Any]:
        prefix = f"bsse{uuid.uuid4().hex[:8]}"
        server = self._server(system, prefix)
        children: list[Child] = []
        try:
            extra = self._extra(system, server, prefix)
            task = "sse_genjobs_producer" if system == "genjobs" else "sse_ds_feeder"
            producer = Child(self.bench, task, p, **extra)
            children.append(producer)
            producer.expect("READY", self.timeout / 3)
            rss0 = _rss(server.pid)
            clients = Child(self.bench, "sse_clients", p, **extra)
            children.append(clients)
            clients.expect("WARM", self.timeout / 3)
            rss_warm = _rss(server.pid)
            clients.expect("READY", self.timeout / 3)
            rss_ready = _rss(server.pid)
            idle = self._idle_cpu(server.pid, p["idle_window"])
            nats_pid = self.bench.nats.pid
            c0, n0, t0 = _cpu(server.pid), _cpu(nats_pid), time.monotonic_ns()
            producer.send("GO")
            prod = producer.result(self.timeout / 2)
            # The window ends when the clients have read everything (they may lag behind).
            cli = clients.result(self.timeout / 3)
            wall = (time.monotonic_ns() - t0) / 1e9
            busy = 100 * (_cpu(server.pid) - c0) / wall
            nats_busy = 100 * (_cpu(nats_pid) - n0) / wall
        finally:
            for child in children:
                child.kill()
            server.stop()
        if "error" in prod or "error" in cli:
            return {"error": prod.get("error") or cli.get("error")}
        if cli["ended"] != cli["clients"]:
            return {
                "error": f"of {cli['clients']} clients {cli['ended']} got the terminal event: "
                f"{cli['dropped']} dropped, {cli['timed_out']} still reading after "
                f"{p['timeout'] + p['duration']:.0f} s, statuses {cli['bad_status']}"
            }
        delivering = max(1e-9, (cli["last_token_ns"] - t0) / 1e9)
        per_conn = max(1, p["clients"] - p["jobs"])
        return {
            "clients": cli,
            "producer": prod,
            "rss_start_mb": rss0 / 2**20,
            "idle_kb": (rss_ready - rss_warm) / per_conn / 1024,
            "idle_cpu_pct_windows": idle,
            "streaming_s": wall,
            "delivering_s": delivering,
            "offered_per_s": prod["rate"] * (p["clients"] / p["jobs"]),
            "server_cpu_pct": busy,
            "cpu_per_1000_pct": busy / (p["clients"] / 1000),
            "nats_server_cpu_pct": nats_busy if system == "genjobs" else None,
            "deliveries_per_s": cli["deliveries"] / delivering,
        }

    @staticmethod
    def _idle_cpu(pid: int | None, window: float, parts: int = 5) -> list[float]:
        """The server's CPU over ``window`` seconds of idle connections, in ``parts`` windows."""
        out = []
        for _ in range(parts):
            c0, t0 = _cpu(pid), time.monotonic()
            time.sleep(window / parts)  # a measurement window, not a wait for a state
            out.append(100 * (_cpu(pid) - c0) / (time.monotonic() - t0))
        return out

    def _resume(self, system: str) -> dict[str, Any]:
        prefix = f"bres{uuid.uuid4().hex[:8]}"
        server = self._server(system, prefix)
        try:
            extra = self._extra(system, server, prefix)
            task = "sse_resume_genjobs" if system == "genjobs" else "sse_resume_ds"
            child = Child(self.bench, task, self.p, **extra)
            try:
                return child.result(self.timeout / 2)
            finally:
                child.kill()
        finally:
            server.stop()
