"""The gateway's settings: one immutable object read from ``GENJOBS_*`` variables.

Kept apart from :class:`service.config.Settings` (the NATS side) because only HTTP processes
need them; both are built from the same environment and both are documented in docs/http.md.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final, Literal

AuthMode = Literal["jwt", "none"]

_ENV: Final[dict[str, str]] = {
    "listen": "GENJOBS_HTTP",
    "chat_prefix": "GENJOBS_HTTP_CHAT_PREFIX",
    "node_id": "GENJOBS_GATEWAY_ID",
    "auth": "GENJOBS_AUTH",
    "jwt_secret": "GENJOBS_JWT_SECRET",
    "jwt_jwks_url": "GENJOBS_JWT_JWKS_URL",
    "jwt_algorithms": "GENJOBS_JWT_ALGORITHMS",
    "jwt_user_claim": "GENJOBS_JWT_USER_CLAIM",
    "jwt_tenant_claim": "GENJOBS_JWT_TENANT_CLAIM",
    "jwt_audience": "GENJOBS_JWT_AUDIENCE",
    "jwt_issuer": "GENJOBS_JWT_ISSUER",
    "jwt_cookie": "GENJOBS_JWT_COOKIE",
    "jwt_query_param": "GENJOBS_JWT_QUERY_PARAM",
    "cors_origins": "GENJOBS_CORS_ORIGINS",
    "sse_heartbeat": "GENJOBS_SSE_HEARTBEAT",
    "sse_retry_ms": "GENJOBS_SSE_RETRY_MS",
    "sse_max_buffer": "GENJOBS_SSE_MAX_BUFFER",
    "sse_close_grace": "GENJOBS_SSE_CLOSE_GRACE",
    "idle_timeout": "GENJOBS_HTTP_IDLE_TIMEOUT",
    "max_header_bytes": "GENJOBS_HTTP_MAX_HEADER_BYTES",
    "max_headers": "GENJOBS_HTTP_MAX_HEADERS",
    "backlog": "GENJOBS_HTTP_BACKLOG",
    "ready_timeout": "GENJOBS_READY_TIMEOUT",
}


def _new_node_id() -> str:
    return "g" + uuid.uuid4().hex[:12]


@dataclass(frozen=True, kw_only=True)
class HttpSettings:
    """HTTP knobs. Durations are seconds, sizes bytes."""

    listen: str = "127.0.0.1:8080"
    """``HOST:PORT`` the gateway listens on (``genjobs gateway``; ``serve --http`` overrides)."""
    chat_prefix: str = "/api/agents/chat"
    """Where LibreChat's routes live: ``<prefix>/stream/:id``, ``/active``, ``/status/:id``,
    ``/abort``."""
    node_id: str = field(default_factory=_new_node_id)
    """Label of this process in /metrics and /readyz (a replica uses its replica id)."""
    auth: AuthMode = "jwt"
    """``jwt`` (default) or ``none``: no authentication, for development only (logged)."""
    jwt_secret: str | None = None
    """HS256 secret (LibreChat's ``JWT_SECRET``)."""
    jwt_jwks_url: str | None = None
    """JWKS URL of an identity provider (RS256/ES256 keys, fetched and cached)."""
    jwt_algorithms: str = ""
    """Accepted algorithms, comma separated; empty: HS256 with a secret, RS256 with a JWKS URL."""
    jwt_user_claim: str = "id"
    jwt_tenant_claim: str = "tenantId"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_cookie: str = "genjobs_token"
    """Cookie holding the token for clients that cannot send headers (``EventSource``)."""
    jwt_query_param: str = "token"
    """Query parameter holding the token (``?token=``); empty disables it. It ends up in access
    logs of proxies on the way: prefer the cookie or the header."""
    cors_origins: str = ""
    """Allowed origins, comma separated, or ``*``; empty: no CORS headers (same origin only)."""
    sse_heartbeat: float = 15.0
    """``: heartbeat`` comment on an SSE response that wrote nothing for this long."""
    sse_retry_ms: int = 1000
    """``retry:`` hint sent first on every SSE response and before a slow client is dropped."""
    sse_max_buffer: int = 256 * 1024
    """Bytes queued for one SSE client; a client this far behind is disconnected and resumes
    by ``Last-Event-ID``."""
    sse_close_grace: float = 5.0
    """How long a dropped slow client gets to read what is queued before the socket is reset."""
    idle_timeout: float = 30.0
    """A connection without a complete request for this long is closed (slowloris, idle
    keep-alive)."""
    max_header_bytes: int = 8190
    """Largest request line and header field (aiohttp's limit); larger is answered 400/431."""
    max_headers: int = 128
    backlog: int = 2048
    ready_timeout: float = 2.0
    """Bound of each /readyz check (NATS round trip, JetStream, the API)."""

    def with_(self, **changes: Any) -> HttpSettings:
        return replace(self, **changes)

    @property
    def host_port(self) -> tuple[str, int]:
        """Raises: ValueError when ``listen`` is not ``HOST:PORT``."""
        return parse_listen(self.listen)

    @property
    def algorithms(self) -> list[str]:
        if self.jwt_algorithms.strip():
            return [a.strip() for a in self.jwt_algorithms.split(",") if a.strip()]
        return ["RS256"] if self.jwt_jwks_url and not self.jwt_secret else ["HS256"]

    @property
    def origins(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> HttpSettings:
        """Build from the ``GENJOBS_*`` variables of ``_ENV``; explicit overrides win.

        Raises:
            ValueError: a variable does not parse, or ``GENJOBS_AUTH`` is neither jwt nor none.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        defaults = cls()
        for f in fields(cls):
            raw = env.get(_ENV[f.name])
            if raw is None or raw == "":
                continue
            current = getattr(defaults, f.name)
            kind = type(current) if current is not None else str
            try:
                values[f.name] = kind(raw)
            except ValueError as e:
                raise ValueError(f"{_ENV[f.name]}={raw!r}: {e}") from e
        values.update({k: v for k, v in overrides.items() if v is not None})
        out = cls(**values)
        out.validate()
        return out

    def validate(self) -> None:
        """Raises: ValueError on an impossible combination."""
        if self.auth not in ("jwt", "none"):
            raise ValueError(f"GENJOBS_AUTH={self.auth!r}: must be jwt or none")
        if self.auth == "jwt" and not (self.jwt_secret or self.jwt_jwks_url):
            raise ValueError(
                "GENJOBS_AUTH=jwt needs GENJOBS_JWT_SECRET or GENJOBS_JWT_JWKS_URL "
                "(or GENJOBS_AUTH=none for development)"
            )
        if not self.chat_prefix.startswith("/") or self.chat_prefix.endswith("/"):
            raise ValueError(
                f"GENJOBS_HTTP_CHAT_PREFIX={self.chat_prefix!r}: must start and not end with /"
            )
        try:
            parse_listen(self.listen)
        except ValueError as e:
            raise ValueError(f"GENJOBS_HTTP / --http: {e}") from e


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port).

    Raises:
        ValueError: not of that form, or the port is not 0-65535.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


ENV_NAMES: Final = dict(_ENV)
"""Field name -> environment variable (docs and tests use it)."""
