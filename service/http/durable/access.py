"""Who may touch a Durable Stream: the seam between the gateway's authentication and streams.

The gateway authenticates (its JWT middleware) and stores the caller on the request under
:data:`PRINCIPAL_KEY`; with ``GENJOBS_AUTH=none`` it stores nothing and every stream is open.
A stream created by an authenticated caller belongs to that caller's tenant and user; a
stream created without authentication belongs to nobody and stays open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import web

PRINCIPAL_KEY: Final = "genjobs.principal"


@dataclass(frozen=True, slots=True)
class Principal:
    user: str
    tenant: str | None = None


def principal_of(request: web.Request) -> Principal | None:
    value = request.get(PRINCIPAL_KEY)
    return value if isinstance(value, Principal) else None


def may_access(owner_user: str | None, owner_tenant: str | None, who: Principal | None) -> bool:
    if who is None or owner_user is None:
        return True
    return who.user == owner_user and who.tenant == owner_tenant
