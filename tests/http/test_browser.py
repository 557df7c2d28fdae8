"""Real Chromium against real gateways: a browser tab sees every event once, in order, and the end.

Everything is a real process: the session's nats-server, a ``genjobs serve`` replica that owns
the job, two ``genjobs gateway`` processes, Debian's Chromium driven by Playwright (see
:mod:`tests.http.chromium`). The test produces the job over plain NATS (create, then ingest
batches, each durable when acknowledged), phase by phase, and waits on what the pages show
(``window.genjobsView``, the demo page's state) with Playwright's waits, never a sleep.

Four tabs watch one job on the demo page (``/demo/``): the browser's own ``EventSource`` and
the LibreChat-shaped client (fetch with an Authorization header, ``?resume=true`` and the sync
frame after a drop), each on the first gateway and, opened later, on the second. Mid-stream:
the first gateway is restarted (SIGTERM, then again on the same port), the browser goes offline
and back (``context.set_offline``), the first two tabs are reloaded; then the stop button in one
tab aborts the job and every tab must end with the abort final. Each view must hold exactly
the producer's text; the ``EventSource`` views must have received exactly the stored events'
seqs, in order, each once, across reconnects and the reload.

On failure every tab's screenshot, its view state and the gateways' logs are written to
``$GENJOBS_TEST_ARTIFACTS`` (default ``.test-artifacts/`` in the repo) and the paths printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.reader import LiveHub, ReadEvent, read_all
from service.config import Settings
from service.http.demo import page_url
from tests.faults.producer import api
from tests.procs import REPO, GatewayProcess, ServeProcess

from .chromium import FLAGS, chromium_path, missing_reason

pytestmark = [
    pytest.mark.skipif(chromium_path() is None, reason=missing_reason()),
    pytest.mark.timeout(180),
]

SECRET = "browser-test-secret-not-for-production-0123456789"
USER = "u-browser"
WAIT_MS = 30_000
"""Bound of every wait on a page (a gateway restart on a busy 2-core machine takes seconds)."""
ARTIFACTS = Path(os.environ.get("GENJOBS_TEST_ARTIFACTS", REPO / ".test-artifacts"))


def token(user: str = USER) -> str:
    return jwt.encode({"id": user, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


class Producer:
    """The job's producer over plain NATS: ``send(n)`` ingests the next ``n`` events of the
    script as one batch and returns once it is durable, with the seq of its last event."""

    def __init__(self, nc: NATS, s: Settings, job_id: str, tokens: int) -> None:
        self.nc, self.s, self.job_id = nc, s, job_id
        self.script = list(sim.generation(job_id, tokens=tokens))
        self.index = 0

    async def create(self) -> None:
        await api(self.nc, self.s, "create", {"userId": USER, "conversationId": self.job_id})

    async def send(self, n: int) -> int:
        batch = self.script[self.index : self.index + n]
        assert batch, "the script is exhausted"
        reply = await self.nc.request(
            self.s.ingest_subject(self.job_id),
            msgspec.json.encode({"firstIndex": self.index, "events": batch}),
            timeout=10,
        )
        body: dict[str, Any] = msgspec.json.decode(reply.data)
        assert body.get("ok") is True, body
        self.index = int(body["nextIndex"])
        return int(body["seq"])


def text_of(events: list[ReadEvent]) -> str:
    """The answer's text as the producer streamed it: its text deltas, in order."""
    out = []
    for ev in events:
        payload = ev.event
        if payload and payload.get("event") == "on_message_delta":
            out += [c["text"] for c in payload["data"]["delta"]["content"] if c["type"] == "text"]
    return "".join(out)


def final_text(final: dict[str, Any]) -> str:
    parts = (final.get("responseMessage") or {}).get("content") or []
    return "".join(p.get("text", "") for p in parts if p.get("type") == "text")


# --- the browser ----------------------------------------------------------------------------


