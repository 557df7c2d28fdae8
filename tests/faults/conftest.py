"""Fixtures for fault injection: nats-servers a test owns and may kill -9, restart or fail over,
and the figures every fault test reports.

Why a server per test here (the rest of the suite shares one): a test that kills its server
must not take other tests' streams with it, and a restart must come back on the same port and
store dir so that clients reconnect to what they knew. Ports are therefore fixed per test
(picked free by binding ``127.0.0.1:0``), not ``-1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import StorageType
from nats.js.errors import APIError

from service.config import Settings
from service.nats.embedded import EmbeddedServer
from tests.procs import REPO, free_port

CLUSTER_NAME = "genjobs-faults"


def fault_settings(url: str, **changes: Any) -> Settings:
    """The suite's short timings (tests/conftest.py), pointed at this test's own server."""
    base = Settings(
        nats_url=url,
        prefix="f" + uuid.uuid4().hex[:10],
        lease_ttl=3.0,
        heartbeat_interval=0.5,
        completed_ttl=60.0,
        snapshot_interval=0.5,
        publish_timeout=2.0,
        request_timeout=3.0,
        shutdown_grace=3.0,
        sweep_interval=2.0,
    )
    return base.with_(**changes)


class Node:
    """One nats-server with fixed ports and store dir: it can be killed and come back as itself."""

    def __init__(
        self,
        store_dir: Path,
        name: str,
        *,
        port: int | None = None,
        cluster_port: int | None = None,
        routes: list[int] | None = None,
    ) -> None:
        self.store_dir = store_dir
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self._srv: EmbeddedServer | None = None
        self.kills = 0

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._srv.pid if self._srv is not None else None

    @property
    def alive(self) -> bool:
        return (
            self._srv is not None and self._srv._proc is not None and self._srv._proc.poll() is None
        )

    def _args(self) -> list[str]:
        if self.cluster_port is None:
            return []
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)
        return [
            "--cluster",
            f"nats://127.0.0.1:{self.cluster_port}",
            "--cluster_name",
            CLUSTER_NAME,
            "--routes",
            routes,
        ]

    def start(self) -> str:
        """Start (blocking until it accepts clients); call through ``asyncio.to_thread`` from a
        running test so that its clients keep running meanwhile."""
        self._srv = EmbeddedServer(
            self.store_dir,
            conf=REPO / "nats.conf",
            port=self.port,
            extra_args=self._args(),
            name=self.name,
        )
        return self._srv.start()

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to clients or routes."""
        assert self._srv is not None
        self._srv.kill()
        self.kills += 1

    def stop(self) -> None:
        if self._srv is not None:
            self._srv.stop()


@dataclass
class Cluster:
    """Three nats-servers routed to each other on loopback: a JetStream cluster (R3 capable)."""

    nodes: list[Node]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    async def wait_jetstream(self, nc: NATS, timeout: float = 30.0) -> None:
        """Until the cluster can place an R3 stream: a meta leader is elected *and* every
        peer has joined it. Account info alone answers as soon as there is a leader, and on a
        busy machine the third peer may join later ("no suitable peers for placement")."""
        js = nc.jetstream(timeout=2.0)
        probe = "WAIT_R3_" + os.urandom(4).hex().upper()
        async with asyncio.timeout(timeout):
            while True:
                try:
                    await js.add_stream(
                        name=probe,
                        subjects=[probe.lower() + ".>"],
                        num_replicas=3,
                        storage=StorageType.MEMORY,
                    )
                    await js.delete_stream(probe)
                    return
                except (APIError, nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.2)  # no event exists for "all peers joined"


def _stopped(pid: int) -> bool:
    """Every thread of ``pid`` is in the stopped state (``T`` in /proc/<pid>/task/*/stat)."""
    tasks = Path(f"/proc/{pid}/task")
    states = []
    for t in tasks.iterdir():
        stat = (t / "stat").read_text()
        states.append(stat[stat.rindex(")") + 2])
    return all(st == "T" for st in states)


async def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP ``pid`` and return once all its threads are stopped: a signal is delivered
    asynchronously, and a server thread already running could still answer meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    async with asyncio.timeout(timeout):
        while not _stopped(pid):  # noqa: ASYNC110 - the kernel offers no event for "stopped"
            await asyncio.sleep(0.005)


def thaw(pid: int) -> None:
    os.kill(pid, signal.SIGCONT)


async def stream_leader(nc: NATS, stream: str) -> str:
    info = await nc.jetstream(timeout=3.0).stream_info(stream)
    assert info.cluster is not None, "not a clustered stream"
    assert info.cluster.leader, "stream has no leader"
    return str(info.cluster.leader)


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[Node]:
    """A single file-store nats-server of this test's own, to kill and restart."""
    node = Node(tmp_path / "n0", "faults-n0")
    node.start()
    yield node
    node.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A 3-node NATS cluster with routes on loopback; every stream and bucket can be R3."""
    cports = [free_port() for _ in range(3)]
    nodes = [
        Node(
            tmp_path / f"c{i}",
            f"faults-c{i}",
            cluster_port=cports[i],
            routes=[p for j, p in enumerate(cports) if j != i],
        )
        for i in range(3)
    ]
    try:
        for n in nodes:
            n.start()
        yield Cluster(nodes)
    finally:
        for n in nodes:  # kill: a clustered server's orderly shutdown waits for its peers
            if n.alive:
                n.kill()


@pytest.fixture
async def cluster_nc(nats_cluster: Cluster) -> AsyncIterator[NATS]:
    nc = await nats.connect(nats_cluster.urls, name="faults-admin", max_reconnect_attempts=-1)
    await nats_cluster.wait_jetstream(nc)
    yield nc
    await nc.close()


# --- figures --------------------------------------------------------------------------------


@dataclass
class Figures:
    """What a fault test measured; printed, shown in the terminal summary, and appended as a
    JSON line to ``$GENJOBS_FAULTS_REPORT`` when set (docs/reliability.md is built from it)."""

    test: str
    values: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = round(value, 3) if isinstance(value, float) else value

    def update(self, **values: Any) -> None:
        for k, v in values.items():
            self[k] = v

    def line(self) -> str:
        return f"{self.test}: " + ", ".join(f"{k}={v}" for k, v in self.values.items())


_RESULTS: list[Figures] = []


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Iterator[Figures]:
    fig = Figures(request.node.nodeid.split("::", 1)[-1])
    yield fig
    fig["wall_s"] = time.monotonic() - fig.started
    print("\nFIGURES " + fig.line())
    _RESULTS.append(fig)
    path = os.environ.get("GENJOBS_FAULTS_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"test": fig.test, **fig.values}) + "\n")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("fault figures")
    for fig in _RESULTS:
        terminalreporter.write_line(fig.line())
