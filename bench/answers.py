"""Every request answered, in every job state: the requests of docs/protocol.md's state x subject
table ("Every request gets one answer"), sent over plain NATS, with their reply times.

One place for the enumeration: ``tests/test_answers.py`` runs :func:`enumerate_answers` and
checks each reply against the table; the bench (``python -m bench.run --only answers``) runs it
with more requests per cell and reports p50 / p99 / max reply time per state.

The world: replicas A and B answer (A owns the running jobs; a request reaches A or B at
random, so both "running here" and "running elsewhere" happen, and B's relays are counted);
D owns jobs and is killed with its heartbeat still fresh ("owner dead, not yet known"); E owns
jobs, is killed and its heartbeat removed ("owner known dead"); some of E's jobs are then taken
over with the janitor's own operation ("after takeover"). Replies are collected on a reply
subject prefix of our own, so a second answer to any request is counted.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from service import simulate as sim
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica

STATES = [
    "running",
    "complete",
    "error",
    "aborted",
    "unknown",
    "owner_dead_unnoticed",
    "owner_dead_known",
    "after_takeover",
    "invalid_id",
]
"""The job states of the table (docs/protocol.md), in its column order."""

_JOB_SUBJECTS = ["api.status", "api.resume", "api.abort", "api.sync", "abort", "ingest", "rpc"]
CELLS: list[tuple[str, str]] = [(subject, state) for subject in _JOB_SUBJECTS for state in STATES]
"""Every (subject, state) cell of the table."""

MUTATING = frozenset({"api.abort", "abort"})
"""Subjects whose request changes a running job: each such request gets a fresh job."""

INVALID_SUBJECT_IDS = ["a.b", "*", ">", "x" * 200, "\u00e9t\u00e9"]
"""Ids in the subject: what nats-server still delivers (docs/protocol.md)."""
INVALID_BODY_IDS = ["a.b", "*", "x" * 200, "a b", ""]
DELTA = sim.text_delta("s", "hi")
USER = "u1"


def answers_settings(settings: Settings) -> Settings:
    """A long lease, so a killed owner stays "not yet known dead" throughout; no periodic
    sweep, so a known-dead owner's jobs wait for their takeover; finished jobs stay."""
    return settings.with_(
        lease_ttl=60.0, sweep_interval=600.0, heartbeat_interval=0.5, completed_ttl=300.0
    )


@dataclass
class Collector:
    """Every reply to our requests, by request number (a second reply shows up here)."""

    nc: NATS
    prefix: str = field(default_factory=lambda: f"_INBOX.answers{uuid.uuid4().hex[:8]}")
    replies: dict[int, list[tuple[float, Msg]]] = field(default_factory=lambda: defaultdict(list))
    first: dict[int, asyncio.Event] = field(default_factory=dict)
    n: int = 0

    async def start(self) -> None:
        self.sub = await self.nc.subscribe(self.prefix + ".>", cb=self._on_reply)

    async def stop(self) -> None:
        await self.sub.unsubscribe()

    async def _on_reply(self, msg: Msg) -> None:
        i = int(msg.subject.rsplit(".", 1)[1])
        self.replies[i].append((time.perf_counter(), msg))
        self.first[i].set()

    async def request(self, subject: str, body: Any, timeout: float) -> tuple[Msg, float]:
        """Publish with our reply subject; the first reply and its time in ms.

        Raises:
            TimeoutError: no reply within ``timeout``.
        """
        self.n += 1
        i = self.n
        self.first[i] = asyncio.Event()
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        t0 = time.perf_counter()
        await self.nc.publish(subject, data, reply=f"{self.prefix}.{i}")
        async with asyncio.timeout(timeout):
            await self.first[i].wait()
        at, msg = self.replies[i][0]
        return msg, (at - t0) * 1000


@dataclass
class Reply:
    subject: str
    state: str
    job_id: str
    msg: Msg
    ms: float


