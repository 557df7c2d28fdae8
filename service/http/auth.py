"""Who is calling: a JWT (PyJWT) from the header, a cookie or the query, or nobody in dev mode.

LibreChat signs its access tokens with HS256 and ``JWT_SECRET``, the user id in the ``id``
claim; an identity provider publishes RS256 keys as a JWKS. The token is looked for in this
order: ``Authorization: Bearer <token>``, the cookie ``jwt_cookie``, the query parameter
``jwt_query_param`` (``EventSource`` cannot send headers; a query string ends up in proxy
logs, so prefer the cookie). The job-level decision (this user's job or not) stays with the
service API, which answers ``forbidden``; this module only says who the caller is.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Final

import jwt
from aiohttp import web

from schemas.errors import Unavailable
from schemas.ids import ID_RE

from .config import HttpSettings

log = logging.getLogger("genjobs.http.auth")

DEV_USER: Final = "dev"
DEV_USER_HEADER: Final = "X-Genjobs-User"
DEV_TENANT_HEADER: Final = "X-Genjobs-Tenant"


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: str
    tenant_id: str | None = None


class AuthError(Exception):
    """The caller is not authenticated: answered 401 with ``message``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Authenticator:
    """Turns a request into an :class:`Identity` (``identify``) or raises :class:`AuthError`."""

    def __init__(self, hs: HttpSettings) -> None:
        self.hs = hs
        self._jwks: jwt.PyJWKClient | None = None
        if hs.auth == "jwt" and hs.jwt_jwks_url:
            # Keys are cached (lifespan 5 min); an unknown kid refetches the set.
            self._jwks = jwt.PyJWKClient(hs.jwt_jwks_url, cache_keys=True, lifespan=300)
        self._options: jwt.types.Options = {"require": ["exp"]}

    def warn_if_open(self) -> None:
        if self.hs.auth == "none":
            log.warning(
                "GENJOBS_AUTH=none: the HTTP gateway does NOT authenticate anybody; any caller "
                "may read and abort any user's jobs (user from %s or ?user=). Development only.",
                DEV_USER_HEADER,
            )

    async def identify(self, request: web.Request) -> Identity:
        """Raises: AuthError (missing, malformed, badly signed, expired or unusable token);
        Unavailable (the JWKS cannot be fetched)."""
        if self.hs.auth == "none":
            user = request.headers.get(DEV_USER_HEADER) or request.query.get("user") or DEV_USER
            tenant = request.headers.get(DEV_TENANT_HEADER) or request.query.get("tenant")
            return self._identity(user, tenant)
        token = self._token(request)
        if token is None:
            raise AuthError("missing token (Authorization: Bearer <JWT>)")
        claims = await self._decode(token)
        claimed_user = claims.get(self.hs.jwt_user_claim)
        claimed_tenant = claims.get(self.hs.jwt_tenant_claim)
        if not isinstance(claimed_user, str):
            raise AuthError(f"token has no string claim {self.hs.jwt_user_claim!r}")
        if claimed_tenant is not None and not isinstance(claimed_tenant, str):
            raise AuthError(f"token claim {self.hs.jwt_tenant_claim!r} is not a string")
        return self._identity(claimed_user, claimed_tenant)

    @staticmethod
    def _identity(user: str, tenant: str | None) -> Identity:
        if not ID_RE.fullmatch(user):
            raise AuthError("the user id is not a valid genjobs id")
        if tenant is not None and not ID_RE.fullmatch(tenant):
            raise AuthError("the tenant id is not a valid genjobs id")
        return Identity(user, tenant or None)

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError("Authorization header is not 'Bearer <JWT>'")
            return token.strip()
        cookie = request.cookies.get(self.hs.jwt_cookie) if self.hs.jwt_cookie else None
        if cookie:
            return cookie
        if self.hs.jwt_query_param:
            return request.query.get(self.hs.jwt_query_param) or None
        return None

    async def _decode(self, token: str) -> dict[str, Any]:
        try:
            if self._jwks is not None and not self.hs.jwt_secret:
                # PyJWKClient fetches with urllib (blocking): off the event loop.
                key: Any = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            else:
                key = self.hs.jwt_secret
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=self.hs.algorithms,
                audience=self.hs.jwt_audience,
                issuer=self.hs.jwt_issuer,
                options=self._options,
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthError("token expired") from e
        except jwt.PyJWKClientConnectionError as e:
            log.warning("JWKS fetch from %s failed: %s", self.hs.jwt_jwks_url, e)
            raise Unavailable("the identity provider's keys cannot be fetched") from e
        except jwt.PyJWKClientError as e:
            raise AuthError(f"token key not usable: {e}") from e
        except jwt.InvalidTokenError as e:
            raise AuthError(f"invalid token: {e}") from e
        return claims
