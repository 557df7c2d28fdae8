"""Real ``genjobs gateway`` processes for the browser tests: started, stopped (SIGTERM, as an
orchestrator does) and started again on the same port, so a browser tab's reconnects land
on the restarted process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import deque

from service.config import Settings
from tests.faults.conftest import REPO, free_port
from tests.faults.procs import READY_MARK, settings_env


class GatewayProcess:
    """One ``python -m service.cli gateway`` child on a fixed port (it survives restarts)."""

    def __init__(self, settings: Settings, env: dict[str, str], *, uvloop: bool) -> None:
        self.s = settings
        self.env = env
        self.uvloop = uvloop
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.lines: deque[str] = deque(maxlen=400)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        """Raises: RuntimeError when the process does not print its ready line in time."""
        env = {
            **os.environ,
            **settings_env(self.s),
            **self.env,
            "GENJOBS_HTTP": f"127.0.0.1:{self.port}",
            "PYTHONUNBUFFERED": "1",
        }
        args = [sys.executable, "-m", "service.cli", "gateway", "--log-level", "info"]
        if not self.uvloop:
            args.append("--no-uvloop")
        self.proc = subprocess.Popen(
            args,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        ready, exited = threading.Event(), threading.Event()
        threading.Thread(
            target=self._drain, args=(self.proc, ready, exited), daemon=True, name="gateway-log"
        ).start()
        while not (ready.wait(0.1) or exited.is_set()):
            timeout -= 0.1
            if timeout <= 0:
                break
        if not ready.is_set():
            self.kill()
            raise RuntimeError("genjobs gateway did not become ready:\n" + self.tail())
        self.starts += 1

    def _drain(
        self, proc: subprocess.Popen[str], ready: threading.Event, exited: threading.Event
    ) -> None:
        assert proc.stdout is not None
        with proc.stdout:
            for line in proc.stdout:
                self.lines.append(line.rstrip())
                if READY_MARK in line:
                    ready.set()
        proc.wait()
        exited.set()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait: the gateway ends its SSE responses (clients reconnect) and exits."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])
