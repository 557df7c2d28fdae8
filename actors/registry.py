"""The actors running on this replica: job id -> actor, and the TaskGroup that owns their tasks."""

from __future__ import annotations

import asyncio
import logging

from actors.handle import ActorHandle
from actors.stream_actor import StreamActor
from schemas.errors import Unavailable

log = logging.getLogger("genjobs.registry")


class Registry:
    """Maps job id to the actor of its running job; every actor task belongs to one TaskGroup.

    The TaskGroup is entered by the replica for its lifetime; an actor that crashes ends its
    job with an error inside its own ``run`` (it never raises), so one job cannot take the
    group, and with it the replica, down.
    """

    def __init__(self) -> None:
        self._actors: dict[str, ActorHandle] = {}
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.reserved: set[str] = set()
        """Ids being created here: their record may exist before their actor does."""
        self.ending: set[str] = set()
        """Ids this replica is ending in a dead owner's place (``service.server.takeover``)."""
        self.closing = False

    def bind(self, tg: asyncio.TaskGroup) -> None:
        self._tg = tg

    def __len__(self) -> int:
        return len(self._actors)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._actors or job_id in self.reserved or job_id in self.ending

    def get(self, job_id: str) -> ActorHandle | None:
        """The handle on the actor running ``job_id`` here, if any."""
        return self._actors.get(job_id)

    def actors(self) -> list[ActorHandle]:
        return list(self._actors.values())

    def start(self, actor: StreamActor) -> None:
        """Run ``actor`` under the replica's TaskGroup.

        Raises:
            Unavailable: the replica is shutting down or not started.
        """
        if self._tg is None or self.closing:
            raise Unavailable("replica is not accepting jobs (shutting down or not started)")
        previous = actor.on_end

        def ended(a: StreamActor) -> None:
            if self._actors.get(a.job_id) is a.handle:
                del self._actors[a.job_id]
                self._tasks.pop(a.job_id, None)
            if previous is not None:
                previous(a)

        actor.on_end = ended
        self._actors[actor.job_id] = actor.handle
        self._tasks[actor.job_id] = self._tg.create_task(actor.run(), name=f"job:{actor.job_id}")

    async def wait_all(self, timeout: float) -> bool:
        """Wait until every actor has ended; False if some are still running at ``timeout``."""
        tasks = list(self._tasks.values())
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout)
        return not pending

    def cancel_all(self) -> None:
        for t in self._tasks.values():
            t.cancel()
