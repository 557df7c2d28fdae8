"""The figures the bench reports, how each is made from the workers' results, and the targets.

Every figure has a stable key (``latest.json`` and the smoke test rely on them), a median and
a spread (min and max over the runs or blocks it was measured in), or a status ``skipped``
with the reason (the Redis rows when redis-server is absent) or ``error`` with the failure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

SIZES = (100, 1000, 10000)
DS_GENJOBS = ("genjobs", "genjobs_r3")
DS_PEERS = ("ref_memory", "ref_file", "rakaia")
DS_SYSTEMS = DS_GENJOBS + DS_PEERS
DS_LABELS = {
    "genjobs": "genjobs R1",
    "genjobs_r3": "genjobs R3 (3-node cluster)",
    "ref_memory": "reference (Node), memory",
    "ref_file": "reference (Node), file store",
    "rakaia": "rakaia-streams (Python)",
}
ANSWER_STATES = (
    "running",
    "complete",
    "error",
    "aborted",
    "unknown",
    "owner_dead_unnoticed",
    "owner_dead_known",
    "after_takeover",
    "invalid_id",
)
"""bench.answers.STATES (kept literal here: the figures import no service code)."""
DELIVERY_RATES = (20, 50)
SSE_CLIENTS = (2000, 10000)
SSE_RESUME_SIZES = (100, 10000)
SSE_SYSTEMS = (("genjobs", "genjobs gateway"), ("ds", "Durable Streams reference"))


@dataclass(frozen=True)
class Spec:
    key: str
    section: str
    label: str
    unit: str
    redis: bool = False  # skipped, not failed, when the Redis baseline cannot run
    node: bool = False  # skipped, not failed, when the Durable Streams reference cannot run
    needs: str = ""  # a Durable Streams peer: skipped, not failed, when it cannot run here


def _ingest() -> list[Spec]:
    out = []
    for mode, what in (("flat", "flat-out"), ("paced", "paced 50 tokens/s per job")):
        for system, unit, name in (
            ("genjobs", "tokens/s", "genjobs"),
            ("nats", "msgs/s", "raw nats-py publish_async"),
            ("redis", "chunks/s", "Redis-style XADD+PUBLISH"),
        ):
            sec = "1. Ingest"
            r = system == "redis"
            out.append(Spec(f"ingest.{mode}.{system}.rate", sec, f"{name}, {what}", unit, r))
            out.append(Spec(f"ingest.{mode}.{system}.p50_ms", sec, f"{name}, {what}: p50", "ms", r))
            out.append(Spec(f"ingest.{mode}.{system}.p99_ms", sec, f"{name}, {what}: p99", "ms", r))
    out.append(
        Spec("ingest.ratio.vs_nats", "1. Ingest", "genjobs / raw publish_async, flat-out", "x")
    )
    out.append(
        Spec("ingest.ratio.vs_redis", "1. Ingest", "genjobs / Redis-style, flat-out", "x", True)
    )
    return out


def _resume() -> list[Spec]:
    out = []
    for n in SIZES:
        for q in ("p50", "p99"):
            out.append(
                Spec(f"resume.genjobs.{n}.{q}_ms", "2. Resume", f"genjobs, {n:,} events: {q}", "ms")
            )
    for n in SIZES:
        for q in ("p50", "p99"):
            out.append(
                Spec(
                    f"resume.redis.{n}.{q}_ms",
                    "2. Resume",
                    f"Redis-style read-all + aggregate, {n:,} events: {q}",
                    "ms",
                    True,
                )
            )
    out.append(
        Spec("resume.genjobs.flatness", "2. Resume", "genjobs p50 10,000 / p50 100 events", "x")
    )
    return out


def _sse() -> list[Spec]:
    sec = "9. SSE fan-out"
    out = []
    for n in SSE_CLIENTS:
        for system, name in SSE_SYSTEMS:
            ds = system == "ds"
            k = f"sse.{system}.{n}"
            out += [
                Spec(f"{k}.p50_ms", sec, f"{name}, {n:,} clients: delivery p50", "ms", node=ds),
                Spec(f"{k}.p99_ms", sec, f"{name}, {n:,} clients: delivery p99", "ms", node=ds),
                Spec(
                    f"{k}.deliveries_per_s",
                    sec,
                    f"{name}, {n:,} clients: tokens delivered",
                    "deliveries/s",
                    node=ds,
                ),
                Spec(
                    f"{k}.cpu_per_1000_pct",
                    sec,
                    f"{name}, {n:,} clients: server CPU per 1,000 clients, streaming",
                    "% of a core",
                    node=ds,
                ),
                Spec(
                    f"{k}.idle_kb",
                    sec,
                    f"{name}, {n:,} clients: server RSS per idle connection",
                    "KB",
                    node=ds,
                ),
                Spec(
                    f"{k}.idle_cpu_pct",
                    sec,
                    f"{name}, {n:,} idle connections: server CPU",
                    "% of a core",
                    node=ds,
                ),
            ]
    for system, name in SSE_SYSTEMS:
        for n in SSE_RESUME_SIZES:
            for q in ("p50", "p99"):
                out.append(
                    Spec(
                        f"sse.{system}.resume.{n}.{q}_ms",
                        sec,
                        f"{name}, resume first event, {n:,} events: {q}",
                        "ms",
                        node=system == "ds",
                    )
                )
    out.append(
        Spec(
            "sse.vs_ds.2000.throughput_x",
            sec,
            "genjobs / reference, tokens delivered at 2,000 clients",
            "x",
            node=True,
        )
    )
    out.append(
        Spec(
            "sse.vs_ds.2000.p99_x",
            sec,
            "genjobs / reference, delivery p99 at 2,000 clients",
            "x",
            node=True,
        )
    )
    return out


def _streams() -> list[Spec]:
    """Section 8: the Durable Streams protocol, genjobs beside the peers (bench/streams.py).

    Ratios are genjobs' advantage (above 1: genjobs is faster), for genjobs on one
    nats-server (R1) and on a 3-node cluster with every message replicated (R3)."""
    sec = "8. Durable Streams"
    out = []

    def ratios(kind: str, what: str, how: str) -> None:
        for g in DS_GENJOBS:
            for peer in DS_PEERS:
                key = f"streams.{kind}.ratio.{g}.vs_{peer}"
                label = f"{DS_LABELS[g]} vs {DS_LABELS[peer]}: {what} ({how})"
                out.append(Spec(key, sec, label, "x", needs=peer))

    for size, size_label in (("50b", "50 B"), ("1kb", "1 KB")):
        for w in (1, 100):
            what = f"append {size_label}, {w} writer{'s' if w > 1 else ''}"
            for system in DS_SYSTEMS:
                key = f"streams.append.{size}.{w}w.{system}.rate"
                label = f"{DS_LABELS[system]}: {what}"
                out.append(Spec(key, sec, label, "appends/s", needs=system))
            ratios(f"append.{size}.{w}w", what, "rate ratio")
    for system in DS_SYSTEMS:
        label = f"{DS_LABELS[system]}: catch-up read of a stream"
        out.append(Spec(f"streams.catchup.{system}.ms", sec, label, "ms", needs=system))
    ratios("catchup", "catch-up", "time ratio")
    for system in DS_SYSTEMS:
        for q in ("p50", "p99"):
            label = f"{DS_LABELS[system]}: SSE live delivery: {q}"
            out.append(Spec(f"streams.sse.{system}.{q}_ms", sec, label, "ms", needs=system))
    for q in ("p50", "p99"):
        ratios(f"sse.{q}", f"SSE delivery {q}", "latency ratio")
    return out


CATALOGUE: list[Spec] = [
    *_ingest(),
    *_resume(),
    Spec("catchup.genjobs.ms", "3. Catch-up", "reader from seq 0 of a finished job", "ms"),
    Spec("abort.signal.p50_ms", "4. Abort", "request -> producer's abort signal: p50", "ms"),
    Spec("abort.signal.p99_ms", "4. Abort", "request -> producer's abort signal: p99", "ms"),
    Spec("abort.reply.p50_ms", "4. Abort", "request -> AbortResult reply: p50", "ms"),
    Spec("abort.reply.p99_ms", "4. Abort", "request -> AbortResult reply: p99", "ms"),
    *(
        Spec(
            f"answers.{state}.{q}_ms", "4b. Answers", f"reply, {state.replace('_', ' ')}: {q}", "ms"
        )
        for state in ANSWER_STATES
        for q in ("p50", "p99", "max")
    ),
    Spec(
        "answers.worst.p99_ms", "4b. Answers", "reply p99 of the worst state (NATS healthy)", "ms"
    ),
    Spec("answers.not_exactly_one", "4b. Answers", "requests not answered exactly once", "count"),
    Spec("memory.job_kb", "5. Memory", "RSS per running idle job", "KB"),
    Spec("memory.reader_kb", "5. Memory", "RSS per idle reader", "KB"),
    Spec(
        "readers.idle_cpu_pct", "6. Readers", "idle CPU of a process of idle readers", "% of a core"
    ),
    *(
        Spec(
            f"readers.delivery.{rate}.{q}_ms",
            "6. Readers",
            f"delivery, {rate} tokens/s per job: {q}",
            "ms",
        )
        for rate in DELIVERY_RATES
        for q in ("p50", "p99")
    ),
    Spec("aggregator.events_per_s", "7. Aggregator", "5,000-delta fixture", "events/s"),
    Spec(
        "aggregator.long_with_reads.events_per_s",
        "7. Aggregator",
        "fixture x10 with content() every 1,000",
        "events/s",
    ),
    Spec("aggregator.coalesce.events_per_s", "7. Aggregator", "coalescing", "events/s"),
    *_streams(),
    *_sse(),
]
SPECS = {s.key: s for s in CATALOGUE}
KEYS = [s.key for s in CATALOGUE]


def figure(
    runs: list[float],
    *,
    value: float | None = None,
    params: dict[str, Any] | None = None,
    n: int | None = None,
) -> dict[str, Any]:
    """A measured figure: median over ``runs`` (or ``value``), min and max as spread.

    ``n`` is how many runs the spread covers when ``runs`` holds only its extremes.
    """
    clean = [float(x) for x in runs if x is not None and not math.isnan(float(x))]
    if not clean:
        return error("no samples")
    return {
        "status": "ok",
        "median": float(value) if value is not None else statistics.median(clean),
        "min": min(clean),
        "max": max(clean),
        "runs": clean,
        "n": n or len(clean),
        "params": params or {},
    }


def skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def error(reason: str) -> dict[str, Any]:
    return {"status": "error", "reason": reason}


# --- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    keys: tuple[str, ...]
    check: Callable[[list[float]], bool]
    goal: str


def _le(limit: float) -> Callable[[list[float]], bool]:
    return lambda xs: all(x <= limit for x in xs)


def _ge(limit: float) -> Callable[[list[float]], bool]:
    return lambda xs: all(x >= limit for x in xs)


TARGETS: list[Target] = [
    Target("ingest rate", ("ingest.flat.genjobs.rate",), _ge(30_000), ">= 30,000 tokens/s"),
    Target("ingest p99, paced", ("ingest.paced.genjobs.p99_ms",), _le(50), "<= 50 ms"),
    Target("ingest p99, flat-out", ("ingest.flat.genjobs.p99_ms",), _le(50), "<= 50 ms"),
    Target("vs raw publish_async", ("ingest.ratio.vs_nats",), _ge(2), ">= 2x msgs/s"),
    Target("vs Redis-style store", ("ingest.ratio.vs_redis",), _ge(10), ">= 10x"),
    Target(
        "resume p50",
        tuple(f"resume.genjobs.{n}.p50_ms" for n in SIZES),
        _le(5),
        "<= 5 ms at 100, 1,000 and 10,000 events",
    ),
    Target(
        "resume flat",
        ("resume.genjobs.flatness",),
        _le(2),
        "p50 at 10,000 events <= 2x p50 at 100",
    ),
    Target("catch-up 5,000 events", ("catchup.genjobs.ms",), _le(100), "<= 100 ms"),
    Target("abort signal p99", ("abort.signal.p99_ms",), _le(5), "<= 5 ms"),
    Target("abort reply p99", ("abort.reply.p99_ms",), _le(20), "<= 20 ms"),
    Target(
        "every request answered",
        ("answers.worst.p99_ms",),
        _le(50),
        "p99 <= 50 ms in every state (the worst state)",
    ),
    Target("exactly one reply", ("answers.not_exactly_one",), _le(0), "0 requests"),
    Target("memory per running job", ("memory.job_kb",), _le(16), "<= 16 KB"),
    Target("2,000 idle readers", ("readers.idle_cpu_pct",), _le(30), "<= 30 % of one core"),
    Target("SSE idle memory", ("sse.genjobs.10000.idle_kb",), _le(10), "<= 10 KB per connection"),
    Target(
        "SSE idle CPU", ("sse.genjobs.10000.idle_cpu_pct",), _le(10), "<= 10 % of a core, 10,000"
    ),
    Target("SSE delivery p99", ("sse.genjobs.2000.p99_ms",), _le(50), "<= 50 ms at 2,000 clients"),
    Target(
        "SSE resume first event",
        tuple(f"sse.genjobs.resume.{n}.p50_ms" for n in SSE_RESUME_SIZES),
        _le(5),
        "p50 <= 5 ms at 100 and 10,000 events",
    ),
    Target(
        "SSE vs reference throughput",
        ("sse.vs_ds.2000.throughput_x",),
        _ge(1),
        ">= 1x at 2,000 clients",
    ),
    Target("SSE vs reference p99", ("sse.vs_ds.2000.p99_x",), _le(1), "<= 1x at 2,000 clients"),
    *(
        Target(
            f"{DS_LABELS[g]} vs {DS_LABELS[peer]}",
            tuple(
                s.key
                for s in CATALOGUE
                if s.key.startswith("streams.") and s.key.endswith(f".ratio.{g}.vs_{peer}")
            ),
            _ge(1),
            "faster on every Durable Streams figure",
        )
        for g in DS_GENJOBS
        for peer in DS_PEERS
    ),
]


def evaluate(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for t in TARGETS:
        figs = [figures.get(k, error("missing")) for k in t.keys]
        bad = [f for f in figs if f["status"] != "ok"]
        row: dict[str, Any] = {"target": t.name, "goal": t.goal, "figures": list(t.keys)}
        if bad:
            row.update(status=bad[0]["status"], reason=bad[0].get("reason"), values=None)
        else:
            values = [f["median"] for f in figs]
            row.update(status="met" if t.check(values) else "not met", values=values)
        out.append(row)
    return out
