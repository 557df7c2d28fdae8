"""Gateway processes and Durable Streams clients for the clustered-correctness tests.

A gateway is a ``python -m service.cli gateway`` child (the genjobs HTTP gateway, the Durable
Streams protocol at ``/v1/stream``; :func:`ds_gateway`, a ``tests/procs.py`` process) with
``GENJOBS_AUTH=none``: the tests kill it with SIGKILL mid-append, so it must be a process of
its own, not an app inside the test's loop.

The clients speak the protocol over plain HTTP (aiohttp), so they only need base URLs:

- :class:`Writer` appends JSON messages ``{"w": name, "i": n}``. An *idempotent* writer sends
  ``Producer-Id/Epoch/Seq`` and retries an unanswered append, on the next gateway, with the same
  sequence until it is answered: every message must end up stored exactly once. A *plain*
  writer makes one attempt per message and moves on: an unanswered message may be stored or
  not, but never twice.
- :class:`Follower` reads live (long-poll) from one gateway and, on any error, resumes from its
  last ``Stream-Next-Offset`` on the next one: what it collects must equal a full catch-up read.
- :func:`read_all` is a catch-up read from offset ``-1`` to ``Stream-Up-To-Date``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec

from service.config import Settings
from tests.procs import GatewayProcess

JSON = "application/json"
RETRY_BACKOFF = 0.05
"""Seconds between two attempts of an unanswered append (a retry policy, not a settle wait)."""
CLIENT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


def ds_gateway(settings: Settings, *, name: str, port: int | None = None) -> GatewayProcess:
    """A gateway child for these tests: no authentication, the test's long-poll timeout,
    warnings only in its log."""
    env = {
        "GENJOBS_AUTH": "none",
        "GENJOBS_LONG_POLL_TIMEOUT": str(settings.long_poll_timeout),
        "GENJOBS_LOG_LEVEL": "warning",
    }
    return GatewayProcess(settings, name=name, port=port, env=env)


def stream_url(base: str, name: str) -> str:
    return f"{base}/v1/stream/{name}"


async def create_stream(http: aiohttp.ClientSession, base: str, name: str) -> None:
    async with http.put(stream_url(base, name), headers={"Content-Type": JSON}) as r:
        assert r.status in (200, 201), (r.status, await r.text())


async def close_stream(http: aiohttp.ClientSession, bases: list[str], name: str) -> None:
    """Close the stream (``Stream-Closed: true``, empty body) through the first gateway that
    answers: retried, since the test closes while faults may still be settling."""
    for base in itertools.islice(itertools.cycle(bases), 200):
        try:
            async with http.post(
                stream_url(base, name), headers={"Content-Type": JSON, "Stream-Closed": "true"}
            ) as r:
                if r.status in (200, 204):
                    return
        except CLIENT_ERRORS:
            pass
        await asyncio.sleep(RETRY_BACKOFF)
    raise AssertionError(f"could not close {name} through {bases}")


@dataclass
class Chunk:
    offset: str
    """The offset the read started at."""
    next_offset: str
    messages: list[Any]


async def read_all(
    http: aiohttp.ClientSession, base: str, name: str, offset: str = "-1"
) -> tuple[list[Chunk], dict[str, str]]:
    """Catch-up read from ``offset`` until ``Stream-Up-To-Date``; the chunks and the last
    response's headers."""
    chunks: list[Chunk] = []
    while True:
        async with http.get(stream_url(base, name), params={"offset": offset}) as r:
            body = await r.read()
            assert r.status == 200, (base, offset, r.status, body[:300])
            nxt = r.headers["Stream-Next-Offset"]
            chunks.append(Chunk(offset, nxt, msgspec.json.decode(body)))
            if r.headers.get("Stream-Up-To-Date") == "true":
                return chunks, dict(r.headers)
            assert nxt != offset, f"offset did not advance from {offset}"
            offset = nxt


def messages(chunks: list[Chunk]) -> list[Any]:
    return [m for c in chunks for m in c.messages]


