"""`genjobs gateway` and `genjobs serve --http` as processes: ready lines, the routes answer,
SIGTERM stops them with exit 0, bad configuration exits 2."""

from __future__ import annotations

import subprocess
import urllib.request
import uuid
from typing import Any

import msgspec

from .test_cli import REPO, Lines, clean_env, genjobs_cmd, run, stop


def start(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], Lines]:
    proc = subprocess.Popen(
        [*genjobs_cmd(), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    return proc, Lines(proc)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, msgspec.json.decode(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, msgspec.json.decode(e.read())


def test_gateway_without_a_jwt_secret_refuses_to_start() -> None:
    out = run("gateway", "--nats-url", "nats://127.0.0.1:1", env=clean_env())
    assert out.returncode == 2
    assert "GENJOBS_JWT_SECRET" in out.stderr


def test_serve_with_http_and_a_separate_gateway_answer_and_stop_cleanly(nats_url: str) -> None:
    env = clean_env(
        GENJOBS_NATS_URL=nats_url,
        GENJOBS_PREFIX="h" + uuid.uuid4().hex[:8],
        GENJOBS_AUTH="none",
    )
    replica, rlines = start(env, "serve", "--http", "127.0.0.1:0")
    gw = None
    try:
        http_line = rlines.wait_for("genjobs: http on ")
        rlines.wait_for("genjobs: ready replica")
        replica_url = http_line.rsplit(" ", 1)[1]
        status, body = get(f"{replica_url}/readyz")
        assert status == 200, body
        assert body["checks"]["outage"]["ok"] is True
        gw, glines = start(env, "gateway", "--http", "127.0.0.1:0")
        line = glines.wait_for("genjobs: ready gateway")
        gateway_url = line.split(" on ", 1)[1].split(" ", 1)[0]
        status, body = get(f"{gateway_url}/readyz")
        assert status == 200, body
        assert get(f"{gateway_url}/api/agents/chat/active?user=u1") == (200, {"activeJobIds": []})
        # The same address again: exit 2, the first one keeps serving.
        port = gateway_url.rsplit(":", 1)[1]
        busy = run("gateway", "--http", f"127.0.0.1:{port}", env=env)
        assert busy.returncode == 2
        assert "cannot listen" in busy.stderr
        assert stop(gw) == 0
        gw = None
    finally:
        if gw is not None:
            stop(gw)
        assert stop(replica) == 0


async def test_stopping_a_replica_with_http_ends_its_streams_with_the_terminal_event(
    nats_url: str,
) -> None:
    """SIGTERM: the replica's running jobs get their terminal event and its SSE clients see it
    before the gateway inside it stops."""
    import asyncio
    import signal

    import aiohttp
    import nats

    from .http_helpers import read_sse

    prefix = "h" + uuid.uuid4().hex[:8]
    env = clean_env(GENJOBS_NATS_URL=nats_url, GENJOBS_PREFIX=prefix, GENJOBS_AUTH="none")
    replica, lines = start(env, "serve", "--http", "127.0.0.1:0")
    try:
        url = lines.wait_for("genjobs: http on ").rsplit(" ", 1)[1]
        lines.wait_for("genjobs: ready replica")
        nc = await nats.connect(nats_url)
        try:
            body = b'{"userId": "u1", "conversationId": "job-term"}'
            await nc.request(f"{prefix}.api.create", body, timeout=10)
            batch = b'{"firstIndex": 0, "events": [{"event": "on_message_delta", "data": {}}]}'
            await nc.request(f"{prefix}.ingest.job-term", batch, timeout=10)
        finally:
            await nc.close()
        async with aiohttp.ClientSession() as s:
            opened = asyncio.Event()

            async def on_frame(f: object) -> None:
                opened.set()

            async with asyncio.TaskGroup() as tg:
                reading = tg.create_task(
                    read_sse(s, f"{url}/api/agents/chat/stream/job-term?user=u1", on_frame=on_frame)
                )
                await opened.wait()  # its first event arrived: the stream is open
                replica.send_signal(signal.SIGTERM)
            got = reading.result()
        assert got.complete
        assert got.frames[-1].event == "error"
        assert "shutting down" in got.frames[-1].json()["error"]
    finally:
        assert stop(replica) == 0
