"""``just bench``: genjobs and its baselines measured in one run on one machine.

    python -m bench.run                 # full run (a few minutes on 2 cores)
    python -m bench.run --smoke         # tiny sizes: proves every figure is still produced
    python -m bench.run --only ingest,abort --out /tmp/b

The bench starts its own nats-server and redis-server (guarded: they stop if the bench dies),
runs every task in a child process of its own (see :mod:`bench.worker`), turns the results
into figures (:mod:`bench.collect`), checks them against the targets and writes
``<out>/latest.json`` and ``<out>/latest.md``. Baselines always run in the same run as
genjobs, interleaved round by round, so ratios hold on a noisy shared machine.

Exit status: 0 when every figure was produced (or skipped with a reason), 1 otherwise.
Missed targets do not fail the run: they are goals, reported as met / not met.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import collect, report, streams
from bench.durable_ref import durable_ref_missing, durable_ref_versions
from bench.figures import KEYS, SPECS, evaluate, skipped
from bench.infra import (
    REPO,
    Guard,
    NatsServer,
    RedisServer,
    RedisUnavailable,
    loadavg,
    machine_info,
    redis_missing,
)

SECTIONS = (
    "ingest",
    "resume",
    "abort",
    "answers",
    "memory",
    "readers",
    "delivery",
    "aggregator",
    "sse",
    "streams",
)

FULL: dict[str, dict[str, Any]] = {
    "ingest": {"jobs": 200, "flat_duration": 3.0, "paced_duration": 4.0, "rate": 50, "rounds": 3},
    "resume": {
        "sizes": [100, 1000, 10000],
        "samples": 100,
        "blocks": 3,
        "catchup_events": 5000,
        "catchup_reads": 5,
        "redis_budget_s": 1.5,
    },
    "abort": {"jobs": 100, "blocks": 3, "rate": 20},
    "answers": {"repeat": 30},
    "jobs_memory": {"jobs": 10000, "warmup": 200},
    "readers_idle": {"readers": 2000, "settle": 5.0, "window": 10.0},
    "delivery": {"readers": 1000, "jobs": 250, "rates": [20, 50], "duration": 5.0},
    "aggregator": {"repeat": 5},
    "sse": {
        "jobs": 250,
        "clients": [2000, 10000],
        "rate": 20,
        "duration": 10.0,
        "idle_window": 10.0,
        "resume_sizes": [100, 10000],
        "resume_samples": 50,
        "resume_blocks": 3,
    },
    "streams": streams.FULL,
}

SMOKE: dict[str, dict[str, Any]] = {
    "ingest": {"jobs": 10, "flat_duration": 0.3, "paced_duration": 0.3, "rate": 50, "rounds": 1},
    "resume": {
        "sizes": [100, 1000, 10000],
        "samples": 3,
        "blocks": 3,
        "catchup_events": 100,
        "catchup_reads": 1,
        "redis_budget_s": 0.05,
    },
    "abort": {"jobs": 3, "blocks": 3, "rate": 20},
    "answers": {"repeat": 1},
    "jobs_memory": {"jobs": 150, "warmup": 10},
    "readers_idle": {"readers": 30, "settle": 0.2, "window": 0.5},
    "delivery": {"readers": 20, "jobs": 5, "rates": [20, 50], "duration": 0.4},
    "aggregator": {"repeat": 1},
    "sse": {
        "jobs": 4,
        "clients": [8, 16],
        "rate": 20,
        "duration": 0.3,
        "idle_window": 0.2,
        "resume_sizes": [100, 1000],  # fills the 10,000-event keys: smoke checks the code path
        "resume_samples": 3,
        "resume_blocks": 3,
    },
    "streams": streams.SMOKE,
}

TIMEOUTS = {"full": 300.0, "smoke": 30.0}


class Bench:
    def __init__(
        self,
        plan: dict[str, dict[str, Any]],
        smoke: bool,
        work: Path,
        gc_mode: str = "default",
        guard: Guard | None = None,
    ) -> None:
        self.plan = plan
        self.guard = guard
        self.gc_mode = gc_mode
        self.smoke = smoke
        self.work = work
        self.timeout = TIMEOUTS["smoke" if smoke else "full"]
        self.nats = NatsServer()
        self.redis: RedisServer | None = None
        self.redis_reason = redis_missing()
        self.ds_reason = durable_ref_missing()
        self.sections: dict[str, dict[str, Any]] = {}

    # --- workers ------------------------------------------------------------------------------

    def _cfg(self, params: dict[str, Any], **extra: Any) -> Path:
        cfg = {
            "nats_url": self.nats.url,
            "nats_pid": self.nats.pid,
            "redis_url": self.redis.url if self.redis else None,
            "redis_pid": self.redis.pid if self.redis else None,
            "params": params,
            "gc": self.gc_mode,
            **extra,
        }
        path = self.work / f"cfg-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(cfg))
        return path

    def _argv(self, task: str, cfg: Path) -> tuple[list[str], Path, Path]:
        out = cfg.with_name(cfg.stem.replace("cfg", task) + ".out.json")
        log = out.with_suffix(".log")
        return [sys.executable, "-m", "bench.worker", task, str(cfg), str(out)], out, log

    def _result(self, task: str, out: Path, log: Path, rc: int | None) -> dict[str, Any]:
        if out.is_file():
            result: dict[str, Any] = json.loads(out.read_text())
            if "error" not in result:
                return result
            reason = result["error"]
        else:
            reason = f"worker exited with {rc} and no result"
        tail = log.read_text().strip().splitlines()[-15:] if log.is_file() else []
        print(f"!! {task} failed: {reason}", *("   " + line for line in tail), sep="\n")
        return {"error": reason}

    def worker(self, task: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
        argv, out, log = self._argv(task, self._cfg(params, **extra))
        with log.open("w") as err:
            try:
                rc: int | None = subprocess.run(
                    argv, cwd=REPO, stdout=err, stderr=err, timeout=self.timeout
                ).returncode
            except subprocess.TimeoutExpired:
                return {"error": f"{task} timed out after {self.timeout:.0f}s"}
        return self._result(task, out, log, rc)

    # --- sections -----------------------------------------------------------------------------

    def ingest(self) -> dict[str, Any]:
        p = self.plan["ingest"]
        systems = ["genjobs", "nats"] + ([] if self.redis_reason else ["redis"])
        rounds = []
        for r in range(p["rounds"]):
            row: dict[str, Any] = {}
            order = systems[r % len(systems) :] + systems[: r % len(systems)]  # no fixed position
            for mode in ("flat", "paced"):
                for system in order:
                    params = {"jobs": p["jobs"], "mode": mode, "duration": p[f"{mode}_duration"]}
                    params["rate"] = p["rate"]
                    row[f"{mode}.{system}"] = self.worker(f"ingest_{system}", params)
                    self._say(f"ingest {mode} {system}", row[f"{mode}.{system}"], "rate")
            rounds.append(row)
        return {"rounds": rounds}

    def resume(self) -> dict[str, Any]:
        return self.worker("resume", self.plan["resume"])

    def abort(self) -> dict[str, Any]:
        return self.worker("abort", self.plan["abort"])

    def answers(self) -> dict[str, Any]:
        return self.worker("answers", self.plan["answers"])

    def memory(self) -> dict[str, Any]:
        return {"jobs": self.worker("jobs_memory", self.plan["jobs_memory"])}

    def readers(self) -> dict[str, Any]:
        return {"readers": self.worker("readers_idle", self.plan["readers_idle"])}

    def delivery(self) -> dict[str, Any]:
        """One run per rate: a light load (the fan-out path) and a heavy one (saturation)."""
        p = self.plan["delivery"]
        runs = {}
        for rate in p["rates"]:
            runs[str(rate)] = self._delivery({**p, "rate": rate})
            self._say(f"delivery {rate} tokens/s per job", runs[str(rate)], "p99")
        return {"runs": runs}

    def _delivery(self, p: dict[str, Any]) -> dict[str, Any]:
        """Readers first (they say READY on stdout), then the producer process."""
        prefix = f"bdlv{uuid.uuid4().hex[:8]}"
        argv, out, log = self._argv("delivery_readers", self._cfg(p, prefix=prefix))
        with log.open("w") as err:
            proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)
            assert proc.stdout is not None
            if not _ready(proc, self.timeout):
                proc.kill()
                proc.wait()
                return {
                    "error": self._result("delivery_readers", out, log, proc.returncode)["error"]
                }
            producer = self.worker("delivery_producer", p, prefix=prefix)
            try:
                rc = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"error": "delivery readers timed out"}
        readers = self._result("delivery_readers", out, log, rc)
        if "error" in producer or "error" in readers:
            return {"error": producer.get("error") or readers.get("error")}
        return {"readers": readers, "producer": producer}

    def aggregator(self) -> dict[str, Any]:
        return self.worker("aggregator", self.plan["aggregator"])

    def sse(self) -> dict[str, Any]:
        from bench.sse_run import SseSection

        return SseSection(self, self.ds_reason).run()

    def streams(self) -> dict[str, Any]:
        """Durable Streams: genjobs' gateway beside the reference server and rakaia."""
        assert self.guard is not None
        section = streams.Section(
            self.plan["streams"],
            self.work,
            self.guard,
            nats_url=self.nats.url,
            nats_pid=self.nats.pid,
            timeout=self.timeout,
        )
        return section.run()

    def _say(self, what: str, result: dict[str, Any], key: str) -> None:
        value = result.get(key) if key != "p99" else result.get("readers", {}).get("p99_ms_all")
        text = f"{value:,.0f}" if isinstance(value, float) else result.get("error", "")
        print(f"   {what}: {text}", flush=True)

    # --- the run ------------------------------------------------------------------------------

    def run(self, only: list[str]) -> dict[str, Any]:
        for name in only:
            t0, load0 = time.monotonic(), loadavg()
            print(f"== {name}", flush=True)
            raw = getattr(self, name)()
            self.sections[name] = {
                "raw": raw,
                "seconds": round(time.monotonic() - t0, 1),
                "load_before": load0,
                "load_after": loadavg(),
            }
        return self.figures(only)

    def figures(self, only: list[str]) -> dict[str, Any]:
        sec = {k: v["raw"] for k, v in self.sections.items()}
        figs: dict[str, Any] = {}
        rr = self.redis_reason
        if "ingest" in sec:
            figs.update(collect.ingest(sec["ingest"], self.plan["ingest"], rr))
        if "resume" in sec:
            figs.update(collect.resume(sec["resume"], self.plan["resume"], rr))
        if "abort" in sec:
            figs.update(collect.abort(sec["abort"], self.plan["abort"]))
        if "answers" in sec:
            figs.update(collect.answers(sec["answers"]))
        if "memory" in sec or "readers" in sec:
            jobs = sec.get("memory", {}).get("jobs", {"error": "not run"})
            readers = sec.get("readers", {}).get("readers", {"error": "not run"})
            mem = collect.memory(jobs, readers)
            if "memory" not in sec:
                del mem["memory.job_kb"]
            if "readers" not in sec:
                del mem["memory.reader_kb"], mem["readers.idle_cpu_pct"]
            figs.update(mem)
        if "delivery" in sec:
            figs.update(collect.delivery(sec["delivery"]))
        if "aggregator" in sec:
            figs.update(collect.aggregator(sec["aggregator"]))
        if "sse" in sec:
            figs.update(collect.sse(sec["sse"], self.plan["sse"], self.ds_reason))
        if "streams" in sec:
            figs.update(collect.streams(sec["streams"]))
        for key in KEYS:
            if key not in figs:
                figs[key] = skipped("section not selected (--only)")
            elif SPECS[key].redis and rr and figs[key]["status"] != "skipped":
                figs[key] = skipped(rr)
            elif SPECS[key].node and self.ds_reason and figs[key]["status"] != "skipped":
                figs[key] = skipped(self.ds_reason)
        return figs


