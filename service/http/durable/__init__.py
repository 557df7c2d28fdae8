"""Durable Streams (the open HTTP protocol for resumable streams) served from JetStream.

The gateway mounts :func:`build_durable_app` at ``/v1/stream``
(``app.add_subapp("/v1/stream", build_durable_app(nc, settings))``); docs/http.md describes
the routes, headers, offsets, storage layout and settings.
"""

from __future__ import annotations

from aiohttp import web
from nats.aio.client import Client as NATS

from service.config import Settings

from .access import PRINCIPAL_KEY, Principal
from .app import build_app


def build_durable_app(nc: NATS, settings: Settings) -> web.Application:
    """The Durable Streams sub-application, to be mounted at ``/v1/stream``.

    It provisions its stream and bucket when the parent application starts (raising
    ``ProvisionMismatch`` if they exist with other settings) and stops its readers and its
    sweeper when the parent shuts down. ``nc`` stays the caller's to close.
    """
    return build_app(nc, settings, mount="/v1/stream")


__all__ = ["PRINCIPAL_KEY", "Principal", "build_durable_app"]
