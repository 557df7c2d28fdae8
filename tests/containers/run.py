"""`just containers`: build the images, run compose.yaml, disrupt it one piece at a time while
remote producers stream, check nothing was lost or duplicated, tear everything down.

    python -m tests.containers.run [--jobs 20] [--expect handoff|interrupted] [--keep]

1. Tools: installs Debian's docker.io, docker-compose and debootstrap with apt when missing.
2. dockerd: uses a running one; otherwise starts one and stops it (by its pid) at the end.
3. Images: the base (deploy/base-image.sh: debootstrap from apt's mirror + the host's CA
   certificates), then the Dockerfile's `runtime` and `test` targets with BASE set to it.
4. `docker-compose up` of compose.yaml under its own project name and free 127.0.0.1 ports;
   waits until every container is healthy.
5. The check (tests/containers/check.py) in a container of the `test` image on the compose
   network; once it streams, the phases run one at a time: `docker-compose restart` of each
   replica (SIGTERM, then start), a SIGKILL of the NATS node that leads the event stream and
   its restart, a restart of the gateway. After each phase the driver waits until the service
   is healthy again and every job has had a batch acknowledged since; then it tells the check
   to finish the jobs and reads its verdict.
6. Teardown (`docker-compose down -v`, also on failure), figures, exit 0 only if all passed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BASE_IMAGE = "local/debian:bookworm"
IMAGE = "genjobs:ctest"
TEST_IMAGE = "genjobs:ctest-test"
ENDED = 10**9  # progress.json's count for a job that has ended (tests/containers/check.py)
APT = {"docker": "docker.io", "dockerd": "docker.io", "docker-compose": "docker-compose",
       "debootstrap": "debootstrap"}  # fmt: skip


class Failed(Exception):
    pass


def say(msg: str) -> None:
    print(f"[containers {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(*args: str, check: bool = True, capture: bool = False, env: dict[str, str] | None = None,
       timeout: float = 900) -> subprocess.CompletedProcess[str]:  # fmt: skip
    r = subprocess.run(
        args, cwd=REPO, text=True, env=env, timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
    )  # fmt: skip
    if check and r.returncode != 0:
        out = f"\n{r.stdout[-3000:]}" if capture and r.stdout else ""
        raise Failed(f"`{' '.join(args)}` exited {r.returncode}{out}")
    return r


def wait(what: str, predicate: Callable[[], bool], timeout: float, every: float = 0.5) -> float:
    """Poll ``predicate`` (an external system's state) until true; the seconds it took."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)
    return time.monotonic() - t0


def install_tools() -> None:
    missing = sorted({pkg for tool, pkg in APT.items() if shutil.which(tool) is None})
    if not missing:
        return
    say(f"installing {' '.join(missing)} (apt)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    sh("apt-get", "update", "-qq", env=env)
    sh("apt-get", "install", "-y", "-qq", *missing, env=env, capture=True)


def docker_up() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@contextmanager
def dockerd(logdir: Path) -> Iterator[None]:
    """A running dockerd: the one already there, or one started here and stopped by its pid."""
    if docker_up():
        say("dockerd already running: using it")
        yield
        return
    log = open(logdir / "dockerd.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    say(f"started dockerd (pid {proc.pid})")
    try:
        wait("dockerd", lambda: proc.poll() is None and docker_up(), 60, 0.2)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        say(f"stopped dockerd (pid {proc.pid}, exit {proc.returncode})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Compose:
    def __init__(self, project: str, env: dict[str, str]) -> None:
        self.project = project
        self.env = {**os.environ, **env}

    def __call__(self, *args: str, check: bool = True, capture: bool = False,
                 timeout: float = 300) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return sh("docker-compose", "-p", self.project, "-f", str(REPO / "compose.yaml"), *args,
                  check=check, capture=capture, env=self.env, timeout=timeout)  # fmt: skip

    def container(self, service: str) -> str:
        out = self("ps", "-q", service, capture=True).stdout.strip()
        if not out:
            raise Failed(f"no container for {service}")
        return out.splitlines()[0]

    def services(self) -> list[str]:
        return self("config", "--services", capture=True).stdout.split()

    def healthy(self, service: str) -> bool:
        r = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Health.Status}}", self.container(service)],
            capture_output=True, text=True,
        )  # fmt: skip
        return r.stdout.strip() == "healthy"

    def all_healthy(self) -> bool:
        return all(self.healthy(s) for s in self.services())


def stream_leader(port: int) -> str | None:
    """The node that leads GENJOBS_EVENTS, asked from the host through nats-1's port."""
    code = (
        "import asyncio, nats\n"
        "async def main():\n"
        f"    nc = await nats.connect('nats://127.0.0.1:{port}', connect_timeout=3)\n"
        "    info = await nc.jetstream().stream_info('GENJOBS_EVENTS')\n"
        "    print(info.cluster.leader)\n"
        "    await nc.close()\n"
        "asyncio.run(main())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    leader = r.stdout.strip()
    return leader or None


def image_size(tag: str) -> int:
    out = sh("docker", "image", "inspect", "-f", "{{.Size}}", tag, capture=True).stdout
    return int(out.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.containers.run")
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--expect", choices=["handoff", "interrupted"], default="handoff")
    p.add_argument("--base", default=None, help="use this base image instead of building one")
    p.add_argument("--keep", action="store_true", help="leave the compose project running")
    args = p.parse_args(argv)
    t_all = time.monotonic()
    figures: dict[str, Any] = {}
    install_tools()
    workdir = Path(tempfile.mkdtemp(prefix="genjobs-containers-"))
    ok = False
    with dockerd(workdir):
        t0 = time.monotonic()
        base = args.base or BASE_IMAGE
        if args.base is None:
            sh(str(REPO / "deploy" / "base-image.sh"), BASE_IMAGE)
        figures["base_build_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        for target, tag in (("runtime", IMAGE), ("test", TEST_IMAGE)):
            sh("docker", "build", "-q", "--build-arg", f"BASE={base}", "--target", target,
               "-t", tag, ".", capture=True)  # fmt: skip
        figures["image_build_s"] = round(time.monotonic() - t0, 1)
        figures["image_mb"] = round(image_size(IMAGE) / 1e6)
        say(f"images built in {figures['image_build_s']}s; {IMAGE} is {figures['image_mb']} MB")
        nats_port, http_port = free_port(), free_port()
        compose = Compose(
            f"genjobs-ctest-{os.getpid()}",
            {"GENJOBS_IMAGE": IMAGE, "GENJOBS_COMPOSE_NATS_PORT": str(nats_port),
             "GENJOBS_COMPOSE_HTTP_PORT": str(http_port), "GENJOBS_JWT_SECRET": "ctest-secret",
             "GENJOBS_HANDOFF_TIMEOUT": "0" if args.expect == "interrupted" else "5"},
        )  # fmt: skip
        checker = f"{compose.project}-check"
        try:
            t0 = time.monotonic()
            compose("up", "-d", "--no-build", capture=True)
            wait("every service healthy", compose.all_healthy, 180)
            figures["compose_up_s"] = round(time.monotonic() - t0, 1)
            services = compose.services()
            say(f"compose up: {len(services)} services healthy in {figures['compose_up_s']}s")
            ctl = workdir / "control"
            ctl.mkdir()
            ctl.chmod(0o777)
            check_args = ["--jobs", str(args.jobs), "--expect", args.expect]
            if "gateway" in services:
                check_args += ["--http", "http://gateway:8080"]
            sh("docker", "run", "-d", "--name", checker, "--network", f"{compose.project}_default",
               "-v", f"{ctl}:/run/ctest", TEST_IMAGE, "tests.containers.check", *check_args,
               capture=True)  # fmt: skip
            wait("the check to stream every job", lambda: (ctl / "streaming").exists()
                 or not running(checker), 120)  # fmt: skip
            if not running(checker):
                raise Failed("the check stopped before streaming:\n" + logs(checker))
            phases = [("restart genjobs-1", lambda: compose("restart", "-t", "30", "genjobs-1")),
                      ("restart genjobs-2", lambda: compose("restart", "-t", "30", "genjobs-2"))]  # fmt: skip
            phases.append(("kill nats leader", lambda: kill_leader(compose, nats_port)))
            if "gateway" in services:
                phases.append(
                    ("restart gateway", lambda: compose("restart", "-t", "20", "gateway"))
                )
            for name, action in phases:
                before = progress(ctl)
                start = time.time()
                say(f"phase: {name}")
                action()
                wait(f"healthy after {name}", compose.all_healthy, 120)
                wait(f"every job acknowledged after {name}",
                     lambda b=before: moved_on(b, progress(ctl)) or not running(checker), 120)  # fmt: skip
                end = time.time()
                with open(ctl / "phases.jsonl", "a") as f:
                    f.write(json.dumps({"phase": name, "start": start, "end": end}) + "\n")
                say(f"phase: {name} done in {end - start:.1f}s")
                if not running(checker):
                    raise Failed(f"the check stopped during {name}:\n" + logs(checker))
            (ctl / "done").write_text(str(time.time()))
            code = int(sh("docker", "wait", checker, capture=True, timeout=300).stdout.strip())
            out = logs(checker)
            print(out, end="")
            fig_line = [ln for ln in out.splitlines() if ln.startswith("FIGURES ")]
            if fig_line:
                figures.update(json.loads(fig_line[-1][len("FIGURES ") :]))
            ok = code == 0
            if not ok:
                for s in services:
                    print(f"--- {s} (last lines)")
                    print(compose("logs", "--no-color", "--tail", "30", s, capture=True,
                                  check=False).stdout)  # fmt: skip
        finally:
            if not args.keep:
                subprocess.run(["docker", "rm", "-f", checker], capture_output=True)
                compose("down", "-v", "-t", "30", check=False, capture=True)
    figures["total_s"] = round(time.monotonic() - t_all, 1)
    say("figures: " + json.dumps(figures))
    say("PASSED" if ok else "FAILED")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def running(container: str) -> bool:
    r = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", container],
                       capture_output=True, text=True)  # fmt: skip
    return r.stdout.strip() == "true"


def logs(container: str) -> str:
    return subprocess.run(["docker", "logs", container], capture_output=True, text=True).stdout


def progress(ctl: Path) -> dict[str, int]:
    try:
        data: dict[str, int] = json.loads((ctl / "progress.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


def moved_on(before: dict[str, int], now: dict[str, int]) -> bool:
    """Every job has had a batch acknowledged since ``before`` (or has ended)."""
    return bool(now) and all(now.get(j, 0) > n or n >= ENDED for j, n in before.items())


def kill_leader(compose: Compose, port: int) -> None:
    leader = stream_leader(port) or "nats-2"
    say(f"  SIGKILL {leader} (leader of GENJOBS_EVENTS), then start it")
    compose("kill", "-s", "SIGKILL", leader)
    compose("start", leader)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Failed as e:
        say(f"FAILED: {e}")
        sys.exit(1)
