"""``genjobs demo`` (``just run``): the whole contract, shown and checked in a few seconds.

It starts a throw-away nats-server and two replicas in this process (each with its own NATS
connection, as two processes would have), then:

1. replica A runs a simulated LLM generation (reasoning, a tool call, text) while a reader
   watches it live, drops its connection a third of the way in and resumes by seq;
   a second reader opens the job mid-way from the resume snapshot, as a new browser tab would;
2. a second job on replica A is aborted through ``genjobs.api.abort`` from replica B's
   connection, and its usage is claimed exactly once;
3. every claim is checked against an independent read of the stream (✔/✘), exit 1 if any fails.

Nothing here is demo-only machinery: the producer is the in-process API, the readers are
:class:`~service.client.reader.LiveHub`, the requests go over NATS to the micro service.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import nats
from nats.aio.client import Client as NATS

from schemas.content.aggregator import ContentAggregator
from service import simulate
from service.cli.common import (
    EXIT_FAILED,
    EXIT_NO_NATS,
    EXIT_OK,
    CliError,
    api_request,
    run_async,
)
from service.cli.demo_http import with_browser_view
from service.client.producer import EmitResult, JobHandle
from service.client.reader import LiveHub, ReadEvent, read_all
from service.config import Settings
from service.nats.embedded import EmbeddedServer, EmbeddedServerError
from service.server.replica import Replica

USER = "demo-user"
WIDTH = 78
INDENT = "      "


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def heading(number: int, title: str) -> None:
    say()
    say(f"{number}. {title}")
    say("─" * (len(title) + 3))


def row(label: str, text: str) -> None:
    say(f"  {label:<10}{text}")


def aggregate(events: list[dict[str, Any]]) -> list[Any]:
    agg = ContentAggregator()
    for ev in events:
        if isinstance(ev.get("event"), str):
            agg.apply_event(ev)
    return agg.content_filtered()


class Typewriter:
    """Renders a reader's events as a chat UI would: text flows, tools get one line."""

    def __init__(self) -> None:
        self.col = 0
        self.mode = ""

    def _newline(self) -> None:
        if self.col:
            sys.stdout.write("\n")
            self.col = 0

    def _words(self, text: str) -> None:
        for word in text.split(" "):
            if not word:
                continue
            if self.col == 0:
                sys.stdout.write(INDENT)
                self.col = len(INDENT)
            elif self.col + 1 + len(word) > WIDTH:
                sys.stdout.write("\n" + INDENT)
                self.col = len(INDENT)
            else:
                sys.stdout.write(" ")
                self.col += 1
            sys.stdout.write(word)
            self.col += len(word)

    def event(self, ev: ReadEvent) -> None:
        payload = ev.event or {}
        name = payload.get("event")
        data = payload.get("data") or {}
        if name in ("on_message_delta", "on_reasoning_delta"):
            mode = "text" if name == "on_message_delta" else "think"
            if mode != self.mode:
                self._newline()
                if mode == "think":
                    self._words("(thinking)")
                self.mode = mode
            for part in data.get("delta", {}).get("content", []):
                self._words(str(part.get("text") or part.get("think") or ""))
        elif name == "on_run_step_completed":
            call = data.get("result", {}).get("tool_call", {})
            self._newline()
            self._words(f"[tool {call.get('name')}({call.get('args')}) → {call.get('output')}]")
            self._newline()
            self.mode = ""
        sys.stdout.flush()

    def note(self, label: str, text: str) -> None:
        self._newline()
        self.mode = ""
        row(label, text)


@dataclass
class Checks:
    results: list[tuple[bool, str]] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> bool:
        self.results.append((ok, text))
        return ok

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for ok, _ in self.results)


