"""One benchmark task in a process of its own: ``python -m bench.worker <task> <cfg> <out>``.

Every task runs in a fresh child so that memory and CPU figures belong to that task alone, one
system's leftovers (tasks, buffers, allocator state) never slow the next, and a task that
hangs or crashes costs its own figures only. The event loop is uvloop, as in production.
The child dies with the bench (``PR_SET_PDEATHSIG``); its result is a JSON file.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from bench.infra import die_with_parent

TASKS: dict[str, str] = {
    "ingest_genjobs": "bench.ingest:run_genjobs",
    "ingest_nats": "bench.ingest:run_nats",
    "ingest_redis": "bench.ingest:run_redis",
    "resume": "bench.resume:run",
    "abort": "bench.abort:run",
    "answers": "bench.answers:run",
    "jobs_memory": "bench.memory:run_jobs",
    "readers_idle": "bench.memory:run_readers_idle",
    "delivery_readers": "bench.delivery:run_readers",
    "delivery_producer": "bench.delivery:run_producer",
    "aggregator": "bench.delivery:run_aggregator",
}


def _task(name: str) -> Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]:
    module, func = TASKS[name].split(":")
    fn: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] = getattr(
        importlib.import_module(module), func
    )
    return fn


GC_TUNED_THRESHOLD = (7000, 10, 10)


def tune_gc() -> None:
    """``--gc tuned``: what a long-running asyncio service commonly does, applied to every
    system alike. The heap loaded at import is frozen (never scanned again) and gen0 collects
    after 7,000 net allocations instead of 700: with hundreds of jobs in flight, more than 700
    container objects are alive between two loop passes, so at 700 gen0 runs ~150 times a
    second and promotes them, which triggers full collections (~30 ms pauses here)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_TUNED_THRESHOLD)


def main(argv: list[str]) -> int:
    die_with_parent()
    name, cfg_path, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    cfg = json.loads(Path(cfg_path).read_text())
    if cfg.get("gc") == "tuned":
        tune_gc()
    try:
        result: dict[str, Any] = uvloop.run(_task(name)(cfg))
    except Exception as e:
        traceback.print_exc()
        Path(out_path).write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
        return 1
    Path(out_path).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
