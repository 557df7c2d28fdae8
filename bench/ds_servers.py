"""The Durable Streams servers the bench compares, each a child process on 127.0.0.1.

- ``genjobs``: the genjobs HTTP gateway (``python -m service.cli gateway``, the protocol at
  ``/v1/stream``) on the bench's nats-server (R1), with ``GENJOBS_AUTH=none``; everything it
  stores is in JetStream.
- ``genjobs_r3``: the same gateway on a 3-node cluster of the section's own, stream and bucket
  replicated 3 times: an append is acknowledged once two of three servers hold it.
- ``ref_memory`` / ``ref_file``: the reference server ``@durable-streams/server`` (Node, from
  the repo's ``package.json``), in memory and with its file store (LMDB + append-only logs,
  ``fdatasync`` on every append).
- ``rakaia``: ``rakaia-streams`` from PyPI (the ``bench`` extra), its in-memory ASGI app on
  uvicorn with uvloop and httptools.

Each says when it is ready (a ``READY <url>`` line, or its health route answering) and is
registered with the bench's watchdog. Why one cannot run here is a ``skipped`` reason, never a
failure: the bench keeps going with the others.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from urllib.parse import urlsplit

from bench.figures import DS_SYSTEMS
from bench.infra import REPO, die_with_parent, free_port

SYSTEMS = DS_SYSTEMS
PEERS = SYSTEMS[1:]
REF_SERVER = REPO / "node_modules" / "@durable-streams" / "server"


class ServerUnavailable(RuntimeError):
    """The server cannot run on this machine; the message says how to get it."""


def node_missing() -> str | None:
    if shutil.which("node") is None:
        return "node not found on PATH (Node >= 18): install nodejs, then `npm ci`"
    if not REF_SERVER.is_dir():
        return "@durable-streams/server not installed: run `npm ci` in the repo"
    return None


def missing(system: str) -> str | None:
    """Why ``system`` cannot run here, or None."""
    if system in ("ref_memory", "ref_file"):
        return node_missing()
    if system == "rakaia":
        for mod, dist in (("rakaia", "rakaia-streams"), ("uvicorn", "uvicorn")):
            if importlib.util.find_spec(mod) is None:
                return f"{dist} not installed: pip install -e '.[bench]'"
        return None
    if system in ("genjobs", "genjobs_r3"):
        if importlib.util.find_spec("service.http") is None:
            return "the genjobs HTTP gateway (service.http) is not in this tree"
        return None
    raise ValueError(system)


class ServerProc:
    """One server child: output drained by a thread, readiness from a line or an HTTP probe."""

    def __init__(
        self,
        system: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        url: str | None = None,
        probe: str | None = None,
        ready_mark: str | None = None,
        cleanup: tempfile.TemporaryDirectory[str] | None = None,
    ) -> None:
        self.system = system
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.url = url or ""
        self.probe = probe
        self.ready_mark = ready_mark
        self._cleanup = cleanup
        self._proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=60)
        self._ready = threading.Event()
        self._exited = threading.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> str:
        """Start and wait (bounded) until it serves; returns its base URL.

        Raises: ServerUnavailable when it exits or does not get ready in ``timeout``.
        """
        self._proc = subprocess.Popen(
            self.argv,
            cwd=REPO,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            preexec_fn=die_with_parent,
        )
        threading.Thread(target=self._drain, daemon=True, name=f"{self.system}-log").start()
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self._exited.is_set():
            if self.probe is None:
                if self._ready.wait(0.05):
                    return self.url
            elif self._probe_ok():
                return self.url
            else:
                self._exited.wait(0.05)
        self.stop()
        tail = "\n".join(list(self.lines)[-10:])
        raise ServerUnavailable(f"{self.system} did not become ready: {tail}")

    def _probe_ok(self) -> bool:
        assert self.probe is not None
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=1)
        try:
            conn.request("GET", self.probe)
            return conn.getresponse().status < 500
        except OSError:
            return False
        finally:
            conn.close()

    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip())
            if self._ready.is_set():
                continue
            if line.startswith("READY "):
                self.url = line.split()[1].strip()
                self._ready.set()
            elif self.ready_mark and self.ready_mark in line:
                self._ready.set()
        proc.wait()
        self._exited.set()

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM) without waiting."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` s: the bench needs no graceful drain, and
        a server waiting for idle keep-alive sockets would only delay the run."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._cleanup is not None:
            with contextlib.suppress(OSError):
                self._cleanup.cleanup()
            self._cleanup = None


def server(
    system: str,
    *,
    nats_url: str,
    prefix: str,
    cluster_url: str = "",
    long_poll_timeout: float = 2.0,
) -> ServerProc:
    """A not yet started server process for ``system``."""
    if system in ("ref_memory", "ref_file"):
        argv = ["node", str(REPO / "bench" / "ds_ref_server.mjs")]
        tmp = None
        if system == "ref_file":
            tmp = tempfile.TemporaryDirectory(prefix="genjobs-bench-dsref-")
            argv.append(tmp.name)
        return ServerProc(system, argv, cleanup=tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if system == "rakaia":
        argv = [sys.executable, "-m", "uvicorn", "rakaia:app", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
        argv += ["--log-level", "warning", "--no-access-log"]
        env = {"LONG_POLL_TIMEOUT": str(long_poll_timeout)}
        return ServerProc(system, argv, env=env, url=url, probe="/v1/stream/__bench_probe")
    if system in ("genjobs", "genjobs_r3"):
        r3 = system == "genjobs_r3"
        env = {
            "GENJOBS_NATS_URL": cluster_url if r3 else nats_url,
            "GENJOBS_STREAM_REPLICAS": "3" if r3 else "1",
            "GENJOBS_PREFIX": prefix,
            "GENJOBS_HTTP": f"127.0.0.1:{port}",
            "GENJOBS_AUTH": "none",
            "GENJOBS_LONG_POLL_TIMEOUT": str(long_poll_timeout),
            "GENJOBS_LOG_LEVEL": "warning",
        }
        argv = [sys.executable, "-m", "service.cli", "gateway"]
        return ServerProc(system, argv, env=env, url=url, ready_mark="genjobs: ready gateway")
    raise ValueError(system)