def _ready(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Wait (bounded) for the child's ``READY`` line on its stdout."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(ready) and proc.stdout.readline().strip() == "READY"


def _cpu_steal() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; checks figures exist")
    ap.add_argument(
        "--out", type=Path, help="results dir (default bench/results, smoke: .../smoke)"
    )
    ap.add_argument("--only", help=f"comma-separated sections of {','.join(SECTIONS)}")
    ap.add_argument(
        "--gc",
        choices=["default", "tuned"],
        default="default",
        help="garbage collector of every worker, all systems alike: Python's defaults, or "
        "'tuned' (import-time heap frozen, gen0 threshold 7,000; see bench/README.md)",
    )
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections: {sorted(unknown)}")
    out = args.out or (REPO / "bench/results" / ("smoke" if args.smoke else ""))
    plan = SMOKE if args.smoke else FULL
    started, load0, steal0 = time.time(), loadavg(), _cpu_steal()
    if load0[0] > 0.7 * (len(os.sched_getaffinity(0))):
        print(f"warning: load average {load0} - other work is running; figures will be noisier")
    guard = Guard(deadline=1800 if not args.smoke else 120)
    with tempfile.TemporaryDirectory(prefix="genjobs-bench-") as work:
        bench = Bench(plan, args.smoke, Path(work), args.gc, guard)
        try:
            bench.nats.start()
            guard.watch(bench.nats.pid)
            if bench.redis_reason is None:
                bench.redis = RedisServer()
                try:
                    bench.redis.start()
                    guard.watch(bench.redis.pid)
                except RedisUnavailable as e:
                    bench.redis_reason, bench.redis = str(e), None
            if bench.redis_reason:
                print(f"Redis baseline skipped: {bench.redis_reason}")
            if bench.ds_reason and "sse" in only:
                print(f"Durable Streams reference skipped: {bench.ds_reason}")
            figures = bench.run(only)
        finally:
            bench.nats.stop()
            if bench.redis is not None:
                bench.redis.cleanup()
            guard.close()
    steal1 = _cpu_steal()
    steal = 100 * (steal1[0] - steal0[0]) / max(1, steal1[1] - steal0[1])
    doc = {
        "smoke": args.smoke,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "machine": {
            **machine_info(),
            "load_before": load0,
            "load_after": loadavg(),
            "cpu_steal_pct": round(steal, 1),
            "gc": args.gc,
        },
        "plan": plan,
        "redis": {"skipped": bench.redis_reason},
        "durable_ref": {"skipped": bench.ds_reason, **durable_ref_versions()},
        "sections": {
            k: {kk: vv for kk, vv in v.items() if kk != "raw"} for k, v in bench.sections.items()
        },
        "figures": figures,
        "targets": evaluate(figures),
        "raw": {k: v["raw"] for k, v in bench.sections.items()},
    }
    report.write(doc, out)
    print(report.text(doc))
    print(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")
    failed = [k for k, f in figures.items() if f["status"] == "error"]
    if failed:
        print(f"{len(failed)} figures failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
