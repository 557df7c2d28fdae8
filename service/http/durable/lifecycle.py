"""A Durable Stream's life: create (and fork), expire, delete, soft-delete and collect.

A stream's record is created last, after its initial data is stored under a subject nothing
points to yet, so no reader sees a half-made stream. A fork holds a reference (its
incarnation) in its source's record, revision-checked; a source with references is only
soft-deleted (410) and its data kept, and the last reference released collects it, up the
chain. TTLs are the gateway's (JetStream's limits do not slide per stream): a stream expires
when it is next touched, or when the sweeper (:mod:`.collector`) finds it.
"""

from __future__ import annotations

import uuid

from msgspec.structs import replace
from nats.js.errors import KeyWrongLastSequenceError

from . import protocol as p
from .model import (
    M_CLOSE,
    CreateOutcome,
    CreateSpec,
    DsError,
    ForkInfo,
    Segment,
    StreamRecord,
    encode,
    name_key,
)
from .storage import DurableStore


class Lifecycle:
    """Creation, expiry and deletion of streams on a :class:`DurableStore`."""

    def __init__(self, store: DurableStore) -> None:
        self.store = store

    async def resolve(self, name: str, *, touch: bool) -> tuple[StreamRecord, int]:
        """The live record of ``name``; expires it on the way if its time has come.

        Raises:
            DsError: 404 no such stream (or it just expired), 410 soft-deleted.
        """
        got = await self.store.lookup(name)
        if got is None:
            raise DsError(404, "Stream not found")
        rec, rev = got
        if rec.deleted:
            raise DsError(410, "Stream is gone")
        if await self.store.expired(rec):
            gone = await self.expire(name, rec, rev)
            raise DsError(410, "Stream is gone") if gone else DsError(404, "Stream not found")
        if touch:
            await self.store.touch(rec)
        return rec, rev

    async def expire(self, name: str, rec: StreamRecord, rev: int) -> bool:
        """Remove an expired stream; one with forks is soft-deleted. True: it is soft-deleted."""
        while True:
            if rec.refs:
                if rec.deleted or await self.store.update(name, replace(rec, deleted=True), rev):
                    return True
            elif await self._destroy(name, rec, rev):
                return False
            got = await self.store.lookup(name)
            if got is None or got[0].inc != rec.inc:
                return False
            rec, rev = got

    async def create(self, name: str, spec: CreateSpec) -> CreateOutcome:
        """PUT: create ``name`` (201), or confirm an identical existing one (200).

        Raises:
            DsError: 409 different configuration or soft-deleted, 404 fork source missing,
                400 bad fork offset or sub-offset, 409 fork content type mismatch.
        """
        while True:
            got = await self.store.lookup(name)
            if got is not None:
                rec, rev = got
                if rec.deleted:
                    raise DsError(409, "Stream was deleted but still has active forks")
                if await self.store.expired(rec):
                    await self.expire(name, rec, rev)
                    continue
                return await self._confirm(rec, spec)
            outcome = await self._create_new(name, spec)
            if outcome is not None:
                return outcome

    async def _confirm(self, rec: StreamRecord, spec: CreateSpec) -> CreateOutcome:
        tail, closed = await self.store.tail(self.store.source(rec))
        want_ct = p.media_type(spec.content_type) or (
            None if spec.fork_from else p.DEFAULT_CONTENT_TYPE
        )
        same = (
            (want_ct is None or want_ct == p.media_type(rec.content_type))
            and (spec.closed == closed)
            and (spec.fork_from == (rec.fork.source if rec.fork else None))
        )
        if same and rec.fork is not None:
            same = (spec.fork_offset is None or spec.fork_offset == rec.fork.offset) and (
                (spec.fork_sub or 0) == rec.fork.sub
            )
        if same and not (spec.fork_from and spec.ttl is None and spec.expires_at is None):
            same = spec.ttl == rec.ttl and spec.expires_at == rec.expires_at
        if not same:
            raise DsError(409, "Stream already exists with different configuration")
        return CreateOutcome(False, rec, tail, closed)

    async def _create_new(self, name: str, spec: CreateSpec) -> CreateOutcome | None:
        """None: someone else created ``name`` meanwhile (the caller compares again)."""
        inc = uuid.uuid4().hex
        content_type = spec.content_type or p.DEFAULT_CONTENT_TYPE
        fork: ForkInfo | None = None
        prefix: bytes | None = None
        ttl, expires_at, expires_ts = spec.ttl, spec.expires_at, spec.expires_ts
        source: tuple[StreamRecord, int] | None = None
        if spec.fork_from is not None:
            source = await self._fork_source(spec.fork_from)
            src, _ = source
            if spec.content_type and p.media_type(spec.content_type) != p.media_type(
                src.content_type
            ):
                raise DsError(409, "Content type mismatch with source stream")
            content_type = spec.content_type or src.content_type
            src_tail, _ = await self.store.tail(self.store.source(src))
            offset = src_tail if spec.fork_offset is None else spec.fork_offset
            if offset > src_tail:
                raise DsError(400, "Fork offset beyond source stream length")
            if spec.fork_sub:
                prefix = await self._sub_offset_prefix(src, offset, spec.fork_sub)
            chain = [
                Segment(s.inc, s.lo, min(s.cap, offset)) for s in src.segments if s.lo < offset
            ]
            if offset > src.base:
                chain.append(Segment(src.inc, src.base, offset))
            fork = ForkInfo(
                source=spec.fork_from,
                source_inc=src.inc,
                offset=offset,
                sub=spec.fork_sub or 0,
                chain=tuple(c for c in chain if c.cap > c.lo),
            )
            if ttl is None and expires_at is None:  # a fork inherits its source's expiry
                ttl, expires_at, expires_ts = src.ttl, src.expires_at, src.expires_ts
        body: bytes | None = spec.body or None
        if body is not None and p.is_json(content_type):
            try:
                body = p.json_fragment(body, allow_empty=True)
            except p.JsonBodyError as e:
                raise DsError(400, str(e)) from e
        # The data goes in first, under a subject nothing points to yet; the record that
        # makes it visible is created last, so a reader never sees a half-made stream.
        parts = [x for x in (prefix, body) if x]
        tail = 0
        subject = self.store.subject(inc)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            headers = {M_CLOSE: "1"} if (spec.closed and last) else {}
            tail = await self.store.put_initial(subject, part, headers, tail)
        if spec.closed and not parts:
            tail = await self.store.put_initial(subject, b"", {M_CLOSE: "1"}, tail)
        rec = StreamRecord(
            inc=inc,
            content_type=content_type,
            created=self.store.clock(),
            ttl=ttl,
            expires_at=expires_at,
            expires_ts=expires_ts,
            fork=fork,
            tenant=spec.tenant,
            user=spec.user,
        )
        if source is not None and not await self._add_ref(spec.fork_from or "", source, inc):
            await self.store.purge(inc)
            raise DsError(409, "Source stream was deleted while forking")
        try:
            await self.store.kv.create(name_key(name), encode(rec))
        except KeyWrongLastSequenceError:
            await self.store.purge(inc)
            if fork is not None:
                await self.drop_ref(fork.source, fork.source_inc, inc)
            return None
        return CreateOutcome(True, rec, max(tail, rec.base), spec.closed)

    async def _fork_source(self, source: str) -> tuple[StreamRecord, int]:
        got = await self.store.lookup(source)
        if got is None:
            raise DsError(404, "Source stream not found")
        rec, rev = got
        if rec.deleted:
            raise DsError(409, "Source stream was deleted but still has active forks")
        if await self.store.expired(rec):
            await self.expire(source, rec, rev)
            raise DsError(404, "Source stream not found")
        return rec, rev

    async def _sub_offset_prefix(self, src: StreamRecord, offset: int, sub: int) -> bytes:
        first = await self.store.first_data_after(src, offset)
        if first is None:
            raise DsError(400, "Invalid fork sub-offset: no data past the fork offset")
        if p.is_json(src.content_type):
            try:
                return p.json_prefix(first.data, sub)
            except p.JsonBodyError as e:
                raise DsError(400, f"Invalid fork sub-offset: {e}") from e
        if sub > len(first.data):
            raise DsError(400, "Invalid fork sub-offset: overshoots the message length")
        return first.data[:sub]

    async def _add_ref(self, name: str, source: tuple[StreamRecord, int], inc: str) -> bool:
        rec, rev = source
        while True:
            if rec.deleted:
                return False
            if await self.store.update(name, replace(rec, refs=(*rec.refs, inc)), rev):
                return True
            got = await self.store.lookup(name)
            if got is None or got[0].inc != rec.inc:
                return False
            rec, rev = got

    async def delete(self, name: str) -> None:
        """DELETE: remove the stream; one that forks still read is soft-deleted (410 after).

        Raises:
            DsError: 404 no such stream, 410 already soft-deleted.
        """
        while True:
            rec, rev = await self.resolve(name, touch=False)
            if rec.refs:
                if await self.store.update(name, replace(rec, deleted=True), rev):
                    return
            elif await self._destroy(name, rec, rev):
                return

    async def _destroy(self, name: str, rec: StreamRecord, rev: int) -> bool:
        """Remove record and data, then release the source's reference (cascading to a
        soft-deleted source nobody reads any more). False: the record changed meanwhile."""
        try:
            await self.store.kv.delete(name_key(name), last=rev)
        except KeyWrongLastSequenceError:
            return False
        await self.store.purge(rec.inc)
        if rec.fork is not None:
            await self.drop_ref(rec.fork.source, rec.fork.source_inc, rec.inc)
        return True

    async def drop_ref(self, name: str, source_inc: str, child: str) -> None:
        while True:
            got = await self.store.lookup(name)
            if got is None or got[0].inc != source_inc:
                return
            rec, rev = got
            refs = tuple(r for r in rec.refs if r != child)
            if rec.deleted and not refs:
                if await self._destroy(name, rec, rev):
                    return
            elif await self.store.update(name, replace(rec, refs=refs), rev):
                return
