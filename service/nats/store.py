"""JetStream and KV access for jobs: records, user index, snapshots, event publishing, cleanup.

This is the adapter boundary: nats-py exceptions are translated into ``schemas.errors`` here,
and it implements the actors' :class:`~actors.port.ActorPort`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

from schemas import headers as hdr
from schemas.api import ResumeSnapshot
from schemas.bookkeeping import CleanupOrder, Heartbeat, UserIndexEntry
from schemas.errors import Conflict, StoreFailed, Unavailable
from schemas.job import JobRecord, decode_record, encode_record
from service.config import Settings
from service.nats.directget import (
    DirectGetError,
    ReplayTimeout,
    StoredMsg,
    client_for,
    transient,
)
from service.nats.localtap import tap_for
from service.nats.outage import OutagePolicy, retry, ride_out
from service.nats.publisher import FencedPublisher

T = TypeVar("T")

log = logging.getLogger("genjobs.store")

_MULTI_LAST_BATCH = 1000
_enc = msgspec.json.Encoder()
_snapshot_decoder = msgspec.json.Decoder(ResumeSnapshot)


def _row(m: StoredMsg) -> tuple[str, dict[str, str], bytes]:
    return m.header(hdr.SUBJECT) or "", m.headers, m.data


def _ttl(seconds: float | None) -> float | None:
    # The server takes whole seconds, at least 1 (docs/nats-py.md).
    return None if seconds is None else float(max(1, math.ceil(seconds)))


class Store:
    """Everything a replica reads and writes in NATS, for every job."""

    def __init__(self, nc: NATS, settings: Settings) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.s = settings
        self.replica_id = settings.replica_id
        self.outage = OutagePolicy.from_settings(settings)
        self.dg = client_for(nc)
        self.publisher = FencedPublisher(nc, timeout=settings.publish_timeout, policy=self.outage)
        self.tap = tap_for(nc)
        self.jobs: KeyValue
        self.users: KeyValue
        self.snapshots: KeyValue
        self.replicas: KeyValue

    async def open(self) -> None:
        s = self.s
        self.jobs = await self.js.key_value(s.jobs_bucket)
        self.users = await self.js.key_value(s.users_bucket)
        self.snapshots = await self.js.key_value(s.snapshots_bucket)
        self.replicas = await self.js.key_value(s.replicas_bucket)
        await self.publisher.start()

    async def close(self) -> None:
        await self.publisher.close()

    # --- events ---------------------------------------------------------------------------

    async def publish_event(
        self,
        job_id: str,
        payload: bytes,
        kind: str,
        index: int,
        expected_last: int,
        writer: str | None = None,
    ) -> int:
        if len(payload) > self.s.max_request_bytes * 8:
            raise StoreFailed(f"event {index} of job {job_id} is {len(payload)} bytes: too large")
        return await self.publisher.publish_fenced(
            self.s.stream_name,
            self.s.events_subject(job_id),
            payload,
            {hdr.KIND: kind, hdr.INDEX: str(index), hdr.WRITER: writer or self.replica_id},
            expected_last=expected_last,
            index=index,
        )

    def claim_local(self, job_id: str) -> None:
        """This connection runs the job's actor: its local readers are fed directly."""
        self.tap.claim(self.s.live_subject(job_id))

    def release_local(self, job_id: str) -> None:
        self.tap.release(self.s.live_subject(job_id))

    def delivered(
        self, job_id: str, seq: int, prev: int, kind: str, index: int, data: bytes
    ) -> None:
        self.tap.deliver(self.s.live_subject(job_id), seq, prev, kind, index, data)

    async def subject_last_seq(self, job_id: str) -> int:
        last = await self.subject_last(job_id)
        return 0 if last is None else last[0]

    async def subject_last(self, job_id: str) -> tuple[int, dict[str, Any]] | None:
        """(seq, headers) of the job's last event, or None when its subject is empty.

        Rides out an outage under the outage policy, as publishes do: an actor that just gave
        up publishing reads the tail here to write its terminal error once NATS is back.

        Raises:
            StoreFailed: the stream did not answer within the outage budget, or refused.
        """
        subject = self.s.events_subject(job_id)
        last = await self._direct_get(
            f"the last event of job {job_id}",
            lambda: self.dg.last_msg(self.s.stream_name, subject, self.s.request_timeout),
        )
        return None if last is None else (last.seq, last.headers)

    async def event_data(self, job_id: str, seq: int) -> bytes | None:
        """The payload of one stored event (None if it is gone).

        Raises:
            StoreFailed: the stream did not answer within the outage budget, or refused.
        """
        msg = await self._direct_get(
            f"event {seq} of job {job_id}",
            lambda: self.dg.get(self.s.stream_name, seq, self.s.request_timeout),
        )
        return None if msg is None else msg.data

    async def _direct_get(self, what: str, request: Callable[[], Awaitable[T]]) -> T:
        """A Direct Get ridden out through an outage; its error becomes StoreFailed (the
        adapter boundary)."""
        try:
            return await retry(
                request,
                self.outage,
                what=f"direct get of {what}",
                transient=transient,
                stopped=lambda: self.nc.is_closed,
            )
        except DirectGetError as e:
            raise StoreFailed(f"direct get of {what} failed: {e}") from e

    async def purge_events(self, job_id: str, up_to_seq: int | None = None) -> None:
        """Remove a job's event log (only up to ``up_to_seq`` inclusive, if given)."""
        kwargs: dict[str, Any] = {"subject": self.s.events_subject(job_id)}
        if up_to_seq is not None:
            kwargs["seq"] = up_to_seq + 1
        await self.js.purge_stream(self.s.stream_name, **kwargs)

    # --- records --------------------------------------------------------------------------

    async def load_record(self, job_id: str) -> tuple[JobRecord, int] | None:
        try:
            entry = await self.jobs.get(job_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if entry.value is None or entry.revision is None:
            return None
        try:
            return decode_record(entry.value), entry.revision
        except (msgspec.DecodeError, msgspec.ValidationError) as e:
            raise StoreFailed(f"record of job {job_id} is corrupt: {e}") from e

    async def create_record(self, rec: JobRecord) -> int:
        """Raises: Conflict if the key exists."""
        try:
            return int(await self.jobs.create(rec.stream_id, encode_record(rec)))
        except KeyWrongLastSequenceError as e:
            raise Conflict(f"job {rec.stream_id} exists", job_id=rec.stream_id) from e

    async def update_record(self, rec: JobRecord, rev: int, *, ttl: float | None = None) -> int:
        rec.lease_until = int((time.time() + self.s.lease_ttl) * 1000)
        data = encode_record(rec)
        if ttl is None:
            try:
                return int(
                    await self._ride_out(
                        f"record of {rec.stream_id}",
                        lambda: self.jobs.update(rec.stream_id, data, last=rev),
                    )
                )
            except KeyWrongLastSequenceError as e:
                raise Conflict(f"job {rec.stream_id} changed (revision {rev})", revision=rev) from e
        return await self._ride_out(
            f"record of {rec.stream_id}",
            lambda: self._cas_with_ttl(self.s.jobs_bucket, rec.stream_id, data, rev, ttl),
        )

    async def _ride_out(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """A KV write of a job's lifecycle, retried through an outage like its events."""
        return await ride_out(op, self.outage, what=what)

    async def _cas_with_ttl(self, bucket: str, key: str, data: bytes, rev: int, ttl: float) -> int:
        # kv.update carries no TTL; a raw publish with the CAS header does (docs/nats-py.md).
        try:
            ack = await self.js.publish(
                f"$KV.{bucket}.{key}",
                data,
                headers={hdr.EXPECTED_LAST_SUBJECT_SEQ: str(rev)},
                msg_ttl=_ttl(ttl),
            )
        except BadRequestError as e:
            if e.err_code == 10071:
                raise Conflict(f"{bucket}/{key} changed (revision {rev})", revision=rev) from e
            raise StoreFailed(f"{bucket}/{key}: {e}") from e
        return int(ack.seq)

    # --- user index -----------------------------------------------------------------------

    def user_key(self, user_id: str, job_id: str, tenant_id: str | None) -> str:
        return f"{tenant_id}.{user_id}.{job_id}" if tenant_id else f"{user_id}.{job_id}"

    async def add_user_index(self, rec: JobRecord) -> None:
        key = self.user_key(rec.user_id, rec.stream_id, rec.tenant_id)
        value = _enc.encode(UserIndexEntry(created_at=rec.created_at))
        await self._ride_out(f"user index of {rec.stream_id}", lambda: self.users.put(key, value))

    async def remove_user_index(self, user_id: str, job_id: str, tenant_id: str | None) -> None:
        # A purge marker with a TTL: the tombstone itself goes away, nothing accumulates.
        key = self.user_key(user_id, job_id, tenant_id)
        await self._ride_out(
            f"user index of {job_id}",
            lambda: self.users.purge(key, msg_ttl=_ttl(self.s.completed_ttl)),
        )

    async def list_user_jobs(self, user_id: str, tenant_id: str | None) -> list[str]:
        prefix = f"{tenant_id}.{user_id}." if tenant_id else f"{user_id}."
        subjects = await self.direct_multi_last(
            f"KV_{self.s.users_bucket}", f"$KV.{self.s.users_bucket}.{prefix}*"
        )
        out = []
        for subject, headers, data in subjects:
            if headers.get(hdr.KV_OPERATION) in ("DEL", "PURGE") or not data:
                continue
            out.append(subject.rsplit(".", 1)[1])
        return out

    async def direct_multi_last(
        self, stream: str, subject_filter: str
    ) -> list[tuple[str, dict[str, str], bytes]]:
        """Last message of every subject matching the filter, without creating a consumer.

        Raises:
            Unavailable: the stream did not answer in time.
            StoreFailed: the stream refused the request.
        """
        try:
            msgs, _ = await self.dg.multi_last(
                stream, subject_filter, _MULTI_LAST_BATCH, self.s.request_timeout
            )
        except ReplayTimeout as e:
            raise Unavailable(f"direct get on {stream} timed out") from e
        except DirectGetError as e:
            raise StoreFailed(str(e)) from e
        if len(msgs) < _MULTI_LAST_BATCH:
            return [_row(m) for m in msgs]
        # A full page means there may be more; this path is rare (a user with 1,000+ active
        # jobs), so a simple full scan is used.
        return await self._scan_last(stream, subject_filter)

    async def _scan_last(
        self, stream: str, subject_filter: str
    ) -> list[tuple[str, dict[str, str], bytes]]:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        out: dict[str, tuple[str, dict[str, str], bytes]] = {}
        sub = await self.js.subscribe(
            subject_filter,
            stream=stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT),
        )
        try:
            # A push consumer may have delivered some already: anything at all = delivered +
            # pending. Then read until the server says nothing is pending; a key rewritten
            # mid-scan arrives again as its new message, so it is not missed.
            info = await sub.consumer_info()
            delivered = info.delivered.consumer_seq if info.delivered else 0
            if (info.num_pending or 0) + (delivered or 0) == 0:
                return []
            while True:
                msg = await sub.next_msg(timeout=self.s.request_timeout)
                out[msg.subject] = (msg.subject, dict(msg.headers or {}), msg.data)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return list(out.values())

    async def all_records(self) -> list[JobRecord]:
        """Every job record (a full scan: used for counts and the janitor's sweep)."""
        rows = await self._scan_last(f"KV_{self.s.jobs_bucket}", f"$KV.{self.s.jobs_bucket}.>")
        out = []
        for _, headers, data in rows:
            if headers.get(hdr.KV_OPERATION) in ("DEL", "PURGE") or not data:
                continue
            try:
                out.append(decode_record(data))
            except (msgspec.DecodeError, msgspec.ValidationError):
                log.error("skipping a corrupt job record in %s", self.s.jobs_bucket)
        return out

    # --- snapshots ------------------------------------------------------------------------

    async def put_snapshot(
        self, job_id: str, snapshot: ResumeSnapshot, *, ttl: float | None = None
    ) -> None:
        data = _enc.encode(snapshot)
        if ttl is None:
            await self.snapshots.put(job_id, data)
        else:
            await self.js.publish(
                f"$KV.{self.s.snapshots_bucket}.{job_id}", data, msg_ttl=_ttl(ttl)
            )

    async def get_snapshot(self, job_id: str) -> ResumeSnapshot | None:
        """The stored snapshot; None if there is none (or it is unreadable: it is derived
        data, the log still holds every event)."""
        try:
            entry = await self.snapshots.get(job_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        if not entry.value:
            return None
        try:
            return _snapshot_decoder.decode(entry.value)
        except msgspec.DecodeError:
            log.error("ignoring an unreadable snapshot of job %s", job_id)
            return None

    async def delete_snapshot(self, job_id: str) -> None:
        await self.snapshots.purge(job_id, msg_ttl=_ttl(self.s.completed_ttl))

    # --- terminal bookkeeping ---------------------------------------------------------------

    async def job_finished(self, rec: JobRecord) -> None:
        await self.remove_user_index(rec.user_id, rec.stream_id, rec.tenant_id)
        await self.schedule_cleanup(rec)

    async def schedule_cleanup(self, rec: JobRecord) -> None:
        """Queue the removal of this generation's event log after ``completed_ttl``."""
        due = time.time() + self.s.completed_ttl
        order = CleanupOrder(
            job_id=rec.stream_id, created_at=rec.created_at, up_to_seq=rec.last_seq, due=due
        )
        body = _enc.encode(order)
        subject = f"{self.s.prefix}.cleanup.{rec.stream_id}"
        # Repeating it is harmless: a second cleanup message purges an already purged log.
        await self._ride_out(f"cleanup of {rec.stream_id}", lambda: self.js.publish(subject, body))

    # --- replicas -------------------------------------------------------------------------

    async def heartbeat(self) -> None:
        await self.replicas.put(self.replica_id, _enc.encode(Heartbeat(at=time.time())))

    async def stream_exists(self) -> bool:
        try:
            await self.js.stream_info(self.s.stream_name)
        except NotFoundError:
            return False
        return True
