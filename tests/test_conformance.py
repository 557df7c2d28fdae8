"""The Durable Streams conformance suite, as part of the test suite (`just conformance` alone).

Runs conformance/run.py: the pinned suite (package-lock.json) through its vitest wrapper,
against the Durable Streams app on a real nats-server. Every one of the 332 tests must pass;
docs/http.md lists deliberate exceptions (none).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO

EXPECTED_PASSED = 332


@pytest.mark.timeout(600)
def test_durable_streams_conformance_suite_passes_all_332_tests() -> None:
    if shutil.which("npx") is None or shutil.which("npm") is None:
        pytest.skip("Node.js (npm, npx) is not installed: the conformance suite cannot run")
    proc = subprocess.run(
        [sys.executable, str(REPO / "conformance" / "run.py"), "--quiet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=580,
        check=False,
    )
    out = proc.stdout + proc.stderr
    m = re.search(r"conformance: (\d+) passed, (\d+) failed, (\d+) skipped", out)
    assert m is not None, f"no summary from conformance/run.py (exit {proc.returncode}):\n{out}"
    passed, failed = int(m.group(1)), int(m.group(2))
    failures = "\n".join(line for line in out.splitlines() if "FAILED" in line)
    assert (passed, failed) == (EXPECTED_PASSED, 0), failures
    assert proc.returncode == 0, out