class Tabs:
    """Named pages of one browser context, and waits on their view state."""

    def __init__(self, context: Any) -> None:
        self.context = context
        self.pages: dict[str, Any] = {}
        self.console: dict[str, list[str]] = {}

    async def open(self, name: str, url: str) -> Any:
        page = await self.context.new_page()
        self.console[name] = []
        page.on("console", lambda m, n=name: self.console[n].append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e, n=name: self.console[n].append(f"pageerror: {e}"))
        self.pages[name] = page
        await page.goto(url)
        return page

    async def wait(self, names: list[str], condition: str, arg: Any = None) -> None:
        """Until ``condition`` (JS over the view ``v`` and ``arg``) holds in every named tab."""
        for name in names:
            await self.pages[name].wait_for_function(
                f"(arg) => {{ const v = window.genjobsView; return !!v && ({condition}); }}",
                arg=arg,
                timeout=WAIT_MS,
            )

    async def view(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.pages[name].evaluate(
            "() => JSON.parse(JSON.stringify({...window.genjobsView, text: window.genjobsView.text}))"
        )
        return got

    async def dump(self, where: Path, gateways: list[GatewayProcess]) -> list[Path]:
        """Screenshots, views, console lines and gateway logs (for a failure)."""
        files: dict[str, bytes] = {}
        for name, page in self.pages.items():
            try:
                files[f"{name}.png"] = await page.screenshot(full_page=True)
                files[f"{name}.view.json"] = json.dumps(await self.view(name), indent=1).encode()
            except Exception as e:  # a crashed page: keep what can be kept, say why
                files[f"{name}.error.txt"] = repr(e).encode()
            files[f"{name}.console.txt"] = "\n".join(self.console[name]).encode()
        for i, gw in enumerate(gateways):
            files[f"gateway{i + 1}.log"] = gw.tail(400).encode()
        return await asyncio.to_thread(_write, where, files)


def _write(where: Path, files: dict[str, bytes]) -> list[Path]:
    where.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (where / name).write_bytes(data)
    return [where / name for name in files if name.endswith(".png")]


@asynccontextmanager
async def chromium(profile: Path) -> AsyncIterator[Any]:
    """Debian's Chromium, headless, on a fresh profile; never Playwright's own download."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(profile), executable_path=chromium_path(), args=list(FLAGS), headless=True
        )
        try:
            yield context
        finally:
            await context.close()


@contextmanager
def processes(
    settings: Settings, uvloop: bool
) -> Iterator[tuple[ServeProcess, list[GatewayProcess]]]:
    env = {"GENJOBS_JWT_SECRET": SECRET, "GENJOBS_SSE_RETRY_MS": "300"}
    replica = ServeProcess(settings, uvloop=uvloop)
    args = ("--log-level", "info")
    gateways = [GatewayProcess(settings, env=env, args=args, uvloop=uvloop) for _ in range(2)]
    try:
        replica.start()
        for gw in gateways:
            gw.start()
        yield replica, gateways
    finally:
        for gw in gateways:
            gw.kill()
        replica.close()


def _loop_is_uvloop() -> bool:
    return type(asyncio.get_running_loop()).__module__.startswith("uvloop")


# --- the test -------------------------------------------------------------------------------


async def test_every_browser_view_ends_with_the_producers_text_across_drops_reloads_and_gateways(
    settings: Settings, nc: NATS, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # The gateways and the replica run the loop this test runs under (uvloop or asyncio).
    with processes(settings, _loop_is_uvloop()) as (_replica, gateways):
        g1, g2 = gateways
        job = "browser-" + settings.prefix
        producer = Producer(nc, settings, job, tokens=60)
        await producer.create()
        async with chromium(tmp_path / "profile") as context:
            tabs = Tabs(context)
            try:
                await scenario(tabs, producer, g1, g2, job, settings, nc)
            except BaseException:
                where = ARTIFACTS / re.sub(r"[^\w.-]+", "_", request.node.name)
                shots = await tabs.dump(where, gateways)
                print(f"browser test failed: screenshots and logs in {where}: {shots}")
                raise


async def scenario(
    tabs: Tabs,
    producer: Producer,
    g1: GatewayProcess,
    g2: GatewayProcess,
    job: str,
    settings: Settings,
    nc: NATS,
) -> None:
    tok = token()
    first = ["es1", "lc1"]
    await tabs.open("es1", page_url(g1.url, job, tok))
    await tabs.open("lc1", page_url(g1.url, job, tok, "librechat") + "&retry=500")

    # Streaming: the created event, the reasoning step, a tool call, the first words.
    seq = await producer.send(20)
    await tabs.wait(first, "v.lastSeq >= arg && v.state === 'streaming'", seq)

    # 1. The gateway restarts: both tabs lose the connection and come back to the new process.
    assert g1.stop() == 0, g1.tail()
    await tabs.wait(first, "v.state === 'reconnecting'")
    seq = await producer.send(10)  # produced while no gateway serves the tabs
    g1.start()
    await tabs.wait(first, "v.lastSeq >= arg && v.state === 'streaming' && v.reconnects >= 1", seq)

    # 2. The browser goes offline and back.
    await tabs.context.set_offline(True)
    await tabs.wait(first, "v.state === 'reconnecting'")
    seq = await producer.send(10)
    await tabs.context.set_offline(False)
    await tabs.wait(first, "v.lastSeq >= arg && v.state === 'streaming' && v.reconnects >= 2", seq)

    # 3. Both tabs are reloaded: they continue from what they kept (EventSource: ?after=<seq>;
    # the LibreChat client: ?resume=true, the snapshot replacing its content).
    for name in first:
        await tabs.pages[name].reload()
    await tabs.wait(first, "v.reloads === 1 && v.state === 'streaming'")
    seq = await producer.send(10)
    await tabs.wait(first, "v.lastSeq >= arg", seq)

    # 4. Two new tabs on the second gateway, mid-stream: they read the job from its start.
    await tabs.open("es2", page_url(g2.url, job, tok))
    await tabs.open("lc2", page_url(g2.url, job, tok, "librechat") + "&retry=500")
    everyone = [*first, "es2", "lc2"]
    seq = await producer.send(5)
    await tabs.wait(everyone, "v.lastSeq >= arg && v.state === 'streaming'", seq)

    # 5. Stop in one tab (on the second gateway): the job is aborted, every tab gets the final.
    await tabs.pages["es2"].click("#stop")
    await tabs.wait(everyone, "v.state === 'aborted'")

    async with LiveHub(nc, settings) as hub:
        stored = [ev for ev in await read_all(hub, job, timeout=15) if ev.kind != "usage"]
    assert stored[-1].terminal
    want_text = text_of(stored)
    want_seqs = [ev.seq for ev in stored]
    assert want_text.startswith("Resumable streams keep")

    views = {name: await tabs.view(name) for name in everyone}
    for name, v in views.items():
        assert v["text"] == want_text, name
        assert v["duplicates"] == 0, name
        assert v["outOfOrder"] == 0, name
        assert v["final"]["responseMessage"]["unfinished"] is True, name
        assert final_text(v["final"]) == want_text, name
        assert v["error"] is None, (name, v["error"])
    for name in ("es1", "es2"):
        # The browser's EventSource: exactly the stored events, in order, each once, across the
        # restart, the offline spell and the reload (es1), with no snapshot.
        assert views[name]["seqs"] == want_seqs, name
        assert views[name]["syncs"] == 0, name
    for name in ("lc1", "lc2"):
        for conn in views[name]["connections"]:
            assert conn["seqs"] == sorted(set(conn["seqs"])), (name, conn)
        assert views[name]["seqs"][-1] == want_seqs[-1], name
    es1, lc1 = views["es1"], views["lc1"]
    assert es1["reconnects"] >= 2
    assert es1["reloads"] == 1
    assert lc1["reconnects"] >= 2
    assert lc1["syncs"] >= 3  # after the restart, the offline spell and the reload
    assert views["es2"]["abortReply"]["status"] == 200
    assert views["es2"]["abortReply"]["body"] == {"success": True, "aborted": job}