@dataclass
class Demo:
    url: str
    s: Settings
    a: Replica
    b: Replica
    tokens: int
    delay: float
    checks: Checks = field(default_factory=Checks)

    async def reader_connection(self) -> NATS:
        return await nats.connect(self.url, name="demo-reader", max_reconnect_attempts=0)

    # --- 2. a generation, a reader that drops off, a late tab --------------------------------

    async def produce(
        self, job: JobHandle, total: int, marks: dict[int, asyncio.Event]
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        emitted: list[dict[str, Any]] = []
        async with job:
            for ev in simulate.generation(job.job_id, tokens=self.tokens, reasoning=8):
                await job.emit(ev)
                emitted.append(ev)
                if len(emitted) in marks:
                    marks[len(emitted)].set()
                if ev.get("event") in ("on_message_delta", "on_reasoning_delta"):
                    await asyncio.sleep(self.delay)
            await job.record_usage(simulate.usage_openai(prompt=812, completion=self.tokens))
            final = simulate.final_event(job.job_id, aggregate(emitted))
            result = await job.complete(final)
        emitted.append(final)
        return emitted, result

    async def watch_with_drop(
        self, job_id: str, drop_after: int, come_back: asyncio.Event
    ) -> list[ReadEvent]:
        """Read live; lose the connection after ``drop_after`` events; come back by seq."""
        got: list[ReadEvent] = []
        tw = Typewriter()
        nc = await self.reader_connection()
        async with LiveHub(nc, self.s) as hub, hub.subscribe(job_id, after_seq=0) as reader:
            async for ev in reader:
                got.append(ev)
                tw.event(ev)
                if len(got) >= drop_after:
                    break
        await nc.close()  # the network goes away: the reader keeps nothing but a number
        last = got[-1].seq
        tw.note("reader", f"✂ connection lost after seq {last}; the producer keeps going…")
        await come_back.wait()
        nc = await self.reader_connection()
        tw.note("reader", f"reconnected: reading again after seq {last}")
        async with LiveHub(nc, self.s) as hub, hub.subscribe(job_id, after_seq=last) as reader:
            async for ev in reader:
                got.append(ev)
                tw.event(ev)
        tw.note("reader", f"final event at seq {got[-1].seq}: the reader stops")
        await nc.close()
        return got

    async def late_tab(
        self, job_id: str, opened: asyncio.Event
    ) -> tuple[dict[str, Any], list[int]]:
        """A second client opens the job mid-way: snapshot first, then everything after it."""
        await opened.wait()
        nc = await self.reader_connection()
        try:
            ok, snap = await api_request(
                nc, self.s, "resume", {"jobId": job_id, "userId": USER}, timeout=10
            )
            if not ok:
                raise RuntimeError(f"resume failed: {snap}")
            async with LiveHub(nc, self.s) as hub, hub.subscribe(job_id, snap["seq"]) as reader:
                seqs = [ev.seq async for ev in reader]
        finally:
            await nc.close()
        return snap, seqs

    async def generation_with_reader(self) -> None:
        heading(2, "A generation on replica A, a reader that drops off and comes back")
        job_id = "demo-chat-1"
        total = sum(1 for _ in simulate.generation(job_id, tokens=self.tokens, reasoning=8))
        marks = {n: asyncio.Event() for n in (total // 2, (2 * total) // 3)}
        row(
            "producer",
            f"job {job_id} on replica A: reasoning, a web_search tool call, {self.tokens} text "
            f"tokens {self.delay * 1000:g} ms apart",
        )
        row("reader", "its own connection, reading from seq 0 and rendering live:")
        job = await self.a.create_job(USER, job_id=job_id)
        t0 = time.monotonic()
        async with asyncio.TaskGroup() as tg:
            producing = tg.create_task(self.produce(job, total, marks))
            reading = tg.create_task(
                self.watch_with_drop(job_id, total // 3, marks[(2 * total) // 3])
            )
            tab = tg.create_task(self.late_tab(job_id, marks[total // 2]))
        emitted, result = producing.result()
        got = reading.result()
        snap, tab_seqs = tab.result()
        took = time.monotonic() - t0

        # The truth, read independently from the stream after the fact.
        nc = await self.reader_connection()
        async with LiveHub(nc, self.s) as hub:
            stored = await read_all(hub, job_id, 0, timeout=20)
        ok, status = await api_request(nc, self.s, "status", {"jobId": job_id, "userId": USER})
        await nc.close()

        stored_seqs = [e.seq for e in stored]
        got_seqs = [e.seq for e in got]
        dups = len(got_seqs) - len(set(got_seqs))
        gaps = len(set(stored_seqs) - set(got_seqs))
        merged = len(emitted) - len(stored)
        row(
            "late tab",
            f"opened mid-way: snapshot at seq {snap['seq']} "
            f"({len(snap['aggregatedContent'])} content parts), then {len(tab_seqs)} live events",
        )
        row(
            "done",
            f"{took:.1f} s; producer emitted {len(emitted)} events → {len(stored)} stored messages",
        )
        if merged:
            row("", f"({merged} text deltas were merged while a publish was in flight:")
            row("", " fewer messages, the same content)")
        usage = result.get("collectedUsage") or []
        row("usage", f"reported once at completion: {_usage(usage)}")

        c = self.checks
        c.check(
            got_seqs == stored_seqs,
            f"reader got every stored event exactly once, in order: {len(got_seqs)} of "
            f"{len(stored_seqs)}, duplicates {dups}, gaps {gaps} (across a reconnect)",
        )
        c.check(
            [e.index for e in stored] == list(range(len(stored))) and stored[-1].kind == "final",
            f"the stream holds indices 0..{len(stored) - 1} and ends with its final event",
        )
        reader_content = aggregate([e.event or {} for e in got])
        c.check(
            reader_content == aggregate(emitted),
            "the reader's content equals the aggregate of what the producer emitted",
        )
        c.check(
            ok and status.get("aggregatedContent") == reader_content,
            "genjobs.api.status returns that same content (server-side aggregate)",
        )
        before = [e.event or {} for e in stored if e.seq <= snap["seq"]]
        c.check(
            snap["aggregatedContent"] == aggregate(before)
            and tab_seqs == [s for s in stored_seqs if s > snap["seq"]],
            f"late tab: snapshot = events up to seq {snap['seq']}, then each later event once",
        )

    # --- 3. abort from the other replica ---------------------------------------------------

    async def stream_until_aborted(self, job: JobHandle, started: asyncio.Event) -> int:
        """A producer that streams until told to stop; returns how many tokens it emitted."""
        sent = 0
        async with job:
            await job.record_usage(simulate.usage_openai(prompt=640, completion=0, cached=128))
            for ev in simulate.generation(job.job_id, tokens=100_000, reasoning=0, with_tool=False):
                if job.aborted.is_set():
                    break
                if await job.emit(ev) is EmitResult.ENDED:
                    break
                sent += 1
                if sent == 60:
                    started.set()
                await asyncio.sleep(self.delay)
        return sent

    async def abort_from_b(self) -> None:
        heading(3, "Abort a generation on replica A from replica B")
        job_id = "demo-chat-2"
        job = await self.a.create_job(USER, job_id=job_id)
        started = asyncio.Event()
        row("producer", f"job {job_id} streaming on replica A (owner {self.a.replica_id})")
        async with asyncio.TaskGroup() as tg:
            producing = tg.create_task(self.stream_until_aborted(job, started))
            await started.wait()
            body = {"jobId": job_id, "userId": USER}
            row("replica B", f"request genjobs.api.abort {msgspec.json.encode(body).decode()}")
            ok, result = await api_request(self.b.nc, self.s, "abort", body)
            ok2, again = await api_request(self.b.nc, self.s, "abort", body)
        sent = producing.result()
        final = (result or {}).get("finalEvent") or {}
        usage = result.get("collectedUsage") or []
        row(
            "result",
            f"success={str(result.get('success')).lower()}, "
            f"text {len(result.get('text') or '')} chars, usage {_usage(usage)}",
        )
        row("producer", f"saw the abort on A after {sent} events and stopped")
        row(
            "again",
            f"a second abort: success={str(again.get('success')).lower()}, "
            f"usageAlreadyClaimed={str(again.get('usageAlreadyClaimed')).lower()}",
        )

        nc = await self.reader_connection()
        async with LiveHub(nc, self.s) as hub:
            stored = await read_all(hub, job_id, 0, timeout=20)
        await nc.close()
        c = self.checks
        c.check(
            ok and result.get("success") is True and final.get("aborted") is True,
            "abort from B succeeded and produced LibreChat's abort final (aborted: true)",
        )
        c.check(
            stored[-1].event == final and sum(e.terminal for e in stored) == 1,
            "that final event is the job's one terminal event in the stream",
        )
        c.check(
            bool(result.get("text"))
            and result.get("content") == aggregate([e.event or {} for e in stored]),
            "the AbortResult carries the content generated so far",
        )
        c.check(
            len(usage) == 1
            and ok2
            and again.get("usageAlreadyClaimed") is True
            and not again.get("collectedUsage"),
            "usage returned by the first abort only (billed exactly once)",
        )


def _usage(records: list[dict[str, Any]]) -> str:
    if not records:
        return "none"
    return "; ".join(
        f"{u.get('model')} {u.get('input_tokens')} in / {u.get('output_tokens')} out"
        for u in records
    )


@contextlib.asynccontextmanager
async def _replicas(url: str) -> AsyncIterator[tuple[Replica, Replica]]:
    from service.server.api import ServiceApi  # late: the other commands start fast

    base = Settings(nats_url=url, shutdown_grace=3.0)
    a = Replica(base.with_(replica_id="replica-A"))
    b = Replica(base.with_(replica_id="replica-B"))
    async with a, b:
        api_a, api_b = ServiceApi(a), ServiceApi(b)
        await api_a.start()
        await api_b.start()
        try:
            yield a, b
        finally:
            await api_a.stop()
            await api_b.stop()


async def _run(args: argparse.Namespace, url: str, data_dir: str) -> bool:
    heading(1, "Start")
    row("NATS", f"nats-server {url} (embedded; JetStream data in {data_dir})")
    async with _replicas(url) as (a, b):
        row("replica A", f"{a.replica_id}: own NATS connection, serves genjobs.api.*")
        row("replica B", f"{b.replica_id}: own NATS connection, serves genjobs.api.*")
        if not args.http:
            return await _tour(args, url, a, b)
        return await with_browser_view(a, b, args.http, USER, lambda: _tour(args, url, a, b))


async def _tour(args: argparse.Namespace, url: str, a: Replica, b: Replica) -> bool:
    demo = Demo(url, a.s, a, b, max(30, args.tokens), max(0.0, args.token_delay))
    await demo.generation_with_reader()
    await demo.abort_from_b()
    heading(4, "Checks")
    say("\n".join(f"  {'✔' if ok else '✘'} {text}" for ok, text in demo.checks.results))
    return demo.checks.passed


def main(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every check passes.

    Raises:
        CliError: the embedded nats-server cannot start (exit 3).
    """
    # Quiet: a newcomer reads the demo's own lines; only real trouble is logged (stderr).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    say("genjobs demo: resumable LLM generation jobs on NATS JetStream")
    started = time.monotonic()
    data_dir = tempfile.mkdtemp(prefix="genjobs-demo-")
    server = EmbeddedServer(data_dir, port=-1)
    try:
        try:
            url = server.start()
        except EmbeddedServerError as e:
            raise CliError(f"cannot start nats-server: {e}", EXIT_NO_NATS) from e
        passed = run_async(lambda: _run(args, url, data_dir), not args.no_uvloop)
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    say()
    if passed:
        say(f"All checks passed in {time.monotonic() - started:.1f} s.")
        say("Next: `just test`, then README.md (run a replica: `genjobs serve`).")
        return EXIT_OK
    say("Some checks FAILED (✘ above).")
    return EXIT_FAILED
