"""Run the Durable Streams conformance suite against genjobs on a real nats-server.

    python conformance/run.py [-t PATTERN] [--json PATH]

Installs the pinned suite from package-lock.json (``npm ci``) when node_modules is missing or
older than the lock file, starts an embedded nats-server on a random port and the HTTP gateway
(``GENJOBS_AUTH=none``, Durable Streams at ``/v1/stream``) on a random port, runs the suite's 332 tests through the vitest wrapper
(conformance/conformance.test.mjs; the suite's own CLI finds no tests when installed from npm),
prints ``conformance: N passed, M failed, K skipped`` and exits 1 on any failure (2 when the
suite could not run at all).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import nats

from service.config import Settings
from service.http.app import GatewayServer, build_app
from service.http.config import HttpSettings
from service.nats.embedded import EmbeddedServer

REPO = Path(__file__).resolve().parent.parent
LONG_POLL_SECONDS = 1.5  # the suite's two offset=now long-poll tests allow 5 s in all


def ensure_node_modules() -> None:
    lock = REPO / "package-lock.json"
    marker = REPO / "node_modules" / ".package-lock.json"
    if marker.exists() and marker.stat().st_mtime >= lock.stat().st_mtime:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("conformance: npm not found (Node.js >= 18 is needed)")
    print("conformance: npm ci", flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=REPO, check=True)


def summarize(report: dict[str, object]) -> tuple[int, int, int, list[str]]:
    passed = failed = skipped = 0
    failures: list[str] = []
    for f in report.get("testResults", []):  # type: ignore[union-attr]
        for t in f.get("assertionResults", []):
            status = t.get("status")
            if status == "passed":
                passed += 1
            elif status == "failed":
                failed += 1
                failures.append(t.get("fullName") or t.get("title") or "?")
            else:
                skipped += 1
    return passed, failed, skipped, failures


async def run(pattern: str | None, json_out: Path | None, quiet: bool) -> int:
    npx = shutil.which("npx")
    if npx is None:
        print("conformance: npx not found (Node.js >= 18 is needed)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="genjobs-conformance-") as tmp:
        srv = EmbeddedServer(Path(tmp) / "nats", conf=REPO / "nats.conf", port=-1)
        srv.start()
        try:
            nc = await nats.connect(srv.url, name="conformance")
            settings = Settings(
                nats_url=srv.url,
                prefix="c" + uuid.uuid4().hex[:8],
                long_poll_timeout=LONG_POLL_SECONDS,
            )
            hs = HttpSettings(listen="127.0.0.1:0", auth="none")
            server = GatewayServer(build_app(nc, settings, hs), hs, shutdown_timeout=2.0)
            url = await server.start()
            report_path = json_out or Path(tmp) / "report.json"
            try:
                cmd = [
                    npx,
                    "vitest",
                    "run",
                    "conformance/conformance.test.mjs",
                    "--no-coverage",
                    "--reporter=json",
                    f"--outputFile={report_path}",
                ]
                if not quiet:
                    cmd.insert(-1, "--reporter=default")
                if pattern:
                    cmd += ["-t", pattern]
                env = dict(
                    os.environ,
                    CONFORMANCE_TEST_URL=url,
                    CONFORMANCE_LONG_POLL_MS=str(int(LONG_POLL_SECONDS * 1000)),
                )
                proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, env=env)
                code = await proc.wait()
            finally:
                await server.stop()
                await nc.drain()
        finally:
            srv.stop()
        if not report_path.exists():
            print(f"conformance: vitest produced no report (exit {code})", file=sys.stderr)
            return 2
        report = json.loads(report_path.read_text())
    passed, failed, skipped, failures = summarize(report)
    for name in failures:
        print(f"conformance: FAILED {name}")
    print(f"conformance: {passed} passed, {failed} failed, {skipped} skipped", flush=True)
    if failed or code != 0:
        return 1
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-t", dest="pattern", help="only tests whose name matches (vitest -t)")
    ap.add_argument("--json", type=Path, help="also keep vitest's JSON report here")
    ap.add_argument("--quiet", action="store_true", help="only the summary lines")
    args = ap.parse_args()
    ensure_node_modules()
    sys.exit(asyncio.run(run(args.pattern, args.json, args.quiet)))


if __name__ == "__main__":
    main()