@dataclass
class Writer:
    """Appends ``count`` messages to one stream through ``gateways`` (its first is its own;
    it moves to the next one whenever an append goes unanswered)."""

    name: str
    gateways: list[str]
    stream: str
    count: int
    idempotent: bool
    on_ack: Callable[[int], None] | None = None
    give_up: float = 60.0
    """An idempotent append retried this long without an answer fails the test."""
    acked: list[int] = field(default_factory=list)
    unacked: list[int] = field(default_factory=list)
    failed_attempts: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: dict[int, str] = field(default_factory=dict)
    """The first error body per status, for the figures."""
    _gw: int = 0

    def _next_gateway(self) -> None:
        self._gw = (self._gw + 1) % len(self.gateways)

    async def _post(self, http: aiohttp.ClientSession, i: int) -> bool:
        """One attempt; True when the server acknowledged message ``i``."""
        headers = {"Content-Type": JSON}
        if self.idempotent:
            headers.update(
                {"Producer-Id": self.name, "Producer-Epoch": "0", "Producer-Seq": str(i)}
            )
        body = msgspec.json.encode({"w": self.name, "i": i})
        url = stream_url(self.gateways[self._gw], self.stream)
        try:
            async with http.post(url, data=body, headers=headers) as r:
                text = await r.read()
                self.statuses[r.status] += 1
                if r.status not in (200, 204):
                    self.errors.setdefault(r.status, text[:300].decode(errors="replace"))
                if r.status in (200, 204):
                    return True
                if self.idempotent and r.status in (400, 403, 409):
                    raise AssertionError(
                        f"{self.name} seq {i}: {r.status} {dict(r.headers)} (producer fencing "
                        "should make a retry of the same seq a 200 or a 204)"
                    )
        except CLIENT_ERRORS:
            self.statuses[0] += 1
        self.failed_attempts += 1
        return False

    async def run(self, http: aiohttp.ClientSession) -> None:
        loop = asyncio.get_running_loop()
        for i in range(self.count):
            if not self.idempotent:
                if await self._post(http, i):
                    self._acked(i)
                else:
                    self.unacked.append(i)
                    self._next_gateway()
                continue
            started = loop.time()
            while not await self._post(http, i):
                if loop.time() - started > self.give_up:
                    raise AssertionError(f"{self.name} seq {i} unanswered for {self.give_up}s")
                self._next_gateway()
                await asyncio.sleep(RETRY_BACKOFF)
            self._acked(i)

    def _acked(self, i: int) -> None:
        self.acked.append(i)
        if self.on_ack is not None:
            self.on_ack(1)


@dataclass
class Follower:
    """A live reader (long-poll) that resumes from its last offset on the next gateway after
    any error, until it sees ``Stream-Closed``."""

    gateways: list[str]
    stream: str
    offset: str = "-1"
    got: list[Any] = field(default_factory=list)
    resumes: int = 0
    _gw: int = 0

    async def run(self, http: aiohttp.ClientSession) -> None:
        while True:
            url = stream_url(self.gateways[self._gw], self.stream)
            params = {"offset": self.offset}
            if self.offset != "-1":
                params["live"] = "long-poll"
            try:
                async with http.get(url, params=params) as r:
                    body = await r.read()
                    if r.status == 200:
                        self.got.extend(msgspec.json.decode(body))
                        self.offset = r.headers["Stream-Next-Offset"]
                    elif r.status != 204:
                        raise aiohttp.ClientResponseError(
                            r.request_info, (), status=r.status, message=body[:200].decode()
                        )
                    else:
                        self.offset = r.headers.get("Stream-Next-Offset", self.offset)
                    if r.headers.get("Stream-Closed") == "true":
                        return
                    continue
            except CLIENT_ERRORS:
                self.resumes += 1
                self._gw = (self._gw + 1) % len(self.gateways)
                await asyncio.sleep(RETRY_BACKOFF)


def check_stream(got: list[Any], writers: list[Writer]) -> dict[str, int]:
    """What every read of the stream must satisfy; returns figures.

    - each message once (no (writer, i) twice, acknowledged or not),
    - every acknowledged message present,
    - each writer's messages in the order it appended them,
    - an idempotent writer's messages all present (it retried each until answered).
    """
    keys = [(m["w"], m["i"]) for m in got]
    counts = Counter(keys)
    dupes = {k: n for k, n in counts.items() if n > 1}
    assert not dupes, f"stored twice: {sorted(dupes.items())[:10]}"
    present = set(keys)
    unacked_stored = 0
    for w in writers:
        missing = [i for i in w.acked if (w.name, i) not in present]
        assert not missing, f"{w.name}: acknowledged but not readable: {missing[:10]}"
        mine = [i for name, i in keys if name == w.name]
        assert mine == sorted(mine), f"{w.name}: out of order: {mine[:50]}"
        if w.idempotent:
            assert mine == list(range(w.count)), f"{w.name}: {len(mine)} of {w.count} stored"
        unacked_stored += sum((w.name, i) in present for i in w.unacked)
    return {
        "stored": len(got),
        "acked": sum(len(w.acked) for w in writers),
        "unacked": sum(len(w.unacked) for w in writers),
        "unacked_stored": unacked_stored,
        "failed_attempts": sum(w.failed_attempts for w in writers),
    }
