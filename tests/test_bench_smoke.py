"""The benchmark cannot rot: ``python -m bench.run --smoke`` produces every figure.

It runs the real bench (its own nats-server and redis-server, every task in a child process)
with tiny sizes, and checks that each figure of the catalogue is there and numeric, or skipped
with a reason where that is allowed (the Redis rows when redis-server is absent). How fast the
figures are is not checked: on a shared 2-core machine that would only make the suite flaky.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.ds_servers import PEERS
from bench.figures import KEYS, SPECS, TARGETS

REPO = Path(__file__).resolve().parent.parent
SMOKE_TIMEOUT = 120.0  # sections 8 and 9 start Durable Streams servers and gateways
Smoke = tuple[dict[str, Any], str, str]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Smoke:
    out = tmp_path_factory.mktemp("bench")
    if shutil.which("npm") is not None:  # the Durable Streams peers (section 8)
        from conformance.run import ensure_node_modules

        ensure_node_modules()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # on timeout the whole group goes: workers and servers too
    )
    try:
        output, _ = proc.communicate(timeout=SMOKE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"bench smoke run took over {SMOKE_TIMEOUT:.0f}s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    doc = json.loads((out / "latest.json").read_text())
    return doc, (out / "latest.md").read_text(), output


@pytest.mark.timeout(SMOKE_TIMEOUT + 20)
def test_smoke_run_produces_every_figure_numeric_or_skipped_with_reason(
    smoke_run: Smoke,
) -> None:
    doc, _, _ = smoke_run
    assert doc["smoke"] is True
    figures = doc["figures"]
    assert sorted(figures) == sorted(KEYS)
    redis_skipped = doc["redis"]["skipped"]
    ds_skipped = doc["durable_ref"]["skipped"]
    for key in KEYS:
        f = figures[key]
        if f["status"] == "skipped" and SPECS[key].node:
            # The Durable Streams reference needs node and `npm ci`; only its rows may skip.
            assert ds_skipped, f"{key} skipped though the reference ran: {f.get('reason')}"
            assert f["reason"] == ds_skipped
            assert "npm ci" in f["reason"]
        if f["status"] == "skipped" and SPECS[key].needs in PEERS:
            # A Durable Streams peer that cannot run here (no node, no `npm ci`, no bench extra)
            assert any(hint in f["reason"] for hint in ("npm", "node", "pip install")), f
            continue
        if f["status"] == "skipped":
            assert SPECS[key].redis, f"{key} skipped: {f.get('reason')}"
            assert redis_skipped, f"{key} skipped though Redis ran: {f.get('reason')}"
            assert f["reason"] == redis_skipped
            assert "bench-deps" in f["reason"]
            continue
        assert f["status"] == "ok", f"{key}: {f.get('reason')}"
        for field in ("median", "min", "max"):
            assert isinstance(f[field], float), (key, field, f)
            assert math.isfinite(f[field]), (key, field, f)
        assert f["min"] <= f["max"], (key, f)
        assert f["runs"], (key, f)


@pytest.mark.timeout(SMOKE_TIMEOUT + 20)
def test_smoke_run_reports_machine_versions_and_every_target(
    smoke_run: Smoke,
) -> None:
    doc, md, output = smoke_run
    machine = doc["machine"]
    assert machine["cpus"] >= 1
    assert len(machine["load_before"]) == 3
    assert machine["versions"]["nats-server"].startswith("nats-server")
    assert [t["target"] for t in doc["targets"]] == [t.name for t in TARGETS]
    assert {t["status"] for t in doc["targets"]} <= {"met", "not met", "skipped"}
    assert "SMOKE RUN" in md
    assert "## Targets" in md
    assert "targets (goals, not assertions)" in output
