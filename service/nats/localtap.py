"""In-process delivery from a job's actor to readers of that job on the same connection.

Every stored event is republished on ``<prefix>.live.<job>``, and a reader in the owner's own
process would receive it back through NATS: a round trip plus nats-py's header parsing and
dispatch for each event, measured as the largest cost of a producing process with local readers
(bench/README.md). While a job's actor runs on a connection, readers of that job on the same
connection are fed by the actor right after each acknowledged publish instead, with the same
``(seq, previous seq)`` the republish carries, so the reader's gap rules are unchanged.

When the actor ends — completed, crashed, or fenced out by a takeover — its local feeds are told
to fall back to the NATS live subject (subscribe first, then re-read from their cursor), so an
event written by any other replica still reaches them.
"""

from __future__ import annotations

import weakref
from typing import Protocol

from nats.aio.client import Client as NATS


class LocalFeed(Protocol):
    def on_local(self, seq: int, prev: int, kind: str, index: int, data: bytes) -> None: ...

    def owner_gone(self) -> None: ...


class LocalTap:
    """Per connection: jobs whose actor runs here, and the local feeds attached to them."""

    def __init__(self) -> None:
        self._owned: dict[str, int] = {}  # live subject -> actors of that job running here
        self._feeds: dict[str, set[LocalFeed]] = {}

    def claim(self, subject: str) -> None:
        self._owned[subject] = self._owned.get(subject, 0) + 1

    def release(self, subject: str) -> None:
        """An actor of this job ended. Its feeds fall back to NATS even if a successor (a
        replaced job) runs here already: that is always correct, only not the fast path."""
        left = self._owned.get(subject, 0) - 1
        if left > 0:
            self._owned[subject] = left
        else:
            self._owned.pop(subject, None)
        for feed in self._feeds.pop(subject, set()):
            feed.owner_gone()

    def attach(self, subject: str, feed: LocalFeed) -> bool:
        """Feed ``feed`` locally if the job's actor runs here; False means: use NATS."""
        if subject not in self._owned:
            return False
        self._feeds.setdefault(subject, set()).add(feed)
        return True

    def detach(self, subject: str, feed: LocalFeed) -> None:
        feeds = self._feeds.get(subject)
        if feeds is not None:
            feeds.discard(feed)
            if not feeds:
                del self._feeds[subject]

    def deliver(
        self, subject: str, seq: int, prev: int, kind: str, index: int, data: bytes
    ) -> None:
        feeds = self._feeds.get(subject)
        if feeds:
            for feed in list(feeds):
                feed.on_local(seq, prev, kind, index, data)


_TAPS: weakref.WeakKeyDictionary[NATS, LocalTap] = weakref.WeakKeyDictionary()


def tap_for(nc: NATS) -> LocalTap:
    tap = _TAPS.get(nc)
    if tap is None:
        tap = _TAPS[nc] = LocalTap()
    return tap
