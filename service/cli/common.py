"""What every ``genjobs`` command shares: exit codes, errors, running, connecting, one API request.

Each command lives in its own module of this package and imports from here; ``main`` only
parses arguments and dispatches, so no command imports another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS

from schemas.errors import Unavailable
from service.client.api import NoReplica, request
from service.config import Settings

log = logging.getLogger("genjobs.cli")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
"""The service answered with an error (the body is on stderr), or the demo found a problem."""
EXIT_USAGE: Final = 2
EXIT_NO_NATS: Final = 3
EXIT_PROVISION: Final = 4

EXIT_CODES: Final = """exit codes:
  0  success
  1  the service answered with an error (its JSON body is printed on stderr)
  2  usage error or bad configuration (a flag, a GENJOBS_* variable)
  3  cannot reach or start NATS, or no genjobs replica answers
  4  the stream or a bucket exists with other settings (provisioning mismatch)"""

DEFAULT_CLIENT_URL: Final = "nats://127.0.0.1:4222"
READY_MARK: Final = "genjobs: ready"
"""Printed once by ``serve`` when it takes work; scripts and tests wait for this line."""

T = TypeVar("T")
_enc = msgspec.json.Encoder()


class CliError(Exception):
    """Ends the command with ``code``; the message is printed on stderr as is."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- running ---------------------------------------------------------------------------------


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]], use_uvloop: bool = True) -> T:
    """Run on uvloop when available (about twice the publish rate), else on plain asyncio."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if use_uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro_fn())


def settings_from(args: argparse.Namespace, **extra: Any) -> Settings:
    """Raises: CliError (exit 2) when a GENJOBS_* variable does not parse."""
    try:
        return Settings.from_env(
            nats_url=getattr(args, "nats_url", None), prefix=getattr(args, "prefix", None), **extra
        )
    except (TypeError, ValueError) as e:
        raise CliError(f"bad configuration: {e}", EXIT_USAGE) from e


async def connect(
    url: str, *, name: str, wait: float = 2.0, forever: bool = False, **callbacks: Any
) -> NATS:
    """Connect, trying for at most ``wait`` seconds; with ``forever`` it reconnects for ever later.

    Raises:
        CliError (exit 3): nothing answered at ``url`` in time, or the server refused us.
    """
    servers = [u.strip() for u in url.split(",") if u.strip()]
    last_error: list[Exception] = []
    user_error_cb = callbacks.pop("error_cb", None)

    async def on_error(e: Exception) -> None:
        last_error[:] = [e]
        if user_error_cb is not None and nc.is_connected:
            await user_error_cb(e)
        else:
            log.debug("nats: %s", e)

    nc = NATS()
    options: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "connect_timeout": min(2.0, wait),
        "reconnect_time_wait": 0.5,
        "max_reconnect_attempts": -1 if forever else 0,
        "error_cb": on_error,
    }
    options.update(callbacks)
    try:
        async with asyncio.timeout(wait):
            await nc.connect(**options)
    except (TimeoutError, OSError, nats.errors.Error) as e:
        with contextlib.suppress(Exception):
            await nc.close()
        cause = last_error[0] if last_error else e
        reason = str(cause) or type(cause).__name__
        if isinstance(cause, TimeoutError):
            reason = f"no answer within {wait:g}s"
        raise CliError(f"cannot reach NATS at {redact_url(url)}: {reason}", EXIT_NO_NATS) from e
    return nc


def redact_url(url: str) -> str:
    """The URL without its password, for messages."""
    out = []
    for u in url.split(","):
        scheme, sep, rest = u.partition("://")
        if sep and "@" in rest:
            cred, _, host = rest.rpartition("@")
            user = cred.split(":", 1)[0]
            u = f"{scheme}://{user}:***@{host}"
        out.append(u)
    return ",".join(out)


async def api_request(
    nc: NATS, settings: Settings, name: str, body: dict[str, Any], timeout: float | None = None
) -> tuple[bool, Any]:
    """One request to ``<prefix>.api.<name>``; returns (ok, decoded JSON body).

    Raises:
        CliError (exit 3): no replica answers, or none answered in time.
    """
    try:
        return await request(
            nc, settings, name, body, timeout or max(settings.request_timeout, 10.0)
        )
    except NoReplica as e:
        raise CliError(
            f"{e} (is `genjobs serve` running with prefix {settings.prefix!r}?)", EXIT_NO_NATS
        ) from e
    except Unavailable as e:
        raise CliError(str(e), EXIT_NO_NATS) from e


def print_json(obj: Any, stream: Any = None) -> None:
    out = stream or sys.stdout
    out.write(msgspec.json.format(_enc.encode(obj), indent=2).decode() + "\n")
    out.flush()


def setup_logging(level: str) -> None:
    """Log lines to stdout at ``level`` (``genjobs serve`` and ``genjobs gateway`` alike)."""
    logging.basicConfig(
        stream=sys.stdout,
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )


def on_signal(stop: asyncio.Event, sig: signal.Signals) -> None:
    """SIGTERM/SIGINT handler of the long-running commands: the first one stops gracefully,
    later ones are logged (the grace period bounds the stop)."""
    if stop.is_set():
        log.warning("%s again: already stopping (the grace period bounds it)", sig.name)
        return
    log.info("%s received", sig.name)
    stop.set()
