"""The workload every fault test runs, and the bookkeeping that proves nothing was lost.

A generation here is LibreChat-shaped (created, reasoning, a tool call, text) and its text
tokens are unique (``t0 t1 ...``), so loss and duplication can be counted per *emitted* event
even after the actor coalesced deltas into fewer messages: every acknowledged token must appear
exactly once, in order, in what is stored and in what every reader received.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.errors import ConnectionClosedError

from schemas.errors import JobEnded
from service import simulate as sim
from service.client.producer import EmitResult, JobHandle
from service.client.reader import LiveHub, ReaderError, ReadEvent, read_all
from service.nats.directget import DirectGetError, ReplayTimeout
from service.server.replica import Replica
from tests.helpers import aggregate, decode


def script(job_id: str, tokens: int) -> list[dict[str, Any]]:
    """created, reasoning, a tool call, a text step; then ``tokens`` unique text deltas."""
    head = list(sim.generation(job_id, tokens=0, with_tool=True, reasoning=3))
    return head + [sim.text_delta("step_text", f"t{i} ") for i in range(tokens)]


def text_tokens(content: list[Any]) -> list[str]:
    """The text tokens of aggregated content parts, in order."""
    out: list[str] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            out.extend(str(part.get("text", "")).split())
    return out


def script_tokens(events: list[dict[str, Any]]) -> list[str]:
    return text_tokens(aggregate(events))


@dataclass
class Producer:
    """Runs one job's script in bursts; each burst ends with a flush (its acknowledgement).

    ``acked`` counts script events covered by a flush that returned: those must survive any
    fault. ``give_up_after`` is the producer's own patience per flush (an LLM pipeline with a
    deadline): past it the producer raises and, through ``async with job``, fails its job.
    """

    job: JobHandle
    events: list[dict[str, Any]]
    rng: random.Random
    burst: tuple[int, int] = (1, 4)
    pace: float = 0.0
    give_up_after: float | None = None
    on_ack: Callable[[int], None] | None = None
    emitted: int = 0
    acked: int = 0
    acked_seq: int = 0
    max_flush_s: float = 0.0
    result: dict[str, Any] | None = None
    gave_up: BaseException | None = None
    ended_by_replica: JobEnded | None = None
    ended_early: bool = False
    plan: list[int] = field(init=False)
    """Burst sizes, fixed up front: each burst is at least one stored message."""

    def __post_init__(self) -> None:
        self.plan = []
        left = len(self.events)
        while left > 0:
            n = min(left, self.rng.randint(*self.burst))
            self.plan.append(n)
            left -= n

    @property
    def min_messages(self) -> int:
        """A lower bound on the job's stored messages (bursts + the terminal event)."""
        return len(self.plan) + 1

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def acked_tokens(self) -> list[str]:
        return script_tokens(self.events[: self.acked])

    async def run(self) -> None:
        try:
            await self._run()
        except TimeoutError as e:  # our own patience ran out: the job was failed by us
            self.gave_up = e
        except JobEnded as e:  # the replica ended the job under us
            self.ended_by_replica = e

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        async with self.job:
            for n in self.plan:
                for ev in self.events[self.emitted : self.emitted + n]:
                    if await self.job.emit(ev) is not EmitResult.ACCEPTED:
                        self.ended_early = True
                        return
                    self.emitted += 1
                t0 = loop.time()
                async with asyncio.timeout(self.give_up_after):
                    seq = await self.job.flush()
                self.max_flush_s = max(self.max_flush_s, loop.time() - t0)
                self.acked, self.acked_seq = self.emitted, seq
                if self.on_ack is not None:
                    self.on_ack(n)
                if self.pace:
                    await asyncio.sleep(self.pace * (0.5 + self.rng.random()))  # token latency
            self.result = await self.job.complete(sim.final_event(self.job_id))