@dataclass
class Outcome:
    replies: list[Reply]
    answers: dict[int, int]
    """Replies received per request number (exactly one each is the rule)."""
    requests: int
    relayed: int
    """Batches relayed between the two answering replicas ("running elsewhere" happened)."""

    def times(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for r in self.replies:
            out[r.state].append(r.ms)
        return out


@asynccontextmanager
async def _serving(s: Settings, rid: str) -> AsyncIterator[tuple[Replica, ServiceApi]]:
    replica = Replica(s.with_(replica_id=rid))
    await replica.start()
    api = ServiceApi(replica)
    await api.start()
    try:
        yield replica, api
    finally:
        await api.stop()
        await replica.stop()


class World:
    """The jobs of every state, and which replica each state's rpc is addressed to."""

    def __init__(self, a: Replica, d: Replica, e: Replica, s: Settings) -> None:
        self.a, self.d, self.e, self.s = a, d, e, s
        self.jobs: dict[str, list[str]] = defaultdict(list)
        self.n = 0

    async def make(self, state: str) -> str:
        """A job in ``state`` (before the owners are killed, for the dead-owner states)."""
        self.n += 1
        jid = f"{state.replace('_', '-')}-{self.n}"
        owner = {
            "owner_dead_unnoticed": self.d,
            "owner_dead_known": self.e,
            "after_takeover": self.e,
        }.get(state, self.a)
        job = await owner.create_job(USER, job_id=jid)
        await job.emit(sim.run_step("s", 0))
        await job.emit(DELTA)
        await job.record_usage(sim.usage_openai())
        await job.flush()
        if state == "complete":
            await job.complete()
        elif state == "error":
            await job.fail("boom")
        elif state == "aborted":
            await owner.ops.abort(jid, USER)
        self.jobs[state].append(jid)
        return jid

    def rpc_target(self, state: str) -> str:
        return {
            "owner_dead_unnoticed": self.d.replica_id,
            "owner_dead_known": self.e.replica_id,
        }.get(state, self.a.replica_id)

    def request(self, subject: str, state: str, job_id: str) -> tuple[str, Any]:
        p = self.s.prefix
        if subject.startswith("api."):
            body: dict[str, Any] = {"jobId": job_id, "userId": USER}
            if subject == "api.sync":
                body["syncSent"] = True
            return f"{p}.{subject}", body
        if subject == "abort":
            return f"{p}.abort.{job_id}", {"userId": USER}
        if subject == "ingest":
            return f"{p}.ingest.{job_id}", {"firstIndex": 0, "events": [DELTA]}
        assert subject == "rpc"
        return self.s.rpc_subject(self.rpc_target(state), "snapshot"), {"jobId": job_id}


def _job_for(cell: tuple[str, str], r: int, shared: dict[str, str]) -> str | None:
    """The job id of request ``r`` of ``cell``; None: a fresh job is needed."""
    subject, state = cell
    if state == "unknown":
        return f"nope-{r}"
    if state == "invalid_id":
        ids = INVALID_SUBJECT_IDS if subject in ("abort", "ingest") else INVALID_BODY_IDS
        return ids[r % len(ids)]
    if subject in MUTATING and state in ("running", "owner_dead_known", "owner_dead_unnoticed"):
        return None
    return shared[state]


async def _wait_dead(replicas: list[Replica], rid: str, timeout: float = 10.0) -> None:
    """Until every answering replica has seen ``rid``'s heartbeat removed (a KV watch)."""
    async with asyncio.timeout(timeout):
        while any(r.liveness.is_alive(rid) for r in replicas):  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # the watch offers no event to wait on


async def enumerate_answers(
    nc: NATS, settings: Settings, repeat: int, timeout: float = 15.0
) -> Outcome:
    """Send ``repeat`` requests for every cell, one at a time, collect every reply; returns
    after the replicas stopped (all their answers are sent by then)."""
    s = answers_settings(settings)
    col = Collector(nc)
    await col.start()
    replies: list[Reply] = []
    relayed = 0
    async with _serving(s, "rA") as (a, api_a), _serving(s, "rB") as (b, api_b):
        d = Replica(s.with_(replica_id="rD"))
        await d.start()
        api_d = ServiceApi(d)
        await api_d.start()
        e = Replica(s.with_(replica_id="rE"))
        await e.start()
        w = World(a, d, e, s)
        try:
            shared = {st: await w.make(st) for st in STATES if st not in ("unknown", "invalid_id")}
            plan: list[tuple[str, str, str]] = []
            for cell in CELLS:
                for r in range(repeat):
                    jid = _job_for(cell, r, shared)
                    plan.append((*cell, jid if jid is not None else await w.make(cell[1])))
            # The owners die: D unnoticed (heartbeat fresh), E known (heartbeat removed).
            await api_d.stop(grace=0)
            await d.kill()
            await e.kill()
            await a.store.replicas.purge(e.replica_id)
            await _wait_dead([a, b], e.replica_id)
            for jid in w.jobs["after_takeover"]:
                rec, rev = await a.ops.record(jid, USER, None)
                if not await a.ops.fail_orphan(rec, rev, "owner lost"):
                    raise RuntimeError(f"takeover of {jid} did not happen")

            async def one(subject: str, state: str, jid: str) -> None:
                req_subject, body = w.request(subject, state, jid)
                msg, ms = await col.request(req_subject, body, timeout)
                replies.append(Reply(subject, state, jid, msg, ms))

            for subject, state, jid in plan:
                await one(subject, state, jid)
            relayed = api_a._ingest.relayed + api_b._ingest.relayed
        finally:
            await api_d.stop(grace=0)
    await nc.flush()  # the replicas have stopped: whatever they answered has arrived
    await col.stop()
    answers = {i: len(col.replies.get(i, [])) for i in range(1, col.n + 1)}
    return Outcome(replies, answers, col.n, relayed)


async def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Bench worker task ``answers``: reply times per state, and how many requests got other
    than exactly one reply (must be 0)."""
    from bench.common import bench_settings, drop_prefix, summary_ms

    p = cfg["params"]
    s = bench_settings(cfg["nats_url"], "ans")
    nc = await nats.connect(cfg["nats_url"], name="bench-answers")
    try:
        out = await enumerate_answers(nc, s, p["repeat"])
    finally:
        await nc.close()
        await drop_prefix(s)
    return {
        "states": {k: summary_ms(v) for k, v in out.times().items()},
        "requests": out.requests,
        "not_exactly_one": sum(1 for n in out.answers.values() if n != 1),
        "relayed": out.relayed,
        "repeat": p["repeat"],
    }
