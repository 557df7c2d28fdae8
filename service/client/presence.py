"""Subscriber presence (docs/protocol.md, presence): how many readers watch a job, and who notices the last leave.

Readers can be in any process, so presence is announced, not counted locally: each reader hub
publishes ``{hub, count, ttl}`` on ``<prefix>.presence.<job_id>`` when a job gains its first
reader or loses its last one in that hub, and refreshes the count every ``interval`` while it
has readers. The owner replica sums the live announcements per job; an announcement that is
not refreshed within its ``ttl`` expires, so a reader process that dies without saying goodbye
stops counting within seconds. When a job's total drops to zero, the owner runs its
``on_all_readers_left`` callbacks (LibreChat's ``allSubscribersLeft``); by default that resets
``syncSent`` so the next reader gets a sync snapshot, as LibreChat does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.bookkeeping import PresenceAnnouncement
from service.client.reader import LiveHub
from service.config import Settings

if TYPE_CHECKING:
    from actors.registry import Registry

log = logging.getLogger("genjobs.presence")

AllLeftCallback = Callable[[str], Awaitable[None]]


_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(PresenceAnnouncement)


class PresenceAnnouncer:
    """The reader side: one per LiveHub. Use :func:`presence_hub` to build both."""

    def __init__(self, nc: NATS, settings: Settings, *, interval: float = 5.0) -> None:
        self.nc = nc
        self.s = settings
        self.interval = interval
        self.hub_id = uuid.uuid4().hex[:12]
        self.hub: LiveHub | None = None
        self._jobs: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def _send(self, job_id: str, count: int) -> None:
        body = PresenceAnnouncement(hub=self.hub_id, count=count, ttl=self.interval * 3)
        await self.nc.publish(self.s.presence_subject(job_id), _enc.encode(body))

    async def first(self, job_id: str) -> None:
        self._jobs.add(job_id)
        await self._send(job_id, self.hub.watchers(job_id) if self.hub else 1)

    async def left(self, job_id: str) -> None:
        self._jobs.discard(job_id)
        await self._send(job_id, 0)

    async def start(self) -> None:
        """Start refreshing; the announcer owns this task and ends it in :meth:`stop`."""
        if self._task is None:
            self._task = asyncio.create_task(self._refresh(), name=f"presence:{self.hub_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for job_id in list(self._jobs):
                await self._send(job_id, self.hub.watchers(job_id) if self.hub else 1)


def presence_hub(
    nc: NATS, settings: Settings, *, interval: float = 5.0
) -> tuple[LiveHub, PresenceAnnouncer]:
    """A LiveHub whose readers are announced to the jobs' owners (``await ann.start()`` to
    keep the counts fresh; ``await ann.stop()`` when done)."""
    ann = PresenceAnnouncer(nc, settings, interval=interval)
    hub = LiveHub(nc, settings, on_first_reader=ann.first, on_last_reader_left=ann.left)
    ann.hub = hub
    return hub, ann


class PresenceTracker:
    """The owner side: per running job here, the reader count of every hub that announced."""

    def __init__(self, nc: NATS, settings: Settings, registry: Registry) -> None:
        self.nc = nc
        self.s = settings
        self.registry = registry
        self._hubs: dict[str, dict[str, tuple[int, float]]] = {}  # job -> hub -> (count, expires)
        self.callbacks: list[AllLeftCallback] = []
        self._sub: object = None

    def watchers(self, job_id: str) -> int:
        now = time.monotonic()
        return sum(c for c, exp in self._hubs.get(job_id, {}).values() if exp > now)

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self.s.prefix}.presence.*", cb=self._on_msg)

    async def stop(self) -> None:
        sub = self._sub
        self._sub = None
        if sub is not None:
            await sub.unsubscribe()  # type: ignore[attr-defined]

    async def _on_msg(self, msg: Msg) -> None:
        job_id = msg.subject.rsplit(".", 1)[1]
        if job_id not in self.registry:
            self._hubs.pop(job_id, None)
            return
        try:
            a = _dec.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("ignoring a malformed presence message for %s", job_id)
            return
        before = self.watchers(job_id)
        hubs = self._hubs.setdefault(job_id, {})
        if a.count > 0:
            hubs[a.hub] = (a.count, time.monotonic() + max(0.5, a.ttl))
        else:
            hubs.pop(a.hub, None)
        if before > 0 and self.watchers(job_id) == 0:
            await self._all_left(job_id)

    async def expire_loop(self) -> None:
        """Hubs that stopped refreshing (their process died) stop counting."""
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for job_id in list(self._hubs):
                hubs = self._hubs[job_id]
                had = any(True for _ in hubs)
                for hub_id, (_, exp) in list(hubs.items()):
                    if exp <= now:
                        del hubs[hub_id]
                if job_id not in self.registry:
                    del self._hubs[job_id]
                elif had and not hubs:
                    await self._all_left(job_id)

    async def _all_left(self, job_id: str) -> None:
        log.debug("job %s: all readers left", job_id)
        for cb in self.callbacks:
            try:
                await cb(job_id)
            except Exception:
                log.exception("on_all_readers_left callback failed for %s", job_id)
