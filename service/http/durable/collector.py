"""The sweeper: what nobody touches any more is collected here.

* Streams past their TTL or expiry that nobody reads (access expires them lazily too).
* References a fork never completed: a fork adds its incarnation to its source's record before
  its own record exists; a gateway dying in between leaves a reference no fork holds, which
  would keep a deleted source's data forever. A reference held by no fork in two sweeps in a
  row (far longer than a fork takes to be created) is dropped.
* Orphan data: a stream's data is stored before its record is created; a gateway dying in
  between (or a record deleted before its purge finished) leaves a subject no record points
  to. One whose first message is older than the grace period is purged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from schemas import headers as hdr

from .lifecycle import Lifecycle
from .model import StreamRecord

log = logging.getLogger("genjobs.http.durable")

ORPHAN_GRACE: Final = 600.0
"""Seconds a subject may exist without a record (a create in progress) before it is purged."""


@dataclass(slots=True)
class SweepReport:
    expired: int = 0
    refs_dropped: int = 0
    orphans_purged: int = 0


class Collector:
    def __init__(self, life: Lifecycle, *, orphan_grace: float = ORPHAN_GRACE) -> None:
        self.life = life
        self.store = life.store
        self.orphan_grace = orphan_grace
        self._suspect_refs: dict[str, set[str]] = {}  # source incarnation -> refs unheld

    async def sweep(self) -> SweepReport:
        report = SweepReport()
        records: dict[str, tuple[StreamRecord, int]] = {}
        async for name in self.store.names():
            got = await self.store.lookup(name)
            if got is not None:
                records[name] = got
        held: dict[str, set[str]] = {}
        for rec, _ in records.values():
            if rec.fork is not None:
                held.setdefault(rec.fork.source_inc, set()).add(rec.inc)
        for name, (rec, rev) in records.items():
            if rec.deleted or (rec.ttl is None and rec.expires_ts is None):
                continue
            if await self.store.expired(rec):
                await self.life.expire(name, rec, rev)
                report.expired += 1
        report.refs_dropped = await self._drop_unheld_refs(records, held)
        live = {rec.inc for rec, _ in records.values()}
        report.orphans_purged = await self._purge_orphans(live)
        return report

    async def _drop_unheld_refs(
        self, records: dict[str, tuple[StreamRecord, int]], held: dict[str, set[str]]
    ) -> int:
        dropped = 0
        suspects: dict[str, set[str]] = {}
        for name, (rec, _) in records.items():
            unheld = set(rec.refs) - held.get(rec.inc, set())
            if not unheld:
                continue
            confirmed = unheld & self._suspect_refs.get(rec.inc, set())
            suspects[rec.inc] = unheld - confirmed
            for child in confirmed:
                log.warning("dropping reference %s of %s: no fork holds it", child, name)
                await self.life.drop_ref(name, rec.inc, child)
                dropped += 1
        self._suspect_refs = suspects
        return dropped

    async def _purge_orphans(self, live: set[str]) -> int:
        store = self.store
        prefix = store.subject("")
        info = await store.js.stream_info(store.stream, subjects_filter=prefix + "*")
        purged = 0
        now = store.clock()
        for subject in info.state.subjects or {}:
            inc = subject[len(prefix) :]
            if inc in live:
                continue
            last = await store.dg.last_msg(store.stream, subject)
            stamp = last.header(hdr.TIME_STAMP) if last is not None else None
            if stamp is None or now - _timestamp(stamp) < self.orphan_grace:
                continue
            log.warning("purging orphan durable stream data %s", subject)
            await store.purge(inc)
            purged += 1
        return purged


def _timestamp(stamp: str) -> float:
    """A ``Nats-Time-Stamp`` (RFC 3339 with nanoseconds) as a Unix time."""
    head, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))
