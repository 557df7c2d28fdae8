"""Real ``genjobs serve`` and ``genjobs gateway`` child processes for the tests: the one place
that starts them, waits for them to be ready, stops them and picks their ports.

A crash test must kill the process that owns the jobs, not a simulation inside the test's own
event loop: ``kill -9`` leaves no chance to write anything, and SIGTERM goes through the real
signal handling of ``service/cli``. The child's output is drained by a thread for its whole
life (a full pipe would stall it) and readiness is read from its "genjobs: ready" line, never
guessed. A process can be started again after it stopped (a restart comes back on its port).

- :class:`ServeProcess`: ``python -m service.cli serve`` (a replica).
- :class:`GatewayProcess`: ``python -m service.cli gateway`` on a fixed port of its own.
- :func:`settings_env`: the ``GENJOBS_*`` variables that give the child the test's settings.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from dataclasses import fields
from pathlib import Path

from bench.infra import free_port
from service.config import Settings

__all__ = [
    "READY_MARK",
    "REPO",
    "CliProcess",
    "GatewayProcess",
    "ServeProcess",
    "free_port",
    "settings_env",
]

REPO = Path(__file__).resolve().parent.parent
READY_MARK = "genjobs: ready"
_ENV_FIELDS = (
    "prefix",
    "replica_id",
    "stream_replicas",
    "completed_ttl",
    "lease_ttl",
    "heartbeat_interval",
    "snapshot_interval",
    "publish_timeout",
    "publish_outage_budget",
    "request_timeout",
    "shutdown_grace",
    "nats_lost_exit",
)


def settings_env(s: Settings) -> dict[str, str]:
    """The ``GENJOBS_*`` variables that make ``Settings.from_env()`` in a child equal ``s``."""
    known = {f.name for f in fields(Settings)}
    env = {
        f"GENJOBS_{name.upper()}": str(getattr(s, name)) for name in _ENV_FIELDS if name in known
    }
    assert s.nats_url is not None
    env["GENJOBS_NATS_URL"] = s.nats_url
    return env


class CliProcess:
    """One ``python -m service.cli <command>`` child with the test's settings.

    ``env``: more variables (over :func:`settings_env`); ``args``: more arguments;
    ``uvloop=False`` adds ``--no-uvloop``.
    """

    def __init__(
        self,
        command: str,
        settings: Settings,
        *,
        name: str,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        uvloop: bool = True,
    ) -> None:
        self.command = command
        self.s = settings
        self.name = name
        self.args = args
        self.extra_env = dict(env or {})
        self.uvloop = uvloop
        self.proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=400)
        self._new_line = threading.Condition()
        self.ready = threading.Event()
        self.exited = threading.Event()
        self._thread: threading.Thread | None = None
        self.starts = 0
        self.kills = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def env(self) -> dict[str, str]:
        return {**os.environ, **settings_env(self.s), **self.extra_env, "PYTHONUNBUFFERED": "1"}

    def start(self, timeout: float = 30.0) -> None:
        """Start it and wait (bounded, blocking) for its ready line.

        Raises: RuntimeError with the process's output when it exits or never gets ready.
        """
        self._spawn()
        self._check_ready(self._wait_ready(timeout), timeout)

    async def start_async(self, timeout: float = 30.0) -> None:
        """:meth:`start` that lets the event loop run meanwhile (clients of the other
        processes go on while this one starts)."""
        self._spawn()
        # The ready line is read by a thread; its Event cannot be awaited from this loop.
        self._check_ready(await asyncio.to_thread(self._wait_ready, timeout), timeout)

    def _spawn(self) -> None:
        self._join()  # the previous run's output is its own, not the next one's
        argv = [sys.executable, "-m", "service.cli", self.command, *self.args]
        if not self.uvloop:
            argv.append("--no-uvloop")
        # Fresh events per run: a late end of the previous run cannot mark this one exited.
        self.ready, self.exited = threading.Event(), threading.Event()
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._thread = threading.Thread(
            target=self._drain,
            args=(self.proc, self.ready, self.exited),
            daemon=True,
            name=f"{self.command}-{self.name}-log",
        )
        self._thread.start()

    def _drain(
        self, proc: subprocess.Popen[str], ready: threading.Event, exited: threading.Event
    ) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                with self._new_line:
                    self.lines.append(line.rstrip())
                    self._new_line.notify_all()
                if READY_MARK in line:
                    ready.set()
        proc.wait()
        exited.set()
        with self._new_line:
            self._new_line.notify_all()

    def wait_line(self, text: str, timeout: float) -> bool:
        """Block until the child has logged a line containing ``text`` (woken by each new line;
        its log is the only channel); False if it exited or ``timeout`` passed first."""
        with self._new_line:
            return self._new_line.wait_for(
                lambda: any(text in line for line in self.lines) or self.exited.is_set(), timeout
            ) and any(text in line for line in self.lines)

    def _wait_ready(self, timeout: float) -> bool:
        ready, exited = self.ready, self.exited
        while not (ready.wait(0.1) or exited.is_set()):
            timeout -= 0.1
            if timeout <= 0:
                break
        return ready.is_set()

    def _check_ready(self, ready: bool, timeout: float) -> None:
        if ready:
            self.starts += 1
            return
        why = "exited" if self.exited.is_set() else f"not ready in {timeout}s"
        self.kill()
        raise RuntimeError(f"genjobs {self.command} {self.name} {why}:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])

    def sigterm(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if still running after ``timeout``."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL and raise when it takes too long)."""
        self.sigterm()
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to write anything; requests in flight get no
        answer."""
        if self.alive:
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()
            self.kills += 1
        self._join()

    def _join(self) -> None:
        if self._thread is not None:
            self._thread.join(5)

    def close(self) -> None:
        self.kill()


class ServeProcess(CliProcess):
    """``genjobs serve --log-level info`` (a replica), plain asyncio unless ``uvloop``."""

    def __init__(self, settings: Settings, *, uvloop: bool = False) -> None:
        super().__init__(
            "serve",
            settings,
            name=settings.replica_id or "replica",
            args=("--log-level", "info"),
            uvloop=uvloop,
        )


class GatewayProcess(CliProcess):
    """``genjobs gateway`` on a fixed port of its own (a restart comes back on it)."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str = "gateway",
        port: int | None = None,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        uvloop: bool = True,
    ) -> None:
        super().__init__("gateway", settings, name=name, args=args, env=env, uvloop=uvloop)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {**super().env(), "GENJOBS_HTTP": f"127.0.0.1:{self.port}"}
