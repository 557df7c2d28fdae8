"""A replica: the actor system of one process, with its NATS wiring and its shutdown.

    async with Replica(Settings.from_env()) as replica:
        job = await replica.create_job(user_id="u1")
        ...

Start: connect (or use the given connection), provision, open the buckets, write the first
heartbeat, then take work. Stop (also on SIGTERM in ``genjobs serve``), in this order, bounded
as a whole by ``shutdown_grace`` (also without NATS): stop taking work (unsubscribe, and flush
that, so nothing more is routed here) → give every running job its terminal event
("interrupted: replica shutting down") → wait for the actors → stop background tasks → flush
publish acks → drain the connection. Jobs left without a terminal event are logged and listed
in ``unfinished``.

``health()`` is the replica's readiness as data (NATS state, how long it has been away, whether
it gave up after ``nats_lost_after``, whether it is past its outage budget): what an HTTP
``/readyz`` reads. The connection's watch is ``service.server.connection``; creating a job is
``service.server.create``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.errors import NoStreamResponseError

from actors.handle import ActorHandle
from actors.registry import Registry
from actors.stream_actor import StreamActor
from actors.termination import SHUTDOWN_MESSAGE, Fail
from schemas.content.aggregator import ContentAggregator
from schemas.errors import GenjobsError, JobEnded, Unavailable
from schemas.job import JobRecord
from service.client.presence import AllLeftCallback, PresenceTracker
from service.client.producer import JobHandle
from service.config import Settings
from service.nats.provision import provision
from service.nats.store import Store
from service.server.abort import Aborts
from service.server.connection import NatsWatch, close_connection
from service.server.create import Creation
from service.server.handoff import Handoff
from service.server.liveness import CleanupWorker, Liveness
from service.server.ops import JobOps
from service.server.owner_link import OwnerLink
from service.server.reads import Reads
from service.server.replies import send_error
from service.server.resume import Resumes
from service.server.rpc import OwnerRpc
from service.server.takeover import Takeover

log = logging.getLogger("genjobs.replica")

ABORT_QUEUE = "genjobs-abort"

__all__ = ["SHUTDOWN_MESSAGE", "Replica"]


class Replica:
    def __init__(self, settings: Settings, nc: NATS | None = None) -> None:
        self.s = settings
        self.replica_id = settings.replica_id
        self._nc = nc
        self._owns_nc = nc is None
        self.registry = Registry()
        self._subs: list[Subscription] = []
        self._supervisor: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._ready: asyncio.Future[None] | None = None
        self._background: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self.stopped = False
        self.started_at: float | None = None
        self.nats_watch = NatsWatch(
            settings, lambda: self._nc, lambda: sorted(a.job_id for a in self.registry.actors())
        )
        self.nats_lost = self.nats_watch.lost
        """Set once NATS has been unreachable for ``nats_lost_after`` seconds: ``genjobs serve``
        then stops and exits 3."""
        self.unfinished: list[str] = []
        """Jobs that did not get their terminal event during :meth:`stop`."""

    @property
    def nc(self) -> NATS:
        assert self._nc is not None, "replica not started"
        return self._nc

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Raises: ProvisionMismatch, and nats errors when NATS cannot be reached."""
        if self._nc is None:
            if not self.s.nats_url:
                raise Unavailable("no NATS URL (set GENJOBS_NATS_URL or use `genjobs serve`)")
            self._nc = await nats.connect(
                servers=[u.strip() for u in self.s.nats_url.split(",") if u.strip()],
                name=f"genjobs-{self.replica_id}",
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
            )
        await provision(self.nc.jetstream(timeout=self.s.request_timeout), self.s)
        self.store = Store(self.nc, self.s)
        await self.store.open()
        self.liveness = Liveness(self.store, self.s, self.registry)
        owner = OwnerLink(self.nc, self.s)
        self.takeover = Takeover(self.store, self.s, self.registry)
        self.aborts = Aborts(self.store, self.s, self.registry, self.liveness, self.takeover, owner)
        self.resumes = Resumes(self.store, self.s, self.registry, owner)
        self.reads = Reads(self.store, self.s, self.registry, owner)
        self.ops = JobOps(self.reads, self.resumes, self.aborts, self.takeover)
        self.handoff = Handoff(
            self.s, self.registry, self.store, self.liveness, self.takeover, self.start_actor
        )
        self.creation = Creation(self.s, self.store, self.registry, self.aborts, self.start_actor)
        self._rpc = OwnerRpc(self.registry, self.aborts, adopt=self.handoff.adopt)
        self.cleanup = CleanupWorker(self.store, self.s)
        self.presence = PresenceTracker(self.nc, self.s, self.registry)
        self.presence.callbacks.append(self._reset_sync_sent)
        await self.presence.start()
        await self._first_heartbeat()
        await self.cleanup.start()
        p = self.s.prefix
        self._ready = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"replica:{self.replica_id}")
        await self._ready
        # The abort subject in a queue group: one replica gets each request and answers it,
        # in every state (``>``: an id with dots is answered too). The rpc subjects reach this
        # replica alone.
        self._subs = [
            await self.nc.subscribe(f"{p}.abort.>", queue=ABORT_QUEUE, cb=self._on_abort),
            await self.nc.subscribe(f"{p}.abort", queue=ABORT_QUEUE, cb=self._on_abort),
            await self.nc.subscribe(f"{p}.rpc.{self.replica_id}.*", cb=self._on_rpc),
        ]
        await self.nc.flush()
        self.started_at = time.monotonic()
        log.info("replica %s ready (prefix %s)", self.replica_id, p)

    async def _first_heartbeat(self) -> None:
        """A bucket just created on a cluster answers "no responders" until its leader is
        elected; wait for that (bounded) instead of failing the start."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(10.0, self.s.request_timeout * 2)
        while True:
            try:
                await self.store.heartbeat()
                return
            except NoStreamResponseError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _supervise(self) -> None:
        """Owns every background task of the replica, and the actors, in one TaskGroup."""
        assert self._ready is not None
        try:
            async with asyncio.TaskGroup() as tg:
                self.registry.bind(tg)
                self._tg = tg
                self._background = [
                    tg.create_task(self.liveness.heartbeat_loop(), name="heartbeat"),
                    tg.create_task(self.liveness.watch_loop(), name="liveness-watch"),
                    tg.create_task(self.liveness.janitor_loop(self.takeover), name="janitor"),
                    tg.create_task(self.presence.expire_loop(), name="presence"),
                    tg.create_task(
                        self.nats_watch.loop(lambda: self.liveness.stopping), name="nats-watch"
                    ),
                ]
                self._ready.set_result(None)
                await self._stop.wait()
                self._tg = None
                self.liveness.stopping = True
                for t in self._background:
                    t.cancel()
                self.registry.cancel_all()  # whatever survived the graceful phase
        except BaseException as e:
            if not self._ready.done():
                self._ready.set_exception(e)
            raise

    async def stop(self, grace: float | None = None) -> None:
        """The shutdown sequence (see module docstring), bounded as a whole by ``grace``
        (default ``shutdown_grace``), also when NATS is gone. Jobs that did not get their
        terminal event are logged and listed in :attr:`unfinished`. Idempotent."""
        if self.stopped:
            return
        self.stopped = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.s.shutdown_grace if grace is None else grace)

        def left(share: float = 1.0) -> float:
            return max(0.05, (deadline - loop.time()) * share)

        self.registry.closing = True  # 1. stop taking work
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self.nc.is_connected:  # the server has them: nothing is routed here any more
            try:
                await self.nc.flush(timeout=max(1, int(left(0.1))))
            except (TimeoutError, nats.errors.Error) as e:
                log.warning("shutdown: flushing the unsubscriptions: %r", e)
        # 2. remote-producer jobs move to another replica (service/server/handoff.py); the
        # rest get their terminal event, bounded by the grace period
        await self.handoff.hand_off_all(timeout=left(0.5))
        futures: dict[asyncio.Future[Any], str] = {}
        for actor in self.registry.actors():
            actor.stop_producer()  # the producer's signal to stop generating
            try:
                futures[actor.request_finish(Fail.shutdown())] = actor.job_id
            except GenjobsError:
                continue
        unfinished: list[str] = []
        if futures:
            done, pending = await asyncio.wait(futures, timeout=left(0.6))
            for f in done:
                err = f.exception()
                if err is not None:
                    unfinished.append(futures[f])
                    log.warning(
                        "shutdown: job %s ended without its terminal event: %s", futures[f], err
                    )
            for f in pending:
                unfinished.append(futures[f])
                f.cancel()  # nobody will read it: an actor cancelled later must not leave its
                # exception unretrieved on it
        # 3. wait for the actors, then stop the background tasks
        await self.registry.wait_all(timeout=left(0.5))
        self._stop.set()
        if self._supervisor is not None:
            try:
                await self._supervisor
            except* asyncio.CancelledError:
                pass
        if unfinished:
            self.unfinished = sorted(unfinished)
            log.error(
                "shutdown: %d job(s) could not get their terminal event (NATS %s): %s; they "
                "end as 'owner lost' once another replica sees this one gone",
                len(unfinished),
                self.nats_watch.state(),
                ", ".join(self.unfinished),
            )
        # 4. flush publish acks and say goodbye, as far as the grace period allows
        for what, step in (
            ("cleanup consumer", self.cleanup.stop),
            ("presence", self.presence.stop),
            ("publish acks", self.store.close),
            ("heartbeat key", lambda: self.store.replicas.purge(self.replica_id)),
        ):
            try:
                async with asyncio.timeout(left(0.5)):
                    await step()
            except TimeoutError:
                log.warning("shutdown: %s: not done within the grace period", what)
            except Exception as e:
                log.warning("shutdown: %s: %r", what, e)
        if self._owns_nc:
            await close_connection(self.nc, left())

    async def kill(self) -> None:
        """Simulate a crash (tests, chaos): no terminal events, no goodbye, heartbeats just stop."""
        self.stopped = True
        self.registry.closing = True
        self.liveness.stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await self.nc.close()

    async def __aenter__(self) -> Replica:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- jobs -----------------------------------------------------------------------------

    async def create_job(
        self,
        user_id: str,
        *,
        conversation_id: str | None = None,
        job_id: str | None = None,
        tenant_id: str | None = None,
        idempotency_key: str | None = None,
        replace: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> JobHandle:
        """Create a job owned by this replica and start its actor.

        Raises:
            InvalidId: an id is not ``[A-Za-z0-9_-]{1,128}``.
            Conflict: a job with this id is running (and ``replace`` is false), or it is owned
                by another replica (idempotent retry of a job created elsewhere).
            Forbidden: the id belongs to another user's job.
            Unavailable: this replica is shutting down.
        """
        return await self.creation.create_job(
            user_id,
            conversation_id=conversation_id,
            job_id=job_id,
            tenant_id=tenant_id,
            idempotency_key=idempotency_key,
            replace=replace,
            metadata=metadata,
        )

    def start_actor(
        self, rec: JobRecord, rev: int, *, agg: ContentAggregator | None = None
    ) -> ActorHandle:
        """Run the actor of ``rec`` (at revision ``rev``) here: a new job, or one adopted from
        a stopping replica with the content aggregated from its log (service/server/handoff.py).

        Raises:
            Unavailable: the replica is shutting down.
        """
        actor = StreamActor(
            rec,
            rev,
            self.store,
            inbox_size=self.s.inbox_size,
            snapshot_interval=self.s.snapshot_interval,
            completed_ttl=self.s.completed_ttl,
            max_events=self.s.max_events_per_job,
            on_end=lambda a: self.store.release_local(a.job_id),
        )
        if agg is not None:
            actor.agg = agg
        self.registry.start(actor)  # raises if closing; the task runs from the next tick
        self.store.claim_local(rec.stream_id)
        return actor.handle

    def watchers(self, job_id: str) -> int:
        """Readers watching a job owned here, across all processes that announce presence."""
        return self.presence.watchers(job_id)

    def on_all_readers_left(self, callback: AllLeftCallback) -> None:
        """Run ``callback(job_id)`` when the last reader of a job owned here leaves."""
        self.presence.callbacks.append(callback)

    async def _reset_sync_sent(self, job_id: str) -> None:
        # LibreChat resets syncSent when all subscribers leave: the next one needs a sync.
        handle = self.handle(job_id)
        if handle is not None and handle.record.sync_sent:
            try:
                await handle.update_metadata(syncSent=False)
            except JobEnded:
                log.debug("job %s ended before syncSent could be reset", job_id)

    def handle(self, job_id: str) -> JobHandle | None:
        actor = self.registry.get(job_id)
        return self._producer_handle(actor) if actor is not None else None

    @staticmethod
    def _producer_handle(actor: ActorHandle) -> JobHandle:
        return JobHandle.of(actor)

    # --- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Readiness as plain data (for ``/readyz`` and logs):

        ``ready`` is true while the replica takes work and NATS is connected; ``nats`` is
        ``connected | reconnecting | closed``; ``natsDownFor`` how long it has been away (s);
        ``natsLost`` whether it has been away longer than ``nats_lost_after``, after which
        ``genjobs serve`` exits 3; ``overBudget`` whether it has been away longer than the
        outage budget (``natsOutageBudget``, GENJOBS_PUBLISH_OUTAGE_BUDGET), after which its
        jobs are failing: such a replica is not ready (the one place for that rule; ``serve
        --http`` turns it into the ``outage`` check of ``/readyz``); ``jobs`` the running jobs
        owned here.
        """
        state = self.nats_watch.state()
        down = self.nats_watch.down_since
        down_for = 0.0 if down is None else round(time.monotonic() - down, 3)
        started = self.started_at is not None and not self.stopped
        budget = self.s.publish_outage_budget
        return {
            "ready": started and state == "connected",
            "replica": self.replica_id,
            "nats": state,
            "natsDownFor": down_for,
            "natsLost": self.nats_lost.is_set(),
            "natsLostAfter": self.s.nats_lost_after,
            "natsOutageBudget": budget,
            "overBudget": down_for > budget or self.nats_lost.is_set(),
            "stopping": self.stopped or self.registry.closing,
            "jobs": len(self.registry.actors()),
        }

    # --- NATS handlers --------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> bool:
        """Run a request's work in the replica's TaskGroup; False (coroutine closed) when the
        replica is stopping."""
        tg = self._tg
        if tg is None or self.registry.closing:
            coro.close()
            return False
        tg.create_task(coro, name=name)
        return True

    async def _on_abort(self, msg: Msg) -> None:
        """``<prefix>.abort.<job_id>``: answered by :meth:`Aborts.on_subject` in a task of the
        replica's TaskGroup, so a slow abort never delays the next request."""
        if not self._spawn(self.aborts.on_subject(msg), "abort-subject"):
            await send_error(self.nc, msg, Unavailable("replica is shutting down"))

    async def _on_rpc(self, msg: Msg) -> None:
        """``<prefix>.rpc.<me>.<op>``: in a task too. nats-py runs a subscription's callbacks
        one after another, and an abort (which waits for the actor's terminal write) must not
        hold up the snapshot and sync requests queued behind it."""
        if not self._spawn(self._rpc.on_msg(msg), "rpc"):
            await send_error(self.nc, msg, Unavailable("replica is shutting down"))
