"""A replica process with one reader that stops reading (item 6), driven over stdin/stdout.

    python -m tests.faults.slow_reader_child URL PREFIX JOB_ID READER_QUEUE

It starts a Replica (heartbeats, subscriptions: a real replica) and reads ``JOB_ID`` through a
LiveHub on the replica's own connection, as a replica serving an SSE gateway does. It reads the
first event, prints ``{"ready": ...}`` and then stops reading. Commands, one per line on stdin:

``report``  prints ``{"rss_kb", "buffered", "catchups"}`` (the reader is still not reading);
``resume``  reads on to the terminal event and prints what it got, then exits 0.

Its memory is measured by the parent from ``/proc/<pid>/status``; the reader's own bookkeeping
(``buffered``) says how many events it holds.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import sys
from typing import Any

from service.client.reader import LiveHub
from service.config import Settings
from service.server.replica import Replica


def rss_kb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def say(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def main(url: str, prefix: str, job_id: str, reader_queue: int) -> None:
    s = Settings(
        nats_url=url, prefix=prefix, replica_id="slow-reader-host", reader_queue=reader_queue
    )
    async with Replica(s) as replica:
        hub = LiveHub(replica.nc, s, idle_check=2.0)
        async with hub.subscribe(job_id) as reader:
            first = await anext(reader)
            say({"ready": True, "first_seq": first.seq, "rss_kb": rss_kb()})
            while True:
                cmd = (await asyncio.to_thread(sys.stdin.readline)).strip()
                if cmd == "report":
                    say(
                        {
                            "rss_kb": rss_kb(),
                            "buffered": reader.buffered,
                            "catchups": reader.catchups,
                        }
                    )
                elif cmd == "resume":
                    break
                else:
                    raise SystemExit(f"unknown command {cmd!r}")
            digest = hashlib.sha256()
            seqs = [first.seq]
            kinds = []
            async with asyncio.timeout(120):
                async for ev in reader:
                    seqs.append(ev.seq)
                    kinds.append(ev.kind)
                    digest.update(ev.seq.to_bytes(8, "big") + ev.data)
            say(
                {
                    "count": len(seqs),
                    "last_seq": seqs[-1],
                    "last_kind": kinds[-1] if kinds else None,
                    "ordered": all(a < b for a, b in itertools.pairwise(seqs)),
                    "duplicates": len(seqs) - len(set(seqs)),
                    "digest": digest.hexdigest(),
                    "catchups": reader.catchups,
                    "rss_kb": rss_kb(),
                }
            )
        await hub.close()


if __name__ == "__main__":
    url, prefix, job_id, queue = sys.argv[1:5]
    asyncio.run(main(url, prefix, job_id, int(queue)))
