"""What every benchmark worker shares: settings, timestamped tokens, latency, cleanup.

Latency is measured end to end without a side channel: each token's text is the
``CLOCK_MONOTONIC`` time (ns) at which the producer created it, so a reader anywhere on this
machine (same process or not: the clock is system-wide) computes emit-to-receive latency from
the bytes it receives, also when several tokens were coalesced into one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from bench.infra import cpu_seconds, rss_bytes
from service.config import Settings
from service.simulate import created_event, run_step, text_delta

T = TypeVar("T")
A = TypeVar("A")
STEP = "step_text"
encode = msgspec.json.Encoder().encode

# A timestamp token is digits followed by a space; merged deltas hold several in one string.
_TEXT_RE = re.compile(rb'"text":"([0-9 ]+)"')


def bench_settings(nats_url: str, tag: str, **changes: Any) -> Settings:
    """Production defaults, except a prefix of our own so runs never see each other's data."""
    return Settings(nats_url=nats_url, prefix=f"b{tag}{uuid.uuid4().hex[:8]}", **changes)


def token_event() -> dict[str, Any]:
    """One text delta as LibreChat streams it, stamped with the time it was produced."""
    return text_delta(STEP, f"{time.monotonic_ns()} ")


def opening_events(job_id: str) -> list[dict[str, Any]]:
    """What precedes the tokens of a text answer: ``created`` and the text step."""
    return [created_event(job_id), run_step(STEP, 0)]


class Latency:
    """Emit-to-receive latencies (ms) of every token a reader received."""

    __slots__ = ("_enough", "_want", "emitted_ns", "ms", "tokens")

    def __init__(self) -> None:
        self.ms: list[float] = []
        self.emitted_ns: list[int] = []
        self.tokens = 0
        self._want = 0
        self._enough: asyncio.Event | None = None

    async def wait_for(self, tokens: int) -> None:
        """Until readers have received ``tokens`` tokens in all."""
        self._want, self._enough = tokens, asyncio.Event()
        if self.tokens >= tokens:
            return
        await self._enough.wait()

    def observe(self, data: bytes, now_ns: int | None = None) -> int:
        """Record the tokens found in one received payload; returns how many."""
        now = time.monotonic_ns() if now_ns is None else now_ns
        found = 0
        for m in _TEXT_RE.finditer(data):
            for stamp in m.group(1).split():
                t = int(stamp)
                self.ms.append((now - t) / 1e6)
                self.emitted_ns.append(t)
                found += 1
        self.tokens += found
        if self._enough is not None and self.tokens >= self._want:
            self._enough.set()
        return found

    def extend(self, other: Latency) -> None:
        self.ms.extend(other.ms)
        self.emitted_ns.extend(other.emitted_ns)
        self.tokens += other.tokens


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    xs = sorted(values)
    if not xs:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return float(xs[min(rank, len(xs)) - 1])


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else math.nan,
        "n": float(len(values)),
    }


def blocks(values: list[float], n: int = 3) -> list[list[float]]:
    """``values`` cut into ``n`` consecutive blocks (for a spread within one run)."""
    size = max(1, math.ceil(len(values) / n))
    return [values[i : i + size] for i in range(0, len(values), size)][:n]


async def bounded_map(
    fn: Callable[[A], Awaitable[T]], items: Iterable[A], limit: int = 64
) -> list[T]:
    """``fn`` over ``items`` with at most ``limit`` in flight (creating 10,000 jobs at once
    would mostly measure the server's request queue)."""
    sem = asyncio.Semaphore(limit)

    async def one(item: A) -> T:
        async with sem:
            return await fn(item)

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(item)) for item in items]
    return [t.result() for t in tasks]


class CpuMeter:
    """CPU used by this process (and optionally other pids) over a wall-clock window."""

    def __init__(self, other_pids: dict[str, int | None] | None = None) -> None:
        self._others = {k: v for k, v in (other_pids or {}).items() if v}
        self._t0 = time.monotonic()
        self._c0 = cpu_seconds()
        self._o0 = {k: _cpu_or_nan(p) for k, p in self._others.items()}

    def percent(self) -> dict[str, float]:
        """Percent of one core since construction: ``self`` and each named pid."""
        wall = max(1e-9, time.monotonic() - self._t0)
        out = {"self": 100 * (cpu_seconds() - self._c0) / wall}
        for k, pid in self._others.items():
            out[k] = 100 * (_cpu_or_nan(pid) - self._o0[k]) / wall
        return out


def _cpu_or_nan(pid: int) -> float:
    try:
        return cpu_seconds(pid)
    except OSError:
        return math.nan


def settled_rss() -> int:
    """RSS after a full collection, so garbage does not count as memory in use."""
    gc.collect()
    return rss_bytes()


async def drop_prefix(s: Settings) -> None:
    """Delete the stream, the cleanup queue and the buckets of a run (keeps the server small)."""
    assert s.nats_url is not None
    nc = await nats.connect(s.nats_url, name="bench-cleanup")
    try:
        await _drop(nc, s)
    finally:
        await nc.close()


async def _drop(nc: NATS, s: Settings) -> None:
    js = nc.jetstream(timeout=s.request_timeout)
    names = [s.stream_name, s.stream_name.removesuffix("_EVENTS") + "_CLEANUP"]
    names += [
        f"KV_{b}" for b in (s.jobs_bucket, s.users_bucket, s.snapshots_bucket, s.replicas_bucket)
    ]
    for name in names:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)


async def sleep_until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    delay = when - loop.time()
    await asyncio.sleep(delay if delay > 0 else 0)
