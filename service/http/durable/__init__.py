"""Durable Streams (the open HTTP protocol for resumable streams) served from JetStream.

The gateway mounts :func:`build_durable_app` at ``/v1/stream``
(``app.add_subapp("/v1/stream", build_durable_app(nc, settings))``); docs/http.md describes
the routes, headers, offsets, storage layout and settings.
"""

from __future__ import annotations

import importlib
from typing import Any

from aiohttp import web
from nats.aio.client import Client as NATS

from service.config import Settings

from .access import PRINCIPAL_KEY, Identify, Principal, auth_middleware
from .app import build_app


def build_durable_app(nc: NATS, settings: Settings, http_settings: Any = None) -> web.Application:
    """The Durable Streams sub-application, to be mounted at ``/v1/stream``.

    ``http_settings`` are the gateway's (``service.http.config.HttpSettings``): with its
    ``auth`` other than ``"none"`` every request is authenticated by the gateway's
    authenticator and streams belong to their creators (:mod:`.access`). Without them, or
    with ``GENJOBS_AUTH=none``, every stream is open.

    It provisions its stream and bucket when the parent application starts (raising
    ``ProvisionMismatch`` if they exist with other settings) and stops its readers and its
    sweeper when the parent shuts down. ``nc`` stays the caller's to close.
    """
    middlewares = []
    if http_settings is not None and getattr(http_settings, "auth", "none") != "none":
        auth = importlib.import_module("service.http.auth")
        identify: Identify = auth.Authenticator(http_settings).identify
        middlewares.append(auth_middleware(identify, auth.AuthError))
    return build_app(nc, settings, mount="/v1/stream", middlewares=middlewares)


__all__ = ["PRINCIPAL_KEY", "Principal", "build_durable_app"]
