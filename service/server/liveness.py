"""Replica liveness (the ownership lease) and the janitor that ends orphaned jobs.

The lease is per replica, not per job: each replica writes a heartbeat key every
``heartbeat_interval`` and every replica watches those keys. A job's owner is alive while its
heartbeat is younger than ``lease_ttl``. This costs O(replicas) writes instead of one KV write
per running job per interval (10,000 idle jobs would otherwise mean thousands of writes per
second), and a job may run for as long as it needs: nothing about it expires while its owner
lives. When a replica's heartbeat goes stale, every live replica sweeps for its running jobs
and races to end them; the subject fence lets exactly one terminal event through.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from schemas.bookkeeping import CleanupOrder, Heartbeat
from schemas.job import JobRecord
from service.config import Settings
from service.nats.store import Store

if TYPE_CHECKING:
    from actors.registry import Registry


class OrphanEnder(Protocol):
    """What the janitor needs: ``service.server.takeover.Takeover`` (no import circle)."""

    async def fail_orphan(self, rec: JobRecord, rev: int, reason: str = "owner lost") -> bool: ...


log = logging.getLogger("genjobs.liveness")
_heartbeat = msgspec.json.Decoder(Heartbeat)
_cleanup = msgspec.json.Decoder(CleanupOrder)


class Liveness:
    def __init__(self, store: Store, settings: Settings, registry: Registry | None = None) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self._seen: dict[str, float] = {}  # replica id -> monotonic time of its last heartbeat
        self._dead_handled: set[str] = set()
        self.started = time.monotonic()
        self.takeovers = 0
        self.stopping = False
        """Set before the loops are cancelled: nats-py can swallow a cancellation inside
        next_msg/fetch, so every loop also checks this flag and returns."""

    def is_alive(self, replica_id: str) -> bool:
        if replica_id == self.s.replica_id:
            return True
        seen = self._seen.get(replica_id)
        return seen is not None and time.monotonic() - seen < self.s.lease_ttl

    def live_replicas(self) -> list[str]:
        return [r for r in self._seen if self.is_alive(r)]

    async def heartbeat_loop(self) -> None:
        while not self.stopping:
            try:
                await self.store.heartbeat()
            except Exception as e:  # NATS away or a leader election: keep beating
                log.warning("heartbeat failed (retrying): %r", e)
            await asyncio.sleep(self.s.heartbeat_interval)

    async def watch_loop(self) -> None:
        """Follow every replica's heartbeat key."""
        watcher = await self.store.replicas.watchall()
        try:
            async for entry in watcher:
                if self.stopping:
                    return
                if entry is None:
                    continue  # end of the initial values
                if entry.operation in ("DEL", "PURGE") or not entry.value:
                    self._seen.pop(entry.key, None)
                    continue
                try:
                    at = _heartbeat.decode(entry.value).at
                except msgspec.DecodeError:
                    log.warning("ignoring a malformed heartbeat for %s", entry.key)
                    continue
                # A value from the initial replay may be old: age it by the wall clock.
                age = max(0.0, time.time() - at)
                self._seen[entry.key] = time.monotonic() - age
                self._dead_handled.discard(entry.key)
        finally:
            await watcher.stop()  # type: ignore[no-untyped-call]

    async def janitor_loop(self, ops: OrphanEnder) -> None:
        """End jobs whose owner died: promptly for replicas seen dying, by sweep for the rest."""
        next_sweep = time.monotonic() + self.s.lease_ttl  # give heartbeats time to arrive first
        tick = max(0.2, min(1.0, self.s.lease_ttl / 4))
        while not self.stopping:
            await asyncio.sleep(tick * (0.8 + 0.4 * random.random()))
            if self.stopping:
                return
            newly_dead = [
                r for r in self._seen if not self.is_alive(r) and r not in self._dead_handled
            ]
            if newly_dead or time.monotonic() >= next_sweep:
                try:
                    await self.sweep(ops)
                except Exception as e:  # one failed sweep must not end the replica
                    log.warning("janitor sweep failed (next tick retries): %r", e)
                    continue
                self._dead_handled.update(newly_dead)
                next_sweep = time.monotonic() + self.s.sweep_interval

    def _orphaned(self, owner: str, job_id: str) -> bool:
        """Owner dead, or the owner is this replica but no actor runs the job here any more
        (its actor could not write the terminal event, e.g. while NATS was away)."""
        if owner == self.s.replica_id:
            return self.registry is not None and job_id not in self.registry
        return not self.is_alive(owner)

    async def sweep(self, ops: OrphanEnder) -> int:
        """End every running job whose owner is gone (with ``owner lost``, or from its log when
        the log has ended: the record is repaired); returns how many this replica ended."""
        ended = 0
        for rec in await self.store.all_records():
            if rec.status.terminal or not self._orphaned(rec.owner, rec.stream_id):
                continue
            loaded = await self.store.load_record(rec.stream_id)
            if loaded is None:
                continue
            fresh, rev = loaded
            if fresh.status.terminal or not self._orphaned(fresh.owner, fresh.stream_id):
                continue
            if await ops.fail_orphan(fresh, rev, "owner lost"):
                ended += 1
                self.takeovers += 1
        return ended


class CleanupWorker:
    """Removes finished jobs' event logs after ``completed_ttl``.

    Each finished job leaves one message on the cleanup work queue; one durable consumer,
    delivered to a queue group of all replicas, hands each message to exactly one of them, and
    a message that is not due yet is nak'ed with the remaining delay: no scanning, no timer per
    job. It is a callback subscription rather than a pull loop because nats-py's pull ``fetch``
    swallows task cancellation, which made shutdown wait for the fetch timeout.
    """

    def __init__(self, store: Store, settings: Settings, registry: Registry | None = None) -> None:
        self.store = store
        self.s = settings
        self.registry = registry
        self.purged = 0
        self._sub: Any = None

    async def start(self) -> None:
        from nats.js.api import AckPolicy, ConsumerConfig

        stream = self.s.stream_name.removesuffix("_EVENTS") + "_CLEANUP"
        self._sub = await self.store.js.subscribe(
            f"{self.s.prefix}.cleanup.*",
            queue="cleanup",
            durable="cleanup",
            stream=stream,
            cb=self._handle,
            manual_ack=True,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30, max_deliver=-1),
        )

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def _handle(self, msg: Msg) -> None:
        try:
            order = _cleanup.decode(msg.data)
            remaining = order.due - time.time()
            if remaining > 0:
                await msg.nak(delay=remaining)
                return
            job_id = order.job_id
            try:
                await self.store.purge_events(job_id, up_to_seq=order.up_to_seq)
            except NotFoundError:
                log.info("cleanup of %s: event stream not found, nothing to purge", job_id)
            self.purged += 1
            await msg.ack()
        except msgspec.DecodeError as e:
            log.error("dropping a malformed cleanup message: %r", e)
            await msg.term()
