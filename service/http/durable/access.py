"""Who may touch a Durable Stream: the seam between the gateway's authentication and streams.

With the gateway's JWT authentication on (``GENJOBS_AUTH=jwt``), every request is
authenticated by the gateway's :class:`~service.http.auth.Authenticator` (401 otherwise) and
the caller stored on the request under :data:`PRINCIPAL_KEY`. A stream created by an
authenticated caller belongs to that caller's tenant and user; others get 403. With
``GENJOBS_AUTH=none`` nobody is authenticated, nothing is stored, and every stream is open
(as the conformance run needs). A stream created without authentication belongs to nobody.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiohttp import web


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    tenant: str | None = None


# aiohttp >= 3.13 wants typed request keys (it warns about plain strings).
_request_key: Any = getattr(web, "RequestKey", None)
PRINCIPAL_KEY: Final[Any] = (
    _request_key("genjobs_principal", Principal) if _request_key else "genjobs_principal"
)


class Identity(Protocol):
    @property
    def user_id(self) -> str: ...
    @property
    def tenant_id(self) -> str | None: ...


Identify = Callable[[web.Request], Awaitable[Identity]]
"""The gateway's authenticator: the caller's identity, or it raises its ``AuthError``."""


def principal_of(request: web.Request) -> Principal | None:
    value = request.get(PRINCIPAL_KEY)
    return value if isinstance(value, Principal) else None


def may_access(owner_user: str | None, owner_tenant: str | None, who: Principal | None) -> bool:
    if who is None or owner_user is None:
        return True
    return who.user == owner_user and who.tenant == owner_tenant


def auth_middleware(identify: Identify, auth_error: type[Exception]) -> Any:
    """Authenticate every Durable Streams request except CORS preflights; 401 on failure."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method != "OPTIONS":
            try:
                who = await identify(request)
            except auth_error as e:
                return web.Response(
                    status=401,
                    body=str(getattr(e, "message", e)).encode(),
                    headers={"Content-Type": "text/plain", "WWW-Authenticate": "Bearer"},
                )
            request[PRINCIPAL_KEY] = Principal(who.user_id, who.tenant_id)
        return await handler(request)

    return middleware
