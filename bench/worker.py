"""One benchmark task in a process of its own: ``python -m bench.worker <task> <cfg> <out>``.

Every task runs in a fresh child so that memory and CPU figures belong to that task alone, one
system's leftovers (tasks, buffers, allocator state) never slow the next, and a task that
hangs or crashes costs its own figures only. The event loop is uvloop, as in production.
The child dies with the bench (``PR_SET_PDEATHSIG``); its result is a JSON file.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvloop

from .infra import die_with_parent

TASKS: dict[str, str] = {
    "ingest_genjobs": "bench.ingest:run_genjobs",
    "ingest_nats": "bench.ingest:run_nats",
    "ingest_redis": "bench.ingest:run_redis",
    "resume": "bench.resume:run",
    "abort": "bench.abort:run",
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


def main(argv: list[str]) -> int:
    die_with_parent()
    name, cfg_path, out_path = argv
    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
    cfg = json.loads(Path(cfg_path).read_text())
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
