"""The ``genjobs`` NATS micro service (docs/protocol.md, the service API) and the remote-ingest subjects (docs/protocol.md, remote producers) of a replica.

    api = ServiceApi(replica)        # a started Replica
    await api.start()                # before taking traffic
    ...
    await api.stop()                 # before replica.stop(): stop taking work first

Every replica registers the same service (``nats micro ls`` shows one instance per replica) with
the endpoints ``<prefix>.api.{create,status,resume,abort,active,counts,sync}`` in the default
queue group, so each request is handled by one replica. nats.micro runs an endpoint's handler
serially, so the handler only takes a slot (bounded per endpoint: a flood of slow aborts applies
backpressure to ``abort`` alone) and hands the request to a task of this object's TaskGroup; a
request stuck on a dead owner never delays another one.

Remote producers' batches on ``<prefix>.ingest.<job_id>`` (one queue group of all replicas) are
handled by :class:`service.server.ingest.IngestGateway`, whose answer tasks run in this object's
TaskGroup.

Every failure is answered with the micro error headers (``Nats-Service-Error``,
``Nats-Service-Error-Code``) and the body ``{"error": {"code", "message"}}``; unexpected
exceptions are logged with their traceback and answered ``unavailable``. A request without a
reply subject (a plain publish) is processed and not answered.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final

import msgspec
from msgspec import Struct
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import SEMVER_REGEX, Endpoint, EndpointStats, Service

from schemas.api import (
    AbortRequest,
    ActiveReply,
    ActiveRequest,
    CountsRequest,
    CreateRequest,
    JobRequest,
    ResumeRequest,
    StatusRequest,
    decode,
)
from schemas.errors import BadRequest, Conflict, GenjobsError, TooLarge, Unavailable
from schemas.ids import check_id, check_optional_id
from schemas.job import JobStatus
from service.nats import compat
from service.server.abort import BY_API
from service.server.ingest import IngestGateway
from service.server.replica import Replica
from service.server.replies import (
    ERROR_CODE_HEADER,
    ERROR_HEADER,
    error_code,
    header_text,
    send,
    send_error,
)

log = logging.getLogger("genjobs.api")
_enc = msgspec.json.Encoder()

SERVICE_NAME: Final = "genjobs"
UNKNOWN_QUEUE: Final = "genjobs-unknown"
INGEST_QUEUE: Final = "genjobs-ingest"
__all__ = ["ERROR_CODE_HEADER", "ERROR_HEADER", "SERVICE_NAME", "ServiceApi", "SyncRequest"]

ENDPOINT_DOCS: Final[dict[str, tuple[str, str]]] = {
    "create": (
        "{userId, conversationId?, jobId?, tenantId?, idempotencyKey?, replace?}",
        "job record (jobData); the answering replica owns the job",
    ),
    "status": ("{jobId, userId, tenantId?}", "{active, status, aggregatedContent, createdAt, seq}"),
    "resume": ("{jobId, userId, tenantId?}", "resume snapshot; continue reading at seq + 1"),
    "abort": ("{jobId, userId, tenantId?}", "AbortResult"),
    "active": ("{userId, tenantId?}", "{activeJobIds}"),
    "counts": ("{}", "{running, complete, error, aborted}"),
    "sync": ("{jobId, userId, tenantId?, syncSent?}", "{syncSent}; sets it when given"),
}


class SyncRequest(
    Struct,
    frozen=True,
    kw_only=True,
    rename="camel",
    omit_defaults=True,
    forbid_unknown_fields=True,
):
    """LibreChat's ``syncSent`` marker: read it, or set it when ``syncSent`` is given."""

    job_id: str
    user_id: str
    tenant_id: str | None = None
    sync_sent: bool | None = None


_SYNC_DECODER: Final = msgspec.json.Decoder(SyncRequest)


def service_version() -> str:
    """The package version if it is semver (nats.micro insists), else ``0.1.0``."""
    try:
        version = importlib.metadata.version("genjobs")
    except importlib.metadata.PackageNotFoundError:
        return "0.1.0"
    return version if SEMVER_REGEX.match(version) else "0.1.0"


