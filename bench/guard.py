"""A watchdog that stops the bench's servers when the bench dies or overruns.

``bench.run`` starts nats-server and redis-server as child processes. If the bench itself is
killed (SIGKILL, a test timeout), nothing would stop them, so the bench starts this guard first
with a pipe on its stdin and writes the pid of every server it starts. The guard kills them when
its stdin reaches end of file (the bench exited, however it exited: the kernel closes the pipe)
or when the deadline passes, whichever comes first. It needs no polling of the parent.

    python -m bench.guard <deadline-seconds>
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _kill(pids: list[int]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                continue
        if not alive:
            return
        end = time.monotonic() + 3.0
        while alive and time.monotonic() < end:
            alive = [p for p in alive if _exists(p)]
            time.sleep(0.05)
        pids = alive


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def main(argv: list[str]) -> int:
    deadline = time.monotonic() + float(argv[0])
    fd = sys.stdin.fileno()
    pids: list[int] = []
    buf = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"bench guard: deadline passed, stopping {pids}", file=sys.stderr)
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break  # the bench is gone (or done): stop what it left running
        buf += chunk
        *lines, buf = buf.split(b"\n")
        pids.extend(int(x) for x in lines if x.strip())
    _kill(pids)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
