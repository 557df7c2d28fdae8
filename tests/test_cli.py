"""The ``genjobs`` command line, run as a user runs it: real processes, real exit codes.

One ``genjobs serve`` process (against the session nats-server, under its own prefix) is shared
by the client-command tests; the serve lifecycle test starts its own. Output is read line by
line with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from service import simulate as sim
from service.nats.embedded import EmbeddedServer
from tests.helpers import aggregate

REPO = Path(__file__).resolve().parent.parent
T = 30.0


def genjobs_cmd() -> list[str]:
    """The installed console script, as a user types it (``python -m service.cli`` if absent)."""
    script = Path(sys.executable).parent / "genjobs"
    if script.is_file():
        return [str(script)]
    found = shutil.which("genjobs")
    return [found] if found else [sys.executable, "-m", "service.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENJOBS_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run(*args: str, env: dict[str, str] | None = None, timeout: float = T) -> Any:
    return subprocess.run(
        [*genjobs_cmd(), *args],
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


class Lines:
    """A child's stdout, read by a thread so the test can wait for a line with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, text: str, timeout: float = T) -> str:
        while True:
            try:
                line = self._q.get(timeout=timeout)
            except queue.Empty:
                pytest.fail(f"no line with {text!r} within {timeout}s; seen: {self.seen[-10:]}")
            if line is None:
                pytest.fail(f"process ended before {text!r}; seen: {self.seen[-10:]}")
            self.seen.append(line)
            if text in line:
                return line

    def rest(self) -> list[str]:
        self._t.join(T)
        while True:
            line = self._q.get_nowait() if not self._q.empty() else None
            if line is None:
                return self.seen
            self.seen.append(line)