def _decode(data: bytes, type_: type[Any]) -> Any:
    """Raises: BadRequest (malformed JSON, wrong types, missing or unknown fields)."""
    try:
        if type_ is SyncRequest:
            return _SYNC_DECODER.decode(data if data.strip() else b"{}")
        return decode(data, type_)
    except msgspec.DecodeError as e:
        raise BadRequest(f"invalid SyncRequest: {e}") from e
    except (ValueError, RecursionError) as e:
        raise BadRequest(str(e) if isinstance(e, ValueError) else "JSON nested too deeply") from e


def _job_ids(req: JobRequest | SyncRequest) -> tuple[str, str, str | None]:
    """Raises: InvalidId."""
    return (
        check_id(req.job_id, "jobId"),
        check_id(req.user_id, "userId"),
        check_optional_id(req.tenant_id, "tenantId"),
    )


class ServiceApi:
    """The micro service endpoints and the ingest subscription of one started replica."""

    def __init__(
        self,
        replica: Replica,
        *,
        max_inflight: int = 256,
        request_deadline: float | None = None,
        max_tombstones: int = 10_000,
    ) -> None:
        self.replica = replica
        self.s = replica.s
        self.max_inflight = max_inflight
        self.request_deadline = request_deadline or max(30.0, 6 * self.s.request_timeout)
        """Upper bound of one request's work; past it the caller gets ``unavailable``."""
        self._handlers: dict[str, Callable[[bytes], Awaitable[Any]]] = {
            "create": self._create,
            "status": self._status,
            "resume": self._resume,
            "abort": self._abort,
            "active": self._active,
            "counts": self._counts,
            "sync": self._sync,
        }
        self._slots = {name: asyncio.Semaphore(max_inflight) for name in self._handlers}
        self._ingest = IngestGateway(
            replica,
            self._spawn,
            max_inflight=max_inflight,
            request_deadline=self.request_deadline,
            max_tombstones=max_tombstones,
        )
        self._inflight: dict[str, int] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._service: Service | None = None
        self._subs: list[Subscription] = []
        self._tg: asyncio.TaskGroup | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self.stopped = False

    @property
    def service(self) -> Service:
        assert self._service is not None, "ServiceApi not started"
        return self._service

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Register the service and subscribe.

        Raises:
            nats errors if NATS refuses; whatever was set up is stopped again first.
        """
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor = asyncio.create_task(self._supervise(ready), name="api-supervisor")
        await ready
        try:
            await self._register()
        except BaseException:
            await self.stop(grace=0)
            raise
        log.info(
            "service %s %s serving %s.api.* and %s.ingest.*",
            SERVICE_NAME,
            self.service.id,
            self.s.prefix,
            self.s.prefix,
        )

    async def _register(self) -> None:
        nc = self.replica.nc
        p = self.s.prefix
        self._service = await add_service(
            nc,
            name=SERVICE_NAME,
            version=service_version(),
            description="Resumable LLM generation jobs: create, status, resume, abort, usage.",
            metadata={"prefix": p, "replica": self.replica.replica_id},
            # The CLI validates `data` as an object; nats-py sends null without a handler.
            stats_handler=self._endpoint_data,
        )
        group = self._service.add_group(name=f"{p}.api")
        for name in self._handlers:
            request, reply = ENDPOINT_DOCS[name]
            await group.add_endpoint(
                name=name,
                handler=self._endpoint_handler(name),
                metadata={"request": request, "reply": reply},
            )
            self._endpoints[name] = compat.last_endpoint(self._service)
        for subject in (f"{p}.api.>", f"{p}.api"):
            self._subs.append(await nc.subscribe(subject, queue=UNKNOWN_QUEUE, cb=self._on_unknown))
        for subject in self._ingest.subjects:
            self._subs.append(
                await nc.subscribe(subject, queue=INGEST_QUEUE, cb=self._ingest.on_msg)
            )
        self._subs.append(
            await nc.subscribe(self._ingest.relay_subject, cb=self._ingest.on_relayed)
        )
        await nc.flush()

    def _endpoint_data(self, stats: EndpointStats) -> dict[str, int]:
        """Endpoint-specific statistics (``nats micro info``): requests being worked on now."""
        return {"inFlight": self._inflight.get(stats.name, 0), "maxInFlight": self.max_inflight}

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        """Owns every request task; leaving the group waits for them."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            ready.set_result(None)
            await self._closing.wait()

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking requests, then wait for in-flight ones (bounded by ``grace``, default
        ``shutdown_grace``); requests still running after that are cancelled and answered
        ``unavailable``. Idempotent; works after the connection was closed (``Replica.kill``)."""
        if self.stopped:
            return
        self.stopped = True
        if not self.replica.nc.is_closed:
            try:
                if self._service is not None:
                    await self._service.stop()
                for sub in self._subs:
                    await sub.unsubscribe()
                if self.replica.nc.is_connected:
                    # Once the server has the unsubscriptions, no request can still be routed
                    # here and lost when the connection closes: a queue peer gets it instead.
                    await self.replica.nc.flush(timeout=max(1, int(self.s.request_timeout)))
            except (NatsError, TimeoutError) as e:
                log.warning("service %s: unsubscribing failed: %s", SERVICE_NAME, e)
        self._closing.set()
        sup = self._supervisor
        if sup is None:
            return
        done, _ = await asyncio.wait(
            [sup], timeout=self.s.shutdown_grace if grace is None else grace
        )
        if not done:
            log.warning("service stop: cancelling requests still running after the grace period")
            sup.cancel()
            await asyncio.wait([sup])
        if not sup.cancelled() and sup.exception() is not None:
            log.error("service request tasks failed", exc_info=sup.exception())

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Raises: Unavailable when stopping (the coroutine is closed, not leaked)."""
        sup = self._supervisor
        if self._tg is None or self._closing.is_set() or sup is None or sup.done():
            coro.close()
            raise Unavailable("service is shutting down")
        self._tg.create_task(coro, name=name)

    # --- endpoints ------------------------------------------------------------------------

    def _endpoint_handler(self, name: str) -> Callable[[Request], Awaitable[None]]:
        slots = self._slots[name]

        async def handler(req: Request) -> None:
            await slots.acquire()  # backpressure on this endpoint only
            self._inflight[name] = self._inflight.get(name, 0) + 1
            try:
                self._spawn(self._serve(name, req, time.perf_counter_ns()), f"api:{name}")
            except BaseException as e:
                slots.release()
                self._inflight[name] -= 1
                if not isinstance(e, Unavailable):
                    raise
                await self._send_error(_msg(req), e)

        return handler

    async def _serve(self, name: str, req: Request, started: int) -> None:
        msg = _msg(req)
        error: GenjobsError | None = None
        reply = b""
        deadline = asyncio.timeout(self.request_deadline)
        try:
            try:
                async with deadline:
                    reply = _enc.encode(await self._handlers[name](req.data))
            except GenjobsError as e:
                error = e
            except TimeoutError:
                # Ours (the deadline) or a NATS request inside the operation: both mean "try
                # again later", not a bug.
                error = Unavailable(f"{name}: timed out")
                log.warning(
                    "api %s: timed out (%s)",
                    name,
                    f"deadline {self.request_deadline:.1f}s" if deadline.expired() else "NATS",
                )
            except asyncio.CancelledError:
                await self._send_error(msg, Unavailable("shutting down"))
                raise
            except Exception:
                log.exception("api %s: unexpected error", name)
                error = Unavailable("internal error")
            # Counted before answering, so a caller that reads the stats next sees this request.
            self._account(name, time.perf_counter_ns() - started, error)
            if error is None:
                await self._send(msg, reply)
            else:
                await self._send_error(msg, error)
        finally:
            self._slots[name].release()
            self._inflight[name] -= 1

    def _account(self, name: str, elapsed_ns: int, error: GenjobsError | None) -> None:
        """nats.micro counts what its handler sees; ours returns at once, so the task adds the
        real processing time and the errors (``nats micro stats``; service/nats/compat.py)."""
        ep = self._endpoints.get(name)
        if ep is not None:
            text = (
                None
                if error is None
                else f"{error_code(error).status}:{header_text(error.message)}"
            )
            compat.add_endpoint_stats(ep, elapsed_ns, text)

    async def _create(self, data: bytes) -> Any:
        req: CreateRequest = self._parse(data, CreateRequest)
        user_id = check_id(req.user_id, "userId")
        tenant_id = check_optional_id(req.tenant_id, "tenantId")
        job_id = check_optional_id(req.job_id, "jobId")
        try:
            handle = await self.replica.create_job(
                user_id,
                conversation_id=check_optional_id(req.conversation_id, "conversationId"),
                job_id=job_id,
                tenant_id=tenant_id,
                idempotency_key=req.idempotency_key,
                replace=req.replace,
            )
        except Conflict as e:
            # An idempotent retry answered by another replica than the owner: same job.
            existing = e.details.get("job_id")
            if req.idempotency_key is None or "owner" not in e.details or existing is None:
                raise
            rec, _ = await self.replica.reads.record(existing, user_id, tenant_id)
            if rec.idempotency_key != req.idempotency_key or rec.status is not JobStatus.RUNNING:
                raise
            return rec
        running = self.replica.registry.get(handle.job_id)
        if running is not None:
            running.mark_remote()  # its producer streams over ingest: it may be handed off
        self._ingest.watch(handle)
        return handle.record

    async def _status(self, data: bytes) -> Any:
        return await self.replica.resumes.status(*_job_ids(self._parse(data, StatusRequest)))

    async def _resume(self, data: bytes) -> Any:
        return await self.replica.resumes.resume(*_job_ids(self._parse(data, ResumeRequest)))

    async def _abort(self, data: bytes) -> Any:
        job_id, user_id, tenant_id = _job_ids(self._parse(data, AbortRequest))
        return await self.replica.aborts.abort(job_id, user_id, tenant_id, by=BY_API)

    async def _active(self, data: bytes) -> Any:
        req: ActiveRequest = self._parse(data, ActiveRequest)
        user_id = check_id(req.user_id, "userId")
        tenant_id = check_optional_id(req.tenant_id, "tenantId")
        return ActiveReply(active_job_ids=await self.replica.reads.active(user_id, tenant_id))

    async def _counts(self, data: bytes) -> Any:
        self._parse(data, CountsRequest)
        return await self.replica.reads.counts()

    async def _sync(self, data: bytes) -> Any:
        req: SyncRequest = self._parse(data, SyncRequest)
        job_id, user_id, tenant_id = _job_ids(req)
        return await self.replica.reads.sync_sent(job_id, user_id, tenant_id, req.sync_sent)

    def _parse(self, data: bytes, type_: type[Any]) -> Any:
        """Raises: TooLarge, BadRequest."""
        if len(data) > self.s.max_request_bytes:
            raise TooLarge(f"request of {len(data)} bytes exceeds {self.s.max_request_bytes}")
        return _decode(data, type_)

    async def _on_unknown(self, msg: Msg) -> None:
        """One replica (its own queue group) answers requests to endpoints that do not exist."""
        name = msg.subject[len(self.s.prefix) + len(".api.") :]
        if name in self._handlers:
            return  # the endpoint itself answers
        known = ", ".join(self._handlers)
        await self._send_error(msg, BadRequest(f"unknown endpoint {name!r}; known: {known}"))

    # --- replies --------------------------------------------------------------------------

    async def _send_error(self, msg: Msg, error: GenjobsError) -> None:
        await send_error(self.replica.nc, msg, error)

    async def _send(self, msg: Msg, data: bytes) -> None:
        await send(self.replica.nc, msg, data)


def _msg(req: Request) -> Msg:
    """The request's message: nats.micro's ``Request`` hides the reply subject we must check."""
    return compat.request_msg(req)
