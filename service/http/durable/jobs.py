"""genjobs jobs as read-only Durable Streams: ``/v1/stream/jobs/<job>``.

A job's events are already an offset-addressed log: the subject ``<prefix>.events.<job>`` of
the event stream, one message per LibreChat event, republished live on
``<prefix>.live.<job>``. Read as a Durable Stream it is an ``application/json`` stream whose
values are the events, whose offsets are the events' stream sequences, and which is closed
once the terminal event (``final`` or ``error``) is stored. Only this run of the job is shown:
a reused job id starts after the record's ``firstSeq``. Writing goes through genjobs'
producers, never through this protocol (405). With authentication on, only the job's user (and
tenant) may read it.
"""

from __future__ import annotations

from aiohttp import web

from schemas import headers as hdr
from schemas.events import TERMINAL_KINDS
from schemas.ids import ID_RE
from schemas.job import decode_record
from service.config import Settings

from .access import may_access, principal_of
from .model import DsError, Source
from .reading import Readers, View, parse_read_query
from .storage import DurableStore

JOB_CONTENT_TYPE = "application/json"
_TERMINAL = frozenset(str(k) for k in TERMINAL_KINDS)


class JobStreams:
    def __init__(self, store: DurableStore, readers: Readers, settings: Settings) -> None:
        self.store = store
        self.readers = readers
        self.s = settings

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "OPTIONS":
            return web.Response(status=204)
        if request.method not in ("GET", "HEAD"):
            raise DsError(
                405, "A job's stream is read-only: write through genjobs", {"Allow": "GET, HEAD"}
            )
        job = request.match_info["job"]
        if request.method == "HEAD":
            return await self.readers.head(await self.view(request, job), {})
        after, start, live = parse_read_query(request)
        return await self.readers.get(request, await self.view(request, job), after, start, live)

    async def view(self, request: web.Request, job: str) -> View:
        """The job's current run as a view.

        Raises:
            DsError: 404 no such job (or it was cleaned up), 403 another user's job.
        """
        if not ID_RE.fullmatch(job):
            raise DsError(404, "Stream not found")
        bucket = self.s.jobs_bucket
        m = await self.store.dg.last_msg(
            f"KV_{bucket}", f"$KV.{bucket}.{job}", timeout=self.s.request_timeout
        )
        if m is None or m.header(hdr.KV_OPERATION) is not None:
            raise DsError(404, "Stream not found")
        rec = decode_record(m.data)
        if not may_access(rec.user_id, rec.tenant_id, principal_of(request)):
            raise DsError(403, "Not your job")
        source = Source(
            stream=self.s.stream_name,
            subject=self.s.events_subject(job),
            live_subject=self.s.live_subject(job),
            base=rec.first_seq,
            close_kinds=_TERMINAL,
        )
        return View(source, JOB_CONTENT_TYPE, f"job.{job}.{rec.created_at}")
