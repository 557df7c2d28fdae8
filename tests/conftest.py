"""Test harness: a real nats-server per session (random port, temp store, the repo's nats.conf).

Each test gets its own subject prefix, so it provisions its own stream and buckets and cannot
see another test's jobs. Tests that kill or restart a server start their own.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import nats
import pytest
from nats.aio.client import Client as NATS

from service.config import Settings
from service.nats.embedded import EmbeddedServer
from tests.procs import REPO

# Every async test fails if it leaves a task running after its own teardown.
pytest_plugins = ["tests.leakcheck"]


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("nats"), conf=REPO / "nats.conf", port=-1)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedServer) -> str:
    return nats_server.url


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs under plain asyncio and under uvloop (``GENJOBS_TEST_LOOPS`` narrows)."""
    import uvloop

    known: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop,
        "uvloop": uvloop.new_event_loop,
    }
    wanted = os.environ.get("GENJOBS_TEST_LOOPS", "asyncio,uvloop").split(",")
    return {name: known[name] for name in wanted if name in known}


@pytest.fixture
def settings(nats_url: str) -> Settings:
    """Settings with a unique prefix per test, and short timings so failures show fast."""
    return Settings(
        nats_url=nats_url,
        prefix="t" + uuid.uuid4().hex[:10],
        lease_ttl=3.0,
        heartbeat_interval=0.5,
        completed_ttl=30.0,
        snapshot_interval=0.5,
        publish_timeout=2.0,
        request_timeout=3.0,
        shutdown_grace=3.0,
    )


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    conn = await nats.connect(nats_url, name="test-client")
    yield conn
    await conn.drain()
