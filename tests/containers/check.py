"""The check `just containers` runs from a container on the compose network (tests/containers/run.py).

Remote producers stream ``--jobs`` jobs over plain NATS (``genjobs.api.create``, then ingest
batches; docs/protocol.md) as the NATS user ``producer``, while every job is followed by two
NATS readers (LiveHub on two connections attached to different nodes, user ``reader``) and, with
``--http``, by an SSE reader through the gateway. The host driver (run.py) restarts a replica,
kills a NATS node, restarts the gateway, one at a time, and tells this program through the
control directory:

    <control>/streaming      written here once every job has its first batch acknowledged
    <control>/progress.json  written here: acknowledged batches per job (the driver waits until
                             every job moved on after a phase)
    <control>/phases.jsonl   written by the driver: {"phase", "start", "end"} per disruption
    <control>/done           written by the driver: producers finish their jobs now

Then every job gets its completion, and the verdict is checked: every reader saw each stored
event exactly once and in order; the stored text is the producer's acknowledged text (no token
lost or stored twice); the usage is recorded once per model call and claimed once; with
``--expect handoff`` every job completed (no remote generation interrupted), with
``--expect interrupted`` the jobs of a stopped replica ended with its "interrupted" error (the
behaviour without handoff). Figures go to stdout, the last line ``FIGURES {json}``. Exit 0 when
every check holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import itertools
import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
from nats.aio.client import Client as NATS

from service import simulate as sim
from service.client.reader import LiveHub
from service.config import Settings

from ..faults.producer import RemoteProducer, api
from ..faults.workload import (
    Follower,
    check_log,
    log_tokens,
    lost_and_duplicated,
    script,
    stored_log,
)
from .sse import SseFollower, hs256_token

NODES = ["nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"]
PRODUCER = ("producer", "producer-local-only")
READER = ("reader", "reader-local-only")


class TimedSeqs(list[int]):
    """A reader's received seqs, with the wall-clock time each one arrived (for stalls)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, seq: int) -> None:
        super().append(seq)
        self.times.append(time.time())


@dataclass
class Streamer(RemoteProducer):
    """A remote producer that streams unique text tokens until told to finish, one usage
    record every ``usage_every`` batches, then completes the job. ``acks`` keeps the wall-clock
    time of each send and of its acknowledgement (producer stalls per phase)."""

    finish: asyncio.Event = field(default_factory=asyncio.Event)
    tokens_acked: list[str] = field(default_factory=list)
    acks: list[tuple[float, float]] = field(default_factory=list)
    batches: int = 0
    completed: bool = False

    async def stream(self, usage: dict[str, Any]) -> None:
        head = script(self.job_id, 0)
        if not await self._batch({"events": head}, []):
            return
        n = 0
        while not self.finish.is_set():
            toks = [f"t{n + i}" for i in range(self.batch)]
            n += self.batch
            body: dict[str, Any] = {"events": [sim.text_delta("step_text", t + " ") for t in toks]}
            with_usage = self.usage_every and (self.batches + 1) % self.usage_every == 0
            if with_usage:
                body["usage"] = [usage]
            if not await self._batch(body, toks, usage if with_usage else None):
                return
            if self.pace:
                await asyncio.sleep(self.pace)  # the model's token latency
        reply = await self._send(
            {"firstIndex": self.index, "complete": sim.final_event(self.job_id)}
        )
        self.result = reply
        self.completed = reply is not None and bool(reply.get("ok"))

    async def _batch(
        self, body: dict[str, Any], toks: list[str], usage: dict[str, Any] | None = None
    ) -> bool:
        body = {"firstIndex": self.index, **body}
        sent = time.time()
        reply = await self._send(body)
        if reply is None:
            return False
        if reply.get("aborted"):
            self.aborted = True
            return False
        self.acks.append((sent, time.time()))
        self.index = int(reply["nextIndex"])
        self.batches += 1
        self.tokens_acked.extend(toks)
        if usage is not None:
            self.acked_usage.append(usage)
        self.acked_seq = int(reply.get("seq") or self.acked_seq)
        return True


def dump_tasks() -> None:
    """SIGUSR2: where every task of the check waits (to debug a check that hangs)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=8, file=sys.stdout)
    sys.stdout.flush()


async def connect(nodes: list[str], user: tuple[str, str] | None, first: int = 0) -> NATS:
    """A connection to the cluster, trying node ``first`` first (so hubs sit on different nodes)."""
    servers = nodes[first:] + nodes[:first]
    kw: dict[str, Any] = {}
    if user is not None:
        kw = {"user": user[0], "password": user[1]}
    return await nats.connect(
        servers=servers,
        dont_randomize=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.3,
        connect_timeout=2,
        name=f"ctest-{user[0] if user else 'operator'}",
        **kw,
    )


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


async def wait_file(path: Path, timeout: float) -> None:
    """The driver's signal (a file in the control directory), polled: no NATS involved."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(path.exists):
        if loop.time() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout:.0f}s")
        await asyncio.sleep(0.1)  # a file from another container: no event to wait on


