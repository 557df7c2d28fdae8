"""``genjobs demo --http``: the demo's third generation, live in a browser.

Next to the terminal demo, a gateway serves the demo page (``/demo/``, see
``service/http/demo.py``) on replica B's connection while replica A streams a slow generation
(about 10 tokens a second), so the page shows the text arriving with its seq numbers. Reload
it, take the browser offline and back, open the URL in a second tab, press Stop: every view
continues after the last seq it has and ends with the final (or the abort final). The page
stays up after the checks until Ctrl-C.

The gateway authenticates as in production (HS256 JWT): the secret is random per run and the
printed URL carries a token for the demo user; nothing is served without it.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import jwt

from service import simulate
from service.cli.common import EXIT_USAGE, CliError
from service.http.app import GatewayServer, build_app
from service.http.config import HttpSettings, parse_listen
from service.http.demo import page_url
from service.server.replica import Replica

BROWSER_JOB = "demo-browser"


def say(text: str = "") -> None:
    print(text, flush=True)


def row(label: str, text: str) -> None:
    say(f"  {label:<10}{text}")  # the demo's own layout (service/cli/demo.py)


TOKENS = 240
TOKEN_DELAY = 0.1


@dataclass
class BrowserView:
    url: str
    done: asyncio.Event

    async def linger(self) -> None:
        """Serve the page until Ctrl-C (the finished job stays readable for its TTL)."""
        await asyncio.Event().wait()


async def _produce(a: Replica, user: str, done: asyncio.Event) -> None:
    """A slow generation on replica A; it stops when someone presses Stop."""
    job = await a.create_job(user, job_id=BROWSER_JOB)
    try:
        async with job:
            for ev in simulate.generation(job.job_id, tokens=TOKENS):
                if job.aborted.is_set():
                    return
                await job.emit(ev)
                if ev.get("event") in ("on_message_delta", "on_reasoning_delta"):
                    await asyncio.sleep(TOKEN_DELAY)
            await job.complete(simulate.final_event(job.job_id))
    finally:
        done.set()


@asynccontextmanager
async def browser_view(
    a: Replica, b: Replica, listen: str, user: str
) -> AsyncIterator[BrowserView]:
    """The gateway on B's connection and the browser job on A, for the body's duration.

    Raises:
        CliError: ``listen`` is not HOST:PORT or cannot be listened on (exit 2).
    """
    try:
        parse_listen(listen)
    except ValueError as e:
        raise CliError(f"--http: {e}", EXIT_USAGE) from e
    secret = secrets.token_urlsafe(32)
    hs = HttpSettings(listen=listen, jwt_secret=secret)
    server = GatewayServer(build_app(b.nc, b.s, hs), hs)
    try:
        base = await server.start()
    except OSError as e:
        raise CliError(f"--http: cannot listen on {listen}: {e}", EXIT_USAGE) from e
    try:
        token = jwt.encode(
            {"id": user, "exp": int(time.time()) + 24 * 3600}, secret, algorithm="HS256"
        )
        view = BrowserView(page_url(base, BROWSER_JOB, token), asyncio.Event())
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_produce(a, user, view.done), name="demo-browser-job")
            yield view
    finally:
        await server.stop()


async def with_browser_view(
    a: Replica, b: Replica, listen: str, user: str, tour: Callable[[], Awaitable[bool]]
) -> bool:
    """The terminal tour with the browser view beside it; then the page stays up (Ctrl-C)."""
    async with browser_view(a, b, listen, user) as view:
        row("browser", f"job {BROWSER_JOB} on replica A, ~10 tokens/s, served by a gateway")
        row("", "on replica B's connection; open the page (reload it, go offline, Stop):")
        say(f"  {view.url}")
        passed = await tour()
        say()
        say("All checks passed." if passed else "Some checks FAILED (✘ above).")
        say("The page stays up until Ctrl-C.")
        await view.linger()
    return passed
