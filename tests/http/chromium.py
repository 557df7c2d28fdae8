"""Debian's Chromium driven by Playwright's Python API, the way it works on this project's hosts.

Playwright's own browser builds are downloaded from a CDN the project's machines cannot reach,
so the tests never use them: they launch the system ``chromium`` (``just browser-deps`` installs
Debian's package) by its executable path, headless, with a fresh profile per launch. The flags
keep Chromium from reaching out on its own (updates, sync, QUIC, first-run pages), which would
only add noise to a test's network and timings.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

CHROMIUM_ENV = "GENJOBS_CHROMIUM"
"""Path of the Chromium binary; default: ``/usr/bin/chromium``, else ``chromium`` on PATH."""

FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root in a container: Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_path() -> str | None:
    """The Chromium to drive, or None when none is installed."""
    wanted = os.environ.get(CHROMIUM_ENV)
    if wanted:
        return wanted if Path(wanted).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def missing_reason() -> str:
    return (
        "Chromium is not installed here (looked at $GENJOBS_CHROMIUM, /usr/bin/chromium, PATH): "
        "run `just browser-deps` (Debian's chromium package) to run the browser tests"
    )