def gaps(times: list[float], t0: float, t1: float) -> float:
    """The longest gap between consecutive times that starts in [t0, t1] (each gap counts in
    the one phase it began in)."""
    worst = 0.0
    for a, b in itertools.pairwise(times):
        if t0 <= a <= t1:
            worst = max(worst, b - a)
    return worst


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tests.containers.check")
    p.add_argument("--jobs", type=int, default=20)
    p.add_argument("--nats", default=",".join(NODES), help="the cluster's URLs, comma separated")
    p.add_argument("--control", type=Path, default=Path("/run/ctest"))
    p.add_argument("--http", default=None, help="gateway base URL (SSE readers); none: NATS only")
    p.add_argument("--jwt-secret", default="ctest-secret", help="the gateway's GENJOBS_JWT_SECRET")
    p.add_argument("--expect", choices=["handoff", "interrupted"], default="handoff")
    p.add_argument("--pace", type=float, default=0.05)
    p.add_argument("--timeout", type=float, default=600.0, help="how long to wait for `done`")
    args = p.parse_args(argv)
    nodes = args.nats.split(",")
    s = Settings(nats_url=args.nats)
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR2, dump_tasks)
    rng = random.Random(15)
    run_id = f"{int(time.time()) % 100000:05d}"
    ctl: Path = args.control

    prod_nc = await connect(nodes, PRODUCER, 0)
    hub_ncs = [await connect(nodes, READER, 1), await connect(nodes, READER, 2)]
    op_nc = await connect(nodes, None, 0)  # the operator: reads records for the verdict
    hubs = [LiveHub(nc, s) for nc in hub_ncs]
    usage = sim.usage_openai()
    streamers: list[Streamer] = []
    followers: list[Follower] = []
    readers: list[tuple[Follower, LiveHub]] = []
    sse: list[SseFollower] = []
    t_start = time.time()
    for i in range(args.jobs):
        job_id = f"ct{run_id}j{i:02d}"
        created = await api(
            prod_nc, s, "create", {"userId": "u1", "conversationId": job_id}, timeout=5
        )
        assert created["streamId"] == job_id, created
        streamers.append(
            Streamer(
                nc=prod_nc,
                s=s,
                job_id=job_id,
                events=[],
                batch=3,
                usage_every=7,
                pace=args.pace * (0.5 + rng.random()),
                timeout=2.0,
            )
        )
        for hub in hubs:
            f = Follower(job_id)
            f.seqs = TimedSeqs()
            followers.append(f)
            readers.append((f, hub))
        if args.http:
            token = hs256_token(args.jwt_secret, {"id": "u1", "exp": int(time.time()) + 3600})
            sse.append(SseFollower(args.http, job_id, token=token))

    def shout(task: asyncio.Task[Any]) -> None:
        # A failure is printed as it happens (the TaskGroup reports it only once all ended).
        if not task.cancelled() and task.exception() is not None:
            print(f"task {task.get_name()} failed: {task.exception()!r}", flush=True)

    async with asyncio.TaskGroup() as tg:

        def spawn(coro: Any, name: str) -> None:
            tg.create_task(coro, name=name).add_done_callback(shout)

        for f, hub in readers:
            spawn(f.follow(lambda hub=hub: hub), name=f"follow:{f.job_id}")
        for r in sse:
            spawn(r.follow(), name=f"sse:{r.job_id}")
        for st in streamers:
            spawn(st.stream(usage), name=f"produce:{st.job_id}")

        async def report_progress() -> None:
            first = False
            while True:
                ended = {st.job_id for st in streamers if st.result or st.gone_at is not None}
                # acknowledged batches per job; an ended job counts as moved on for good
                write_json(
                    ctl / "progress.json",
                    {st.job_id: 10**9 if st.job_id in ended else st.batches for st in streamers},
                )
                if not first and all(st.batches > 0 for st in streamers):
                    (ctl / "streaming").write_text(str(time.time()))
                    first = True
                if len(ended) == len(streamers):
                    return
                await asyncio.sleep(0.2)  # the progress file's write interval, not a wait

        async def finish_on_done() -> None:
            await wait_file(ctl / "done", args.timeout)
            for st in streamers:
                st.finish.set()

        spawn(report_progress(), name="progress")
        spawn(finish_on_done(), name="done")
    t_end = time.time()

    # --- the verdict -------------------------------------------------------------------------
    failures: list[str] = []
    phases = []
    if (ctl / "phases.jsonl").exists():
        phases = [json.loads(line) for line in (ctl / "phases.jsonl").read_text().splitlines()]
    kv = await op_nc.jetstream().key_value(s.jobs_bucket)
    events = dups = lost = lost_acked = 0
    completed = interrupted = 0
    for st in streamers:
        log = await stored_log(hubs[0], st.job_id, timeout=30)
        check_log(log)
        stored = [e.seq for e in log]
        events += len(stored)
        terminal = log[-1]
        if terminal.kind == "final":
            completed += 1
        elif "interrupted" in (terminal.data.decode(errors="replace")):
            interrupted += 1
        for f in [f for f in followers if f.job_id == st.job_id]:
            d, m = f.duplicates(), f.missing(stored)
            dups += d
            lost += m
            if f.seqs != stored:
                failures.append(
                    f"{st.job_id}: a NATS reader got {len(f.seqs)} events, {d} twice, {m} missing"
                )
        for r in [r for r in sse if r.job_id == st.job_id]:
            d, m = r.duplicates(), len({e.seq for e in log if e.kind != "usage"} - set(r.seqs))
            dups += d
            lost += m
            sent = [e.seq for e in log if e.kind != "usage"]  # SSE leaves out billing events
            if r.seqs != sent:
                failures.append(
                    f"{st.job_id}: the SSE reader got {len(r.seqs)} events, {d} twice, {m} missing"
                )
        got = log_tokens(log)
        lost_t, dup_t = lost_and_duplicated(st.tokens_acked, got)
        lost_acked += lost_t
        dups += dup_t
        if lost_t or dup_t:
            failures.append(f"{st.job_id}: {lost_t} acknowledged tokens lost, {dup_t} stored twice")
        if terminal.kind == "final" and got != st.tokens_acked:
            failures.append(f"{st.job_id}: completed but its text is not the producer's")
        entry = await kv.get(st.job_id)
        rec = msgspec.json.decode(entry.value)
        n_usage = len(rec.get("collectedUsage") or [])
        if n_usage != len(st.acked_usage) and not (
            terminal.kind != "final" and n_usage >= len(st.acked_usage)
        ):
            failures.append(
                f"{st.job_id}: {n_usage} usage records, the producer had {len(st.acked_usage)} acknowledged"
            )
        if not rec.get("usageClaimed"):
            failures.append(f"{st.job_id}: usage not claimed")
        if args.expect == "handoff" and not st.completed:
            failures.append(
                f"{st.job_id}: not completed ({terminal.kind}: {terminal.data[:120]!r}; producer {st.error or st.gone_status})"
            )
    if args.expect == "interrupted" and phases and interrupted == 0:
        failures.append("no job was interrupted although replicas were restarted")

    def stall(t0: float, t1: float) -> dict[str, float]:
        readers = max(
            [gaps(f.seqs.times, t0, t1) for f in followers]  # type: ignore[attr-defined]
            + [gaps(r.times, t0, t1) for r in sse]
            or [0.0]
        )
        producers = max([b - a for st in streamers for a, b in st.acks if t0 <= a <= t1] or [0.0])
        return {"reader_max_gap_s": round(readers, 3), "producer_max_ack_s": round(producers, 3)}

    figures: dict[str, Any] = {
        "jobs": len(streamers),
        "completed": completed,
        "interrupted": interrupted,
        "events": events,
        "nats_readers": len(followers),
        "sse_readers": len(sse),
        "reader_resumes": sum(f.resumes for f in followers) + sum(r.resumes for r in sse),
        "duplicates": dups,
        "lost": lost + lost_acked,
        "usage_records": sum(len(st.acked_usage) for st in streamers),
        "stream_s": round(t_end - t_start, 1),
        "phases": {ph["phase"]: stall(ph["start"], ph["end"]) for ph in phases},
        "steady": stall(t_start, phases[0]["start"]) if phases else stall(t_start, t_end),
    }
    for name, st in figures["phases"].items():
        print(
            f"phase {name:<24} reader stall {st['reader_max_gap_s']:6.2f}s  producer ack {st['producer_max_ack_s']:6.2f}s"
        )
    for line in failures[:40]:
        print("FAIL", line)
    print(
        f"{'ok' if not failures else 'FAILED'}: {figures['jobs']} jobs ({completed} completed, "
        f"{interrupted} interrupted), {events} events, {len(followers)} NATS + {len(sse)} SSE "
        f"readers, duplicates={dups} lost={lost + lost_acked}"
    )
    print("FIGURES " + json.dumps(figures), flush=True)
    for hub in hubs:
        await hub.close()
    for nc in [prod_nc, op_nc, *hub_ncs]:
        await nc.drain()
    return 1 if failures else 0


if __name__ == "__main__":
    faulthandler.register(signal.SIGUSR1)  # `docker kill -s USR1 <check>`: every thread's stack
    sys.exit(asyncio.run(main()))
