"""The live demo page: ``GET /demo/`` (static HTML and JS, no build step).

The page (``service/http/static/``) streams one job over the browser's ``EventSource`` (or, with
``?client=librechat``, the way LibreChat's front end does: fetch with an Authorization header
and ``?resume=true`` after a drop) and shows every event's seq, every reconnect and a stop
button; ``genjobs demo --http`` prints its URL, and the browser tests drive it in Chromium.
It holds no secret and reads no job by itself: the job id and the token come in its URL.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

from aiohttp import web

STATIC: Final = Path(__file__).resolve().parent / "static"
PAGE_PREFIX: Final = "/demo"
FILES: Final = {
    "": ("demo.html", "text/html"),
    "demo.js": ("demo.js", "text/javascript"),
    "demo.css": ("demo.css", "text/css"),
}
HEADERS: Final = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}


def add_demo_routes(app: web.Application) -> None:
    """``/demo`` (redirect), ``/demo/``, ``/demo/demo.js``, ``/demo/demo.css``."""

    async def redirect(request: web.Request) -> web.StreamResponse:
        target = f"{PAGE_PREFIX}/" + (f"?{request.query_string}" if request.query_string else "")
        raise web.HTTPFound(target)

    app.router.add_get(PAGE_PREFIX, redirect)
    for name, (file, content_type) in FILES.items():
        app.router.add_get(f"{PAGE_PREFIX}/{name}", _serve(STATIC / file, content_type))


def _serve(path: Path, content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(path, headers={**HEADERS, "Content-Type": content_type})

    return handler


def page_url(base: str, job_id: str, token: str | None = None, client: str | None = None) -> str:
    """The page's address for ``job_id`` on the gateway at ``base`` (``http://host:port``)."""
    from urllib.parse import urlencode

    query = {
        "job": job_id,
        **({"token": token} if token else {}),
        **({"client": client} if client else {}),
    }
    return f"{base.rstrip('/')}{PAGE_PREFIX}/?{urlencode(query)}"