@dataclass
class Follower:
    """A reader of one job that drops off and resumes by seq (on any hub) until the terminal.

    ``drops`` are the counts of received events after which it leaves and comes back; a hub
    closed under it (a gateway restart) is a forced drop and it resumes the same way.
    """

    job_id: str
    drops: list[int] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    terminal: ReadEvent | None = None
    resumes: int = 0
    forced: int = 0
    cut_timeouts: int = 0
    outage_errors: int = 0
    """Reads that failed because the stream did not answer (no leader, no quorum): the client
    resumes by seq after ``retry_after``, as a browser behind an SSE gateway would."""
    retry_after: float = 0.5
    max_stall: float = 0.0
    """Longest wait for the next event, across drops and resumes."""
    max_resume_stall: float = 0.0
    """Longest time from leaving (or being cut off) to the first event after resuming."""

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    async def follow(self, pick_hub: Callable[[], LiveHub]) -> None:
        loop = asyncio.get_running_loop()
        drops = sorted(set(self.drops))
        last_t = loop.time()
        left_at: float | None = None
        while self.terminal is None:
            hub = pick_hub()
            try:
                async with hub.subscribe(self.job_id, after_seq=self.last_seq) as stream:
                    async for ev in stream:
                        now = loop.time()
                        self.max_stall = max(self.max_stall, now - last_t)
                        if left_at is not None:
                            self.max_resume_stall = max(self.max_resume_stall, now - left_at)
                            left_at = None
                        last_t = now
                        self.seqs.append(ev.seq)
                        if ev.kind == "step":
                            self.steps.append(decode(ev.data))
                        if ev.terminal:
                            self.terminal = ev
                            break
                        if drops and len(self.seqs) >= drops[0]:
                            drops.pop(0)
                            break  # drop off; resume by seq
            except (ReaderError, ConnectionClosedError):  # the gateway went away under us
                self.forced += 1
            except (ReplayTimeout, DirectGetError) as e:
                if hub._closed:
                    # A replay request in flight when the gateway closed; the reader resumes
                    # elsewhere all the same.
                    self.forced += 1
                    self.cut_timeouts += 1
                elif isinstance(e, ReplayTimeout) or e.status == "503":
                    # The stream is unavailable (an election, a lost quorum): the reader API
                    # reports it (ReplayTimeout after 3 unanswered requests; a Direct Get
                    # answered 503 "no responders") and the client comes back by seq.
                    self.forced += 1
                    self.outage_errors += 1
                    await asyncio.sleep(self.retry_after)  # the client's retry backoff
                else:
                    raise
            if self.terminal is None:
                self.resumes += 1
                left_at = loop.time()

    def duplicates(self) -> int:
        return len(self.seqs) - len(set(self.seqs))

    def in_order(self) -> bool:
        return all(a < b for a, b in zip(self.seqs, self.seqs[1:], strict=False))

    def missing(self, stored: list[int]) -> int:
        return len(set(stored) - set(self.seqs))


async def stored_log(hub: LiveHub, job_id: str, timeout: float = 20.0) -> list[ReadEvent]:
    """The whole stored log of a finished job, as a fresh reader from seq 0 gets it."""
    return await read_all(hub, job_id, timeout=timeout)


def check_log(log: list[ReadEvent]) -> None:
    """Dense indices from 0, increasing seqs, exactly one terminal event and it is last."""
    assert [e.index for e in log] == list(range(len(log))), "indices not dense"
    assert all(a.seq < b.seq for a, b in itertools.pairwise(log)), "seqs not increasing"
    assert log, "empty log"
    assert log[-1].terminal, "no terminal event"
    assert sum(e.terminal for e in log) == 1, "more than one terminal event"


def log_tokens(log: list[ReadEvent]) -> list[str]:
    return text_tokens(aggregate([decode(e.data) for e in log if e.kind == "step"]))


def lost_and_duplicated(expected: list[str], got: list[str]) -> tuple[int, int]:
    """Tokens of ``expected`` absent from ``got``, and tokens present more than once."""
    present = set(got)
    return sum(t not in present for t in expected), len(got) - len(present)


class Clock:
    """Monotonic stopwatch for figures."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() - self.t0


async def replica_must_survive(replica: Replica) -> None:
    """Fail the test the moment the replica's supervisor dies: with it go every actor and the
    heartbeat, and every running job would be left without a terminal event. Cancel it when
    the work is done."""
    sup = replica._supervisor
    assert sup is not None
    try:
        await asyncio.shield(sup)
    except asyncio.CancelledError:
        if sup.done() and sup.cancelled():
            raise AssertionError(f"replica {replica.replica_id}: supervisor cancelled") from None
        raise
    except BaseException as e:
        raise AssertionError(f"replica {replica.replica_id} died inside: {e!r}") from e
    raise AssertionError(f"replica {replica.replica_id}: supervisor ended before stop()")


class Progress:
    """Acknowledged events across all producers, with an event per threshold: faults are
    injected "at 30 % of the generation" by waiting on these, not by sleeping."""

    def __init__(self, total: int, fractions: list[float]) -> None:
        self.total = total
        self.done = 0
        self.marks = [(int(total * f), asyncio.Event()) for f in fractions]

    def __call__(self, n: int) -> None:
        self.done += n
        for at, ev in self.marks:
            if self.done >= at:
                ev.set()

    async def reached(self, k: int) -> None:
        await self.marks[k][1].wait()
