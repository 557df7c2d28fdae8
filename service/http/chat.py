"""LibreChat's resumable-stream routes on genjobs, plus resume by sequence (docs/http.md).

    GET  <prefix>/stream/:streamId[?resume=true|?after=SEQ]   SSE, held open until the terminal
    GET  <prefix>/active                                      {activeJobIds}
    GET  <prefix>/status/:conversationId                      {active, streamId, status, ...}
    POST <prefix>/abort  {streamId?, conversationId?, abortKey?}   {success, aborted}

Shapes and status codes are LibreChat's (``api/server/routes/agents/index.js``), so its front
end works unchanged; what genjobs adds is ``id: <stream seq>`` on every frame and the
continuation by ``Last-Event-ID`` (or ``?after=``), which LibreChat lacks. Every job fact comes
from the service API over NATS, every event from the client SDK's :class:`LiveHub`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError

from schemas.errors import BadRequest, GenjobsError, NotFound
from schemas.ids import ID_RE
from service.client import api as upstream
from service.client.fanout import LiveFanout
from service.client.reader import LiveHub, ReaderError, ReadEvent
from service.config import Settings
from service.nats.directget import DirectGetError, ReplayTimeout

from .auth import Authenticator, Identity
from .config import HttpSettings
from .errors import json_response
from .metrics import Metrics
from .sse import Frames, Heartbeats, SlowClient, SseResponse, event_frame, frame

log = logging.getLogger("genjobs.http.chat")
_enc = msgspec.json.Encoder()

TERMINAL_STATUSES: Final = frozenset({"complete", "error", "aborted"})
HIDDEN_KINDS: Final = frozenset({"usage"})
"""Not sent to browsers: token usage is billing data (it stays in the job's log and record)."""
MAX_SEQ: Final = 2**63 - 1

NOT_FOUND_BODY: Final = {
    "error": "Stream not found",
    "message": "The generation job does not exist or has expired.",
}


class ChatRoutes:
    """The four routes of one gateway; ``add_to(app)`` registers them under the prefix."""

    def __init__(
        self,
        nc: NATS,
        settings: Settings,
        hs: HttpSettings,
        auth: Authenticator,
        hub: LiveHub,
        metrics: Metrics,
        heartbeats: Heartbeats,
        fanout: LiveFanout[Frames],
    ) -> None:
        self.nc = nc
        self.s = settings
        self.hs = hs
        self.auth = auth
        self.hub = hub
        self.metrics = metrics
        self.heartbeats = heartbeats
        self.fanout = fanout

    def add_to(self, app: web.Application) -> None:
        p = self.hs.chat_prefix
        app.router.add_get(f"{p}/stream/{{streamId}}", self.stream)
        app.router.add_get(f"{p}/active", self.active)
        app.router.add_get(f"{p}/status/{{conversationId}}", self.status)
        app.router.add_post(f"{p}/abort", self.abort)

    # --- helpers ---------------------------------------------------------------------------

    async def _call(self, name: str, body: dict[str, Any]) -> Any:
        return await upstream.call(self.nc, self.s, name, body)

    @staticmethod
    def _id(value: str, what: str) -> str:
        """Raises: web.HTTPBadRequest (JSON) for an id genjobs would refuse."""
        if not ID_RE.fullmatch(value):
            raise json_response(
                400, {"error": f"Invalid {what}", "message": f"{what} must match {ID_RE.pattern}"}
            )
        return value

    @staticmethod
    def _after(request: web.Request) -> tuple[int | None, str]:
        """Where a continuing client left off: ``Last-Event-ID`` (an ``EventSource``
        reconnect), else ``?after=``. Raises: web.HTTPBadRequest for a malformed seq."""
        for raw, kind in (
            (request.headers.get("Last-Event-ID"), "last_event_id"),
            (request.query.get("after"), "after"),
        ):
            if raw is None or (kind == "last_event_id" and raw == ""):
                continue
            if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_SEQ:
                raise json_response(
                    400,
                    {"error": "Invalid sequence", "message": f"{kind} must be a stream sequence"},
                )
            return int(raw), kind
        return None, ""

    # --- GET /stream/:streamId ----------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        ident = await self.auth.identify(request)
        job_id = self._id(request.match_info["streamId"], "streamId")
        after, kind = self._after(request)
        body = upstream.job_body(job_id, ident.user_id, ident.tenant_id)
        sync: bytes | None = None
        start, skip_to = after or 0, 0
        try:
            if after is None and request.query.get("resume") == "true":
                snap = await self._call("resume", body)
                seq = int(snap.get("seq", 0))
                sync = frame(
                    seq,
                    "message",
                    _enc.encode({"sync": True, "resumeState": snap, "pendingEvents": []}),
                )
                start = skip_to = seq
                if snap.get("status") in TERMINAL_STATUSES:
                    # The snapshot may already contain the terminal event: send it again, the
                    # client needs it to finish (events before it are in the snapshot).
                    last = await self.hub.last_event(job_id)
                    if last is not None and last.terminal and last.seq <= seq:
                        start = last.seq - 1
                kind = "snapshot"
            else:
                await self._call("sync", body)  # exists, and is this caller's (one KV read)
                if after:
                    last = await self.hub.last_event(job_id)
                    if last is not None and last.terminal and last.seq <= after:
                        # It has all of it: 204 tells an EventSource to stop reconnecting.
                        self.metrics.resume(kind)
                        return web.Response(status=204)
        except NotFound:
            raise json_response(404, NOT_FOUND_BODY) from None
        if kind:
            self.metrics.resume(kind)
        return await self._stream(request, job_id, start, skip_to, sync)

    async def _stream(
        self, request: web.Request, job_id: str, start: int, skip_to: int, sync: bytes | None
    ) -> web.StreamResponse:
        sse = await SseResponse.open(request, self.hs, self.metrics)
        self.metrics.sse_total.inc()
        self.metrics.sse_open.inc()
        ended = False
        try:
            with self.heartbeats.register(sse):
                if sync is not None:
                    await sse.write(sync)
                # Privately up to the live edge, then on the job's shared delivery.
                sink = _Sink(sse, skip_to, self.metrics)
                ended = await self.fanout.follow(job_id, start, sink)
        except SlowClient as e:
            sse.drop_slow(str(e))
        except ConnectionError:
            pass  # the client left
        except (ReaderError, ReplayTimeout, DirectGetError, NatsError) as e:
            # No terminal event: break the stream so that every client reconnects (sse.js
            # with ?resume=true, EventSource with Last-Event-ID), here or on another gateway.
            log.warning("SSE of job %s ended early: %s", job_id, e)
            sse.close()
        finally:
            self.metrics.sse_open.dec()
        if ended:
            await sse.finish()
        return sse.resp

    # --- GET /active, GET /status/:conversationId, POST /abort ------------------------------------

    async def active(self, request: web.Request) -> web.Response:
        ident = await self.auth.identify(request)
        reply = await self._call("active", _user_body(ident))
        return web.json_response({"activeJobIds": list(reply.get("activeJobIds", []))})

    async def status(self, request: web.Request) -> web.Response:
        ident = await self.auth.identify(request)
        job_id = self._id(request.match_info["conversationId"], "conversationId")
        body = upstream.job_body(job_id, ident.user_id, ident.tenant_id)
        try:
            info = await self._call("status", body)
            active = bool(info.get("active"))
            # LibreChat sends the resume state of a running job only.
            snap = await self._call("resume", body) if active else None
        except NotFound:
            return web.json_response({"active": False})
        return web.json_response(
            {
                "active": active,
                "streamId": job_id,
                "status": info.get("status"),
                "aggregatedContent": info.get("aggregatedContent", []),
                "createdAt": info.get("createdAt"),
                "resumeState": snap,
            }
        )

    async def abort(self, request: web.Request) -> web.Response:
        ident = await self.auth.identify(request)
        try:
            payload = await request.json(loads=msgspec.json.decode) if request.can_read_body else {}
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise json_response(400, {"error": "Invalid JSON body"}) from None
        if not isinstance(payload, dict):
            raise json_response(400, {"error": "The body must be a JSON object"})
        job_id = _abort_target(payload)
        if job_id is None:
            job_id = await self._latest_running(ident)
        if job_id is None:
            self.metrics.abort("not_found")
            return web.json_response({"error": "Job not found", "streamId": None}, status=404)
        self._id(job_id, "streamId")
        try:
            await self._call("abort", upstream.job_body(job_id, ident.user_id, ident.tenant_id))
        except NotFound:
            self.metrics.abort("not_found")
            return web.json_response({"error": "Job not found", "streamId": job_id}, status=404)
        except GenjobsError:
            self.metrics.abort("failed")
            raise
        self.metrics.abort("aborted")
        return web.json_response({"success": True, "aborted": job_id})

    async def _latest_running(self, ident: Identity) -> str | None:
        """LibreChat's fallback: the caller's most recently created running job."""
        reply = await self._call("active", _user_body(ident))
        best: tuple[int, str] | None = None
        for job_id in reply.get("activeJobIds", []):
            try:
                info = await self._call(
                    "status", upstream.job_body(job_id, ident.user_id, ident.tenant_id)
                )
            except NotFound:
                continue
            if info.get("active"):
                created = int(info.get("createdAt") or 0)
                if best is None or created > best[0]:
                    best = (created, job_id)
        return None if best is None else best[1]


def encode_events(events: Sequence[ReadEvent], skip_to: int = 0) -> Frames | None:
    """The frames of a batch of events, encoded once for every connection they go to; None
    when none is sent (token usage; events up to ``skip_to``, which a snapshot covers, except
    the terminal one: the client needs it to finish)."""
    frames = [
        event_frame(ev)
        for ev in events
        if ev.kind not in HIDDEN_KINDS and (ev.seq > skip_to or ev.terminal)
    ]
    if not frames:
        return None
    return Frames(frames[0] if len(frames) == 1 else b"".join(frames), len(frames))


class _Sink:
    """One SSE response as a sink of :class:`LiveFanout`: events it reads on its own are
    written with the response's waiting, bounded write; shared batches are pushed."""

    __slots__ = ("metrics", "skip_to", "sse")

    def __init__(self, sse: SseResponse, skip_to: int, metrics: Metrics) -> None:
        self.sse = sse
        self.skip_to = skip_to
        self.metrics = metrics

    async def write(self, events: Sequence[ReadEvent]) -> None:
        """Raises: SlowClient, ConnectionError (see SseResponse.write)."""
        frames = encode_events(events, self.skip_to)
        if frames is not None:
            await self.sse.write(frames.raw)
            self.metrics.events.inc(frames.count)

    def push(self, payload: Frames) -> bool:
        return self.sse.push(payload)


def _user_body(ident: Identity) -> dict[str, Any]:
    return upstream.user_body(ident.user_id, ident.tenant_id)


def _abort_target(payload: dict[str, Any]) -> str | None:
    """LibreChat's order: streamId, else conversationId (unless 'new'), else abortKey's part
    before ':'. Raises: BadRequest when a given field is not a string."""
    for name in ("streamId", "conversationId", "abortKey"):
        value = payload.get(name)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string")
        if name == "conversationId" and value == "new":
            continue
        return value.split(":", 1)[0] if name == "abortKey" else value
    return None
