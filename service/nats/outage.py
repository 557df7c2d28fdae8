"""The outage policy: how long genjobs waits for NATS before it gives up, and how it retries.

A stream-leader election, a lost quorum or a reconnect shows up as 503 "no responders", as
replies that never come, or as a read-back nobody answers. None of them is a reason to fail a
job, a reader or a KV write at once. Every NATS operation of genjobs that can meet an outage —
a job's event publishes (``service/nats/publisher.py``), its KV writes (``service/nats/store.py``),
a reader's replay and idle checks (``service/client/reader.py``) and a session's Direct Gets
(``service/client/sessions.py``) — retries under the one :class:`OutagePolicy` built from the
settings:

* the **budget**: the operation keeps retrying until ``budget`` seconds have passed since its
  first failed attempt (``GENJOBS_PUBLISH_OUTAGE_BUDGET``); for a publish, an attempt that
  failed by timing out counts from when it was sent (readers count from when it failed, so a
  reader outlasts its producer's outage by up to one request timeout);
* the **backoff**: an attempt that failed fast (a 503) is retried after ``backoff_first`` seconds,
  doubling up to ``backoff_max``, so a 503 does not burn the attempts in milliseconds; one that
  failed slowly (a timeout) has waited already and is retried at once;
* **retries**: a publish is retried at least ``retries`` times even once the budget is spent
  (``GENJOBS_PUBLISH_RETRIES``), because a single timed-out attempt can outlast a short budget.

When the budget is spent the operation raises (its caller says what: ``StoreFailed`` for a job,
the Direct Get error for a reader) and the job fails loudly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import nats.errors
import nats.js.errors

from schemas.errors import StoreFailed
from service.config import Settings

log = logging.getLogger("genjobs.outage")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class OutagePolicy:
    """How an operation rides out a NATS outage (see the module docstring)."""

    budget: float = 30.0
    backoff_first: float = 0.1
    backoff_max: float = 1.0
    retries: int = 0

    @classmethod
    def from_settings(cls, s: Settings) -> OutagePolicy:
        return cls(budget=s.publish_outage_budget, retries=s.publish_retries)

    def begin(self, *, retries: int | None = None) -> Outage:
        """Track one operation's outage; ``retries`` overrides the policy's minimum."""
        return Outage(self, self.retries if retries is None else retries)


class Outage:
    """One operation's outage: when it began, how many attempts failed, the next pause."""

    __slots__ = ("_backoff", "_first", "_loop", "_retries", "attempts", "policy", "spent")

    def __init__(self, policy: OutagePolicy, retries: int) -> None:
        self.policy = policy
        self.attempts = 0
        """Failed attempts so far."""
        self.spent = 0.0
        """Seconds since the outage began (the first failed attempt was sent)."""
        self._retries = retries
        self._first: float | None = None
        self._backoff = policy.backoff_first
        self._loop = asyncio.get_running_loop()

    def failed(self, *, waited: float = 0.0) -> bool:
        """Count a failed attempt that took ``waited`` seconds to fail; True: retry it."""
        now = self._loop.time()
        self.attempts += 1
        if self._first is None:
            self._first = now - waited
        self.spent = now - self._first
        return self.spent < self.policy.budget or self.attempts <= self._retries

    def pause(self) -> float:
        """The wait before the next attempt after a fast failure (never past the budget by
        more than 10 ms); doubles the next one up to ``backoff_max``."""
        pause = min(self._backoff, max(0.0, self.policy.budget - self.spent) + 0.01)
        self._backoff = min(self._backoff * 2, self.policy.backoff_max)
        return pause


def _never() -> bool:
    return False


async def retry(
    op: Callable[[], Awaitable[T]],
    policy: OutagePolicy,
    *,
    what: str,
    transient: Callable[[Exception], bool | None],
    stopped: Callable[[], bool] = _never,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    spent: Callable[[Outage, Exception], Exception] | None = None,
) -> T:
    """``op()`` retried through an outage under ``policy``.

    ``transient(error)`` classifies a failure: ``None``: not an outage (raised at once);
    ``True``: it failed fast (a 503), back off before the next attempt; ``False``: it failed
    slowly (a timeout), which waited already: retry at once.
    ``stopped()`` true ends the wait at once (a closed connection or hub); ``sleep`` waits a
    pause (a hub passes one that its close interrupts). ``spent(outage, error)``, if given,
    makes the error raised once the budget is spent (chained to the last one).

    Raises:
        The last error, when it is not transient or when ``stopped()``; when the budget is
        spent, that of ``spent`` or else the last error.
    """
    outage: Outage | None = None
    while True:
        try:
            return await op()
        except Exception as e:
            fast = transient(e)
            if fast is None or stopped():
                raise
            if outage is None:
                outage = policy.begin(retries=0)
            if not outage.failed():
                if spent is None:
                    raise
                raise spent(outage, e) from e
            log.warning(
                "%s failed (attempt %d, %.1f s into the outage), retrying: %s",
                what,
                outage.attempts,
                outage.spent,
                e,
            )
            if fast:
                await sleep(outage.pause())


TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""What a JetStream request (a KV write) raises while its stream elects a leader or lost its
quorum, or while the connection is reconnecting: worth retrying within the outage budget."""


def _kv_transient(e: Exception) -> bool | None:
    return True if isinstance(e, TRANSIENT_ERRORS) else None


async def ride_out(op: Callable[[], Awaitable[T]], policy: OutagePolicy, *, what: str) -> T:
    """A JetStream request (a job's KV write) retried through :data:`TRANSIENT_ERRORS` under
    ``policy``, so the KV writes of a job's lifecycle get the same budget as its events. ``op``
    must be safe to repeat (a put, a purge, or a CAS whose landed retry the caller resolves from
    the Conflict it then raises).

    Raises:
        StoreFailed: still failing when the budget was spent.
    """

    def failed(outage: Outage, e: Exception) -> Exception:
        return StoreFailed(
            f"{what}: NATS unavailable for {outage.spent:.1f} s (outage budget "
            f"{policy.budget:g} s): {e!r}"
        )

    return await retry(op, policy, what=what, transient=_kv_transient, spent=failed)
