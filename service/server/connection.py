"""A replica's NATS connection: how it is doing (:class:`NatsWatch`) and how it is closed
(:func:`close_connection`).

The watch looks at the connection's state every ``NATS_WATCH_INTERVAL`` (no I/O): it warns
once when NATS goes away, and after ``nats_lost_after`` logs an ERROR naming what cannot be
done and sets ``lost``, on which ``genjobs serve`` stops and exits 3. ``Replica.health()``
reads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from service.config import Settings

log = logging.getLogger("genjobs.replica")

NATS_WATCH_INTERVAL = 0.25
"""How often the replica looks at its connection's state (cheap: no I/O)."""


class NatsWatch:
    """Whether the replica's connection is up, since when it is not, and whether it is lost."""

    def __init__(
        self,
        settings: Settings,
        nc: Callable[[], NATS | None],
        running_jobs: Callable[[], list[str]],
    ) -> None:
        self.s = settings
        self._nc = nc
        self._running_jobs = running_jobs
        self.down_since: float | None = None
        """When the watch first saw the connection away (the loop's clock), None while up."""
        self.lost = asyncio.Event()
        """Set once NATS has been unreachable for ``nats_lost_after`` seconds."""

    def state(self) -> str:
        """``not started | connected | reconnecting | closed``."""
        nc = self._nc()
        if nc is None:
            return "not started"
        if nc.is_closed:
            return "closed"
        if nc.is_connected:
            return "connected"
        return "reconnecting"

    async def loop(self, stopping: Callable[[], bool]) -> None:
        """Notice a connection that stays away: warn once, then after ``nats_lost_after`` log
        an ERROR naming what cannot be done and set :attr:`lost`."""
        loop = asyncio.get_running_loop()
        while not stopping():
            await asyncio.sleep(NATS_WATCH_INTERVAL)
            state = self.state()
            if state == "connected":
                if self.down_since is not None:
                    log.info("NATS is back after %.1fs", loop.time() - self.down_since)
                self.down_since = None
                continue
            now = loop.time()
            if self.down_since is None:
                self.down_since = now
                log.warning(
                    "NATS is %s; giving up after %.0fs without it", state, self.s.nats_lost_after
                )
            elif not self.lost.is_set() and now - self.down_since >= self.s.nats_lost_after:
                jobs = self._running_jobs()
                log.error(
                    "NATS unreachable for %.0fs (%s): cannot store events or terminal events "
                    "of %d running job(s)%s, cannot heartbeat, cannot answer any request; "
                    "giving up so that this replica is restarted",
                    now - self.down_since,
                    state,
                    len(jobs),
                    f" ({', '.join(jobs[:20])}{', ...' if len(jobs) > 20 else ''})" if jobs else "",
                )
                self.lost.set()


async def close_connection(nc: NATS, timeout: float) -> None:
    """Drain if connected (bounded by ``timeout``), else close: a reconnecting connection
    cannot drain. nats-py's ``close`` raises when its socket is already dead and unsent data is
    buffered (``OSError``, or ``RuntimeError`` under uvloop), before it stops the
    subscriptions' tasks; those are stopped here then."""
    if nc.is_closed:
        return
    if nc.is_connected:
        try:
            await asyncio.wait_for(nc.drain(), timeout=timeout)
        except (TimeoutError, nats.errors.Error) as e:
            log.warning("draining the NATS connection failed: %s", e)
    if nc.is_closed:
        return
    try:
        await nc.close()
    except (
        OSError,
        RuntimeError,
        nats.errors.Error,
    ) as e:  # RuntimeError: uvloop's closed transport
        log.warning("closing the NATS connection: %r", e)
        subs = cast(dict[int, Subscription], getattr(nc, "_subs", {}))
        tasks: list[asyncio.Task[None]] = []
        for sub in subs.values():
            task = sub._wait_for_msgs_task
            if task is not None:
                task.cancel()
                tasks.append(task)
        subs.clear()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
