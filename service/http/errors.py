"""One place that turns failures into HTTP answers: every error is JSON with a status code.

    401 AuthError (missing, bad or expired token)    403 forbidden (another user's or tenant's job)
    400 bad_request / invalid_id / malformed input    404 not_found
    409 conflict    413 too_large    503 unavailable (no replica, NATS away; Retry-After: 1)

403 and 401 bodies are LibreChat's (``{"error": "Unauthorized"}``), so its client reacts as it
does to its own server (it refreshes the token on 401).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

from schemas.errors import GenjobsError

from .auth import AuthError

log = logging.getLogger("genjobs.http")

STATUS_BY_CODE: Final = {
    "bad_request": 400,
    "invalid_id": 400,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unavailable": 503,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(status: int, body: dict[str, Any], **headers: str) -> web.HTTPException:
    """An HTTP exception carrying a JSON body (raise it, or return it: both answer)."""
    exc = web.HTTPException(text=web.json_response(body).text, content_type="application/json")
    exc.set_status(status)
    exc.headers.update(headers)
    return exc


def error_response(error: GenjobsError) -> web.HTTPException:
    status = STATUS_BY_CODE.get(error.code, 503)
    if status == 403:
        return json_response(403, {"error": "Unauthorized", "message": error.message})
    if status == 503:
        return json_response(
            503, {"error": error.message, "code": "unavailable"}, **{"Retry-After": "1"}
        )
    return json_response(status, {"error": error.message, "code": error.code})


def error_middleware(
    metrics_request: Callable[[str, int], None], passthrough: tuple[str, ...] = ()
) -> Any:
    """Translate AuthError and GenjobsError, answer aiohttp's own errors as JSON, count every
    request by route and status. Paths under ``passthrough`` (a sub-app with its own protocol)
    are only counted."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = _route_name(request)
        if passthrough and request.path.startswith(passthrough):
            status = 500
            try:
                resp = await handler(request)
                status = resp.status
                return resp
            except web.HTTPException as e:
                status = e.status
                raise
            finally:
                metrics_request(route, status)
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except AuthError as e:
            status = 401
            raise json_response(
                401,
                {"error": "Unauthorized", "message": e.message},
                **{"WWW-Authenticate": "Bearer"},
            ) from None
        except GenjobsError as e:
            exc = error_response(e)
            status = exc.status
            raise exc from None
        except web.HTTPException as e:
            status = e.status
            if e.content_type != "application/json" and e.status >= 400:
                raise json_response(e.status, {"error": e.reason}, **_keep(e)) from None
            raise
        finally:
            metrics_request(route, status)

    return middleware


def _keep(e: web.HTTPException) -> dict[str, str]:
    return {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}


def _route_name(request: web.Request) -> str:
    """The route's pattern (``/api/agents/chat/stream/{streamId}``): bounded label values."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    if resource is None:
        return "unmatched"
    return str(resource.canonical)
