"""The bench's own servers, and what a benchmark reads about processes and the machine.

The bench starts its own nats-server (``EmbeddedServer``: temp dir, a port the server picks)
and its own redis-server (a free port, no persistence, 127.0.0.1 only), so a run never touches
anybody else's data and measures a cold, known configuration. Both are registered with
:mod:`bench.guard`, which stops them if the bench dies or overruns its deadline.

Process figures come from ``/proc`` (Linux): resident memory and CPU time of any pid, so the
parent can also read the servers' CPU while a child process measures itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

from service.nats.embedded import EmbeddedServer, find_nats_server

REPO = Path(__file__).resolve().parent.parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# --- process figures --------------------------------------------------------------------------


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` now."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU time ``pid`` has used so far (threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may contain spaces; fields after the closing parenthesis are fixed.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def die_with_parent() -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux; no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, 9, 0, 0, 0)


def spawn_child(
    argv: list[str], env: dict[str, str] | None, stderr: IO[str], *, stdin: int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """A bench child in the repo, its stdout a text pipe, killed with its parent."""
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        preexec_fn=die_with_parent,
    )


# --- machine and versions ---------------------------------------------------------------------


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _version_of(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def _dist(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    redis_bin = shutil.which("redis-server")
    return {
        "hostname": platform.node(),
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(_mem_total() / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": {
            "genjobs": _dist("genjobs"),
            "git_commit": _git("rev-parse", "--short", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "nats-server": _version_of([find_nats_server(), "--version"]),
            "redis-server": _version_of([redis_bin, "--version"]) if redis_bin else "absent",
            "nats-py": _dist("nats-py"),
            "redis-py": _dist("redis"),
            "msgspec": _dist("msgspec"),
            "uvloop": _dist("uvloop"),
        },
    }


# --- servers ----------------------------------------------------------------------------------


class Guard:
    """The watchdog child (see :mod:`bench.guard`); ``watch(pid)`` registers a server."""

    def __init__(self, deadline: float) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.guard", str(deadline)],
            stdin=subprocess.PIPE,
            cwd=REPO,
        )

    def watch(self, pid: int | None) -> None:
        if pid is None or self._proc.stdin is None:
            return
        self._proc.stdin.write(f"{pid}\n".encode())
        self._proc.stdin.flush()

    def close(self) -> None:
        """Tell the guard we are done (it stops anything still registered) and wait for it."""
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


class NatsServer:
    """nats-server with the repo's ``nats.conf`` in a temp store dir, on a port it picks."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="genjobs-bench-nats-")
        self._srv = EmbeddedServer(Path(self._dir.name) / "store", port=-1, name="bench-nats")
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._srv.pid

    def start(self) -> str:
        self.url = self._srv.start()
        return self.url

    def stop(self) -> None:
        self._srv.stop()
        self._dir.cleanup()


class NatsCluster:
    """Three nats-servers routed to each other on loopback, the repo's ``nats.conf`` each: a
    JetStream cluster, so genjobs can be measured with its data replicated (R3) as well.

    ``start`` returns once the cluster has a JetStream meta leader (it answers account info).
    """

    NAME = "genjobs-bench"

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="genjobs-bench-cluster-")
        self.ports = [free_port() for _ in range(3)]
        cports = [free_port() for _ in range(3)]
        self._nodes = []
        for i in range(3):
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i)
            args = ["--cluster", f"nats://127.0.0.1:{cports[i]}", "--cluster_name", self.NAME]
            args += ["--routes", routes]
            store = Path(self._dir.name) / f"n{i}"
            name = f"bench-c{i}"
            self._nodes.append(
                EmbeddedServer(store, port=self.ports[i], extra_args=args, name=name)
            )

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{p}" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [n.pid for n in self._nodes if n.pid is not None]

    def start(self, timeout: float = 60.0) -> str:
        """Start the three nodes; returns the comma-separated URL list a client takes.

        Raises: EmbeddedServerError (a node did not start), TimeoutError (no meta leader).
        """
        # Until all three listen, each logs that its routes are refused: expected, not news.
        server_log = logging.getLogger("genjobs.nats-server")
        level = server_log.level
        server_log.setLevel(logging.ERROR + 1)
        try:
            for node in self._nodes:
                node.start()
            asyncio.run(self._wait_jetstream(timeout))
        finally:
            server_log.setLevel(level)
        return ",".join(self.urls)

    async def _wait_jetstream(self, timeout: float) -> None:
        import nats
        from nats.js.errors import APIError

        nc = await nats.connect(self.urls, name="bench-cluster-wait")
        try:
            js = nc.jetstream(timeout=2.0)
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await js.account_info()
                        return
                    except (APIError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                        await asyncio.sleep(0.2)  # no event exists for "meta leader elected"
        finally:
            await nc.close()

    def stop(self) -> None:
        for node in self._nodes:  # kill: a clustered server's orderly stop waits for peers
            node.kill()
        self._dir.cleanup()


class RedisUnavailable(RuntimeError):
    """redis-server or redis-py is missing; the message says how to get it."""


def redis_missing() -> str | None:
    """Why the Redis baseline cannot run here, or None when it can."""
    if shutil.which("redis-server") is None:
        return "redis-server not found on PATH: run `just bench-deps` to install it"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "redis-py not installed: run `just bench-deps` (the `bench` extra)"
    return None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to 0 and released): the one helper the
    bench and the tests pick ports with."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A throwaway redis-server: free port, 127.0.0.1 only, no RDB, no AOF, temp dir.

    Readiness is read from its log ("Ready to accept connections"), never guessed.
    """

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="genjobs-bench-redis-")
        self._proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.tail: list[str] = []

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> str:
        """Raises: RedisUnavailable when redis-server is missing or does not come up."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisUnavailable("redis-server not found: run `just bench-deps`")
        for _attempt in range(3):
            self.port = free_port()
            self._proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    self._dir.name,
                    "--daemonize",
                    "no",
                    "--maxclients",
                    "2000",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                preexec_fn=die_with_parent,
            )
            ready = threading.Event()
            threading.Thread(target=self._drain, args=(ready,), daemon=True).start()
            end = time.monotonic() + timeout
            while time.monotonic() < end and self._proc.poll() is None and not ready.is_set():
                ready.wait(0.05)
            if ready.is_set():
                return self.url
            self.stop()
            if not any("Address already in use" in line for line in self.tail):
                break
        raise RedisUnavailable(
            "redis-server did not start: " + (self.tail[-1] if self.tail else "")
        )

    def _drain(self, ready: threading.Event) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        for line in proc.stdout:
            self.tail = [*self.tail[-20:], line.rstrip()]
            if "Ready to accept connections" in line:
                ready.set()

    def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cleanup(self) -> None:
        self.stop()
        self._dir.cleanup()