def start_serve(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [*genjobs_cmd(), "serve", "--log-level", "info", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    return proc, Lines(proc)


def stop(proc: subprocess.Popen[str]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(T)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise


@pytest.fixture(scope="module")
def served(nats_url: str) -> Iterator[dict[str, str]]:
    """A running ``genjobs serve`` under a prefix of its own; yields the client environment."""
    env = clean_env(GENJOBS_NATS_URL=nats_url, GENJOBS_PREFIX="cli" + uuid.uuid4().hex[:8])
    proc, lines = start_serve(env)
    try:
        lines.wait_for("genjobs: ready")
        yield env
    finally:
        stop(proc)


def call_api(env: dict[str, str], name: str, body: dict[str, Any]) -> Any:
    """A request from this test process, as another program would send it."""

    async def go() -> Any:
        nc = await nats.connect(env["GENJOBS_NATS_URL"])
        try:
            msg = await nc.request(
                f"{env['GENJOBS_PREFIX']}.{name}", json.dumps(body).encode(), timeout=T
            )
            return json.loads(msg.data)
        finally:
            await nc.close()

    return asyncio.run(go())


# --- help and usage ----------------------------------------------------------------------------

COMMANDS = ["serve", "demo", "aggregate", "tail", "status", "resume", "abort", "active", "counts"]


def test_help_of_genjobs_and_of_every_command_exits_0() -> None:
    procs = {
        cmd: subprocess.Popen(
            [*genjobs_cmd(), *([cmd] if cmd else []), "--help"],
            env=clean_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        for cmd in ["", *COMMANDS]
    }
    for cmd, proc in procs.items():
        out, err = proc.communicate(timeout=T)
        assert proc.returncode == 0, (cmd, err)
        assert "usage:" in out.lower(), cmd
    top, _ = subprocess.Popen(
        [*genjobs_cmd(), "--help"], stdout=subprocess.PIPE, text=True, env=clean_env()
    ).communicate(timeout=T)
    assert "exit codes" in top
    for cmd in COMMANDS:
        assert cmd in top


def test_bad_usage_exits_2() -> None:
    assert run("status", "job-1").returncode == 2  # --user missing
    assert run("nonsense").returncode == 2
    bad = run("counts", env=clean_env(GENJOBS_REQUEST_TIMEOUT="soon"))
    assert bad.returncode == 2
    assert "GENJOBS_REQUEST_TIMEOUT" in bad.stderr


def test_client_commands_without_nats_exit_3_with_a_plain_message() -> None:
    dead = run("counts", "--nats-url", "nats://127.0.0.1:1")
    assert dead.returncode == 3
    assert "cannot reach NATS at nats://127.0.0.1:1" in dead.stderr
    assert "Traceback" not in dead.stderr


# --- the demo (the README's first command) -------------------------------------------------------


def test_demo_passes_every_check() -> None:
    done = run("demo", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All checks passed" in done.stdout
    assert "✘" not in done.stdout
    assert done.stdout.count("✔") >= 8
    assert "Traceback" not in done.stderr


# --- serve --------------------------------------------------------------------------------------


def test_serve_says_ready_and_stops_with_0_on_sigterm(nats_url: str) -> None:
    env = clean_env(GENJOBS_NATS_URL=nats_url, GENJOBS_PREFIX="srv" + uuid.uuid4().hex[:8])
    proc, lines = start_serve(env)
    try:
        ready = lines.wait_for("genjobs: ready")
    finally:
        code = stop(proc)
    assert code == 0, lines.rest()
    assert nats_url in ready
    assert "replica r" in ready
    assert any("stopped" in line for line in lines.rest())


def test_serve_with_a_taken_port_exits_3_and_says_why(
    nats_server: EmbeddedServer, tmp_path: Path
) -> None:
    done = run("serve", "--port", str(nats_server.port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"port {nats_server.port} on 127.0.0.1 is already in use" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_serve_with_an_unreachable_nats_exits_3() -> None:
    done = run("serve", "--nats-url", "nats://127.0.0.1:1", "--connect-wait", "1")
    assert done.returncode == 3
    assert "cannot reach NATS" in done.stderr


# --- client commands against a running serve ------------------------------------------------------


def test_counts_prints_every_status_as_json(served: dict[str, str]) -> None:
    done = run("counts", env=served)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout)) == {"running", "complete", "error", "aborted"}


def test_status_of_an_unknown_job_exits_1_with_the_error_body_on_stderr(
    served: dict[str, str],
) -> None:
    done = run("status", "no-such-job", "--user", "u1", env=served)
    assert done.returncode == 1
    assert done.stdout == ""
    assert json.loads(done.stderr)["error"]["code"] == "not_found"
    bad = run("status", "bad.id", "--user", "u1", env=served)
    assert bad.returncode == 1
    assert json.loads(bad.stderr)["error"]["code"] == "invalid_id"


def test_status_active_abort_of_a_running_job(served: dict[str, str]) -> None:
    user = "u" + uuid.uuid4().hex[:8]
    job_id = call_api(served, "api.create", {"userId": user})["streamId"]
    events = list(sim.generation(job_id, tokens=5, reasoning=0, with_tool=False))
    reply = call_api(served, f"ingest.{job_id}", {"firstIndex": 0, "events": events})
    assert reply["ok"] is True

    status = run("status", job_id, "--user", user, env=served)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "running"
    active = run("active", "--user", user, env=served)
    assert json.loads(active.stdout) == {"activeJobIds": [job_id]}
    forbidden = run("status", job_id, "--user", "someone-else", env=served)
    assert forbidden.returncode == 1
    assert json.loads(forbidden.stderr)["error"]["code"] == "forbidden"

    aborted = run("abort", job_id, "--user", user, env=served)
    assert aborted.returncode == 0, aborted.stderr
    result = json.loads(aborted.stdout)
    assert result["success"] is True
    assert result["finalEvent"]["aborted"] is True
    assert json.loads(run("status", job_id, "--user", user, env=served).stdout)["status"] == (
        "aborted"
    )


def test_tail_follows_a_job_live_and_ends_after_its_final_event(served: dict[str, str]) -> None:
    user = "u" + uuid.uuid4().hex[:8]
    job_id = call_api(served, "api.create", {"userId": user})["streamId"]
    events = list(sim.generation(job_id, tokens=6, reasoning=2, with_tool=True))
    half = len(events) // 2
    call_api(served, f"ingest.{job_id}", {"firstIndex": 0, "events": events[:half]})
    with subprocess.Popen(
        [*genjobs_cmd(), "tail", job_id, "--user", user, "--json"],
        env=served,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    ) as tail:
        try:
            lines = Lines(tail)
            lines.wait_for('"kind":"created"')  # it is reading; the rest arrives while it waits
            call_api(
                served,
                f"ingest.{job_id}",
                {"firstIndex": half, "events": events[half:], "complete": sim.final_event(job_id)},
            )
            assert tail.wait(T) == 0
        finally:
            if tail.poll() is None:
                tail.kill()
    got = [json.loads(line) for line in lines.rest() if line]
    # Deltas of one batch may be stored merged (docs/protocol.md, the event log): compare indices and content.
    assert [g["index"] for g in got] == list(range(len(got)))
    seqs = [g["seq"] for g in got]
    assert seqs == sorted(set(seqs))
    assert got[-1]["kind"] == "final"
    assert [g["kind"] for g in got].count("final") == 1
    assert aggregate([g["event"] for g in got[:-1]]) == aggregate(events)

    # Plain rendering, resumed after a seq: only what follows it, text inline.
    again = run("tail", job_id, "--user", user, "--after", str(seqs[-3]), env=served)
    assert again.returncode == 0, again.stderr
    assert f"job ended (final) after 2 events, seq {seqs[-1]}" in again.stdout
    assert f"[seq {seqs[-1]} #{len(got) - 1} final]" in again.stdout
