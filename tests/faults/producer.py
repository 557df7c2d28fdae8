"""A remote producer speaking plain NATS (docs/protocol.md, remote producers), and one API
request, for the fault and container tests. The processes they talk to: ``tests/procs.py``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats.errors
from nats.aio.client import Client as NATS

from service.config import Settings
from service.nats.directget import client_for

# --- a remote producer (docs/protocol.md, remote producers), in plain NATS requests ----------------------------------


class ServiceError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


async def api(
    nc: NATS, s: Settings, endpoint: str, body: dict[str, Any], timeout: float = 5.0
) -> Any:
    """One request to ``<prefix>.api.<endpoint>``; raises ServiceError on an error reply."""
    reply = await nc.request(
        f"{s.prefix}.api.{endpoint}", msgspec.json.encode(body), timeout=timeout
    )
    data = msgspec.json.decode(reply.data) if reply.data else None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        raise ServiceError(str(data["error"].get("code")), str(data["error"].get("message")))
    return data


@dataclass
class RemoteProducer:
    """Sends a job's script as ingest batches of ``batch`` events; a batch is acknowledged when
    the owner replies (it is durable then). When a batch goes unanswered it resends the same
    batch (idempotent by index) and asks ``api.status`` whether the job still runs: a job that
    is no longer running is *gone*, and the producer stops."""

    nc: NATS
    s: Settings
    job_id: str
    events: list[dict[str, Any]]
    user_id: str = "u1"
    batch: int = 3
    usage_every: int = 0
    """Add one usage record (one model call) to every n-th batch."""
    pace: float = 0.0
    timeout: float = 1.0
    on_ack: Callable[[int], None] | None = None
    index: int = 0  # next producer index (events + usage entries)
    sent_events: int = 0
    sent_usage: int = 0
    acked_events: int = 0
    acked_usage: list[dict[str, Any]] = field(default_factory=list)
    acked_seq: int = 0
    result: dict[str, Any] | None = None
    gone_status: str | None = None
    gone_at: float | None = None
    error: str | None = None
    unanswered: int = 0
    aborted: bool = False

    async def _send(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """One batch until answered: None once the job is gone or an error was answered."""
        while True:
            try:
                reply = await self.nc.request(
                    self.s.ingest_subject(self.job_id),
                    msgspec.json.encode(body),
                    timeout=self.timeout,
                )
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as e:
                self.unanswered += 1
                if await self._job_ended():
                    return None
                if isinstance(e, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.2)  # retry backoff: nobody listens right now
                continue
            data: dict[str, Any] = msgspec.json.decode(reply.data)
            if isinstance(data.get("error"), dict):
                code = data["error"].get("code")
                self.error = f"{code}: {data['error'].get('message')}"
                if code in ("unavailable", "conflict"):
                    # The owner is not reachable, or the job ended or lost its owner: ask
                    # what became of it; retry while it still runs (docs/protocol.md).
                    self.unanswered += 1
                    if await self._job_ended():
                        return None
                    await asyncio.sleep(0.2)  # retry backoff
                    continue
                self.gone_at = asyncio.get_running_loop().time()
                return None
            return data

    async def _job_ended(self) -> bool:
        """Ask any replica (``api.status``); with none answering, read the job's last stored
        event: a terminal one means the job is over."""
        try:
            st = await api(
                self.nc,
                self.s,
                "status",
                {"jobId": self.job_id, "userId": self.user_id},
                timeout=self.timeout,
            )
            status = str(st.get("status"))
            ended = not st.get("active") and status != "running"
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
            last = await client_for(self.nc).last_msg(
                self.s.stream_name, self.s.events_subject(self.job_id), self.timeout
            )
            kind = last.headers.get("Genjobs-Kind") if last is not None else None
            status = str(kind)
            ended = kind in ("final", "error")
        if ended:
            self.gone_status = status
            self.gone_at = asyncio.get_running_loop().time()
        return ended

    async def run(self, usage: dict[str, Any] | None = None) -> None:
        n_batch = 0
        i = 0
        while i < len(self.events):
            chunk = self.events[i : i + self.batch]
            body: dict[str, Any] = {"firstIndex": self.index, "events": chunk}
            n_batch += 1
            with_usage = usage is not None and self.usage_every and n_batch % self.usage_every == 0
            if with_usage:
                body["usage"] = [usage]
                self.sent_usage += 1
            self.sent_events = i + len(chunk)
            reply = await self._send(body)
            if reply is None:
                return
            if reply.get("aborted"):
                self.aborted = True
                return
            self.index = int(reply["nextIndex"])
            i += len(chunk)
            self.acked_events = i
            if self.on_ack is not None:
                self.on_ack(len(chunk))
            if with_usage:
                assert usage is not None
                self.acked_usage.append(usage)
            self.acked_seq = int(reply.get("seq") or self.acked_seq)
            if self.pace:
                await asyncio.sleep(self.pace)  # the model's token latency
        from service import simulate as sim

        reply = await self._send(
            {"firstIndex": self.index, "complete": sim.final_event(self.job_id)}
        )
        self.result = reply
