"""Fuzzing the service API and the ingest subject of a running job (docs/protocol.md, Errors, issue 5).

A seeded PRNG builds a few thousand payloads: random bytes, truncated and corrupted JSON, wrong
types, deep nesting, strings around the size limit, unknown fields, invalid ids, unknown
endpoints. Every reply must be a structured error or a valid success, and afterwards nothing that
existed before has changed and the service still works.

The payloads are built so that a *valid* mutation can only touch jobs the fuzzer created itself:
its users (``fuzzer``, ``fuzzer2``) own none of the pre-existing jobs, and every ingest batch is
either refused or a resend of indices the running job already took (so it is acknowledged and
changes nothing). Jobs the fuzzer creates are collected from the create replies.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.api import (
    AbortResult,
    ActiveReply,
    CountsReply,
    ErrorBody,
    ErrorCode,
    IngestReply,
    ResumeSnapshot,
    StatusReply,
    decode,
    decode_ingest,
)
from schemas.job import decode_record
from service import simulate as sim
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica
from tests.helpers import running_replica

SEED = 20261122
LIMIT = 16 * 1024  # max_request_bytes here, so payloads around the limit stay cheap
PER_ENDPOINT = 330  # x 7 endpoints, plus ingest and the extras below: ~3,400 requests
INGEST = 900
RAW = 250
VICTIM_USER = "victim-7f3a9c"
PROTECTED_USERS = (VICTIM_USER, "other")  # owners of the pre-existing jobs; never generated
FUZZ_USERS = ("fuzzer", "fuzzer2")
INVALID_IDS = ["a.b", "*", ">", "has space", "", "x" * 1000, "é", "$SRV.PING", "a\nb", "a>b"]
K = 12  # indices the victim job has taken before the fuzzing starts


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[tuple[Replica, Replica]]:
    async with (
        running_replica(settings.with_(replica_id="rA")) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        apis = [ServiceApi(a), ServiceApi(b)]
        for api in apis:
            await api.start()
        try:
            yield a, b
        finally:
            for api in apis:
                await api.stop()


class Fuzzer:
    def __init__(self, rng: random.Random, victim: str) -> None:
        self.rng = rng
        self.victim = victim
        self.job_ids = [victim, "done-job", "aborted-job", "nope", "fz-1", "fz-2", *INVALID_IDS]
        self.users = [*FUZZ_USERS, *INVALID_IDS]

    def scalar(self) -> Any:
        r = self.rng
        if r.random() < 0.4:  # an id-shaped value, valid or not, is the likeliest to get far
            return r.choice(self.job_ids if r.random() < 0.5 else self.users)
        return r.choice(
            [
                None,
                True,
                False,
                0,
                -1,
                1,
                99,
                2**63,
                10**30,
                1.5,
                -0.0,
                "",
                "x" * r.randrange(1, 300),
                "".join(chr(r.randrange(1, 0x2FFF)) for _ in range(r.randrange(1, 20))),
                r.choice(self.job_ids),
                r.choice(self.users),
                [],
                {},
                [1, "a", None],
                {"$ne": ""},
                self.nested(r.randrange(2, 200)),
            ]
        )

    def nested(self, depth: int) -> Any:
        value: Any = "leaf"
        for i in range(depth):
            value = [value] if i % 2 else {"k": value}
        return value

    def mutate(self, obj: Any) -> Any:
        """One structural change somewhere in ``obj`` (a JSON value)."""
        r = self.rng
        if isinstance(obj, dict) and obj and r.random() < 0.7:
            key = r.choice(list(obj))
            op = r.randrange(5)
            out = dict(obj)
            if op == 0:
                del out[key]
            elif op == 1:
                out[key] = self.scalar()
            elif op == 2:
                out[r.choice(["x", "evil", "userID", "job_id", "first_index", "__proto__"])] = (
                    self.scalar()
                )
            elif op == 3:
                out[key.lower() if key != key.lower() else key.upper()] = out.pop(key)
            else:
                out[key] = self.mutate(out[key])
            return out
        if isinstance(obj, list) and obj and r.random() < 0.7:
            out_list = list(obj)
            i = r.randrange(len(out_list))
            out_list[i] = self.mutate(out_list[i]) if r.random() < 0.5 else self.scalar()
            return out_list
        return self.scalar() if r.random() < 0.3 else obj

    def encode(self, obj: Any) -> bytes:
        """Serialise, then sometimes damage the bytes."""
        r = self.rng
        data = json.dumps(obj).encode()
        roll = r.random()
        if roll < 0.06 and data:
            return data[: r.randrange(len(data))]  # truncated
        if roll < 0.11 and data:
            i = r.randrange(len(data))
            return data[:i] + bytes([r.randrange(256)]) + data[i + 1 :]  # one byte flipped
        if roll < 0.14:
            return data + r.randbytes(r.randrange(1, 8))  # trailing garbage
        return data

    def payload(self, base: dict[str, Any]) -> bytes:
        """Mostly one or two changes, sometimes none (the base is refused or a no-op)."""
        obj: Any = base
        for _ in range(self.rng.choice([0, 1, 1, 1, 2, 2, 3])):
            obj = self.mutate(obj)
        return self.encode(obj)

    def raw(self) -> bytes:
        """Payloads that are not built from a request at all."""
        r = self.rng
        kind = r.randrange(5)
        if kind == 0:
            return r.randbytes(r.randrange(0, 200))
        if kind == 1:
            n = r.randrange(100, 5000)
            return b'{"userId":' + b"[" * n + b"]" * (n if r.random() < 0.5 else 0) + b"}"
        if kind == 2:  # strings around the size limit
            size = LIMIT - 14 + r.randrange(-40, 40)
            return json.dumps({"userId": "u" * size}).encode()
        if kind == 3:
            return json.dumps(self.scalar()).encode()
        return b" " * r.randrange(0, 5) + b"{}" * r.randrange(1, 3)


def api_bases(victim: str) -> dict[str, list[dict[str, Any]]]:
    job = [
        {"jobId": victim, "userId": "fuzzer"},
        {"jobId": "done-job", "userId": "fuzzer"},
        {"jobId": "nope", "userId": "fuzzer2"},
        {"jobId": victim, "userId": "fuzzer", "tenantId": "t1"},
    ]
    return {
        "create": [
            {"userId": "fuzzer"},
            {"userId": "fuzzer", "jobId": "fz-1", "replace": True},
            {"userId": "fuzzer", "jobId": "done-job"},
            {"userId": "fuzzer2", "idempotencyKey": "k1", "conversationId": "c1"},
            {"userId": "fuzzer", "jobId": victim, "replace": True},
        ],
        "status": job,
        "resume": job,
        "abort": job,
        "active": [{"userId": "fuzzer"}, {"userId": "fuzzer2", "tenantId": "t1"}],
        "counts": [{}],
        "sync": [{**j, "syncSent": True} for j in job],
    }


def ingest_payload(fz: Fuzzer, rng: random.Random) -> bytes:
    """A fuzzed batch that must not change the victim: a valid batch that only ends the job
    (``complete`` or ``error`` without ``firstIndex``, which the contract accepts) would end
    it legitimately, so such a mutation is drawn again."""
    while True:
        data = fz.payload(rng.choice(ingest_bases()))
        try:
            batch = decode_ingest(data)
        except (ValueError, RecursionError):
            return data
        if batch.first_index is not None or not batch.terminal:
            return data


def ingest_bases() -> list[dict[str, Any]]:
    """Resends of indices already taken (span <= 5 from index 0 or 1), or refused outright."""
    return [
        {"firstIndex": 0, "events": [sim.text_delta("s", "a"), sim.text_delta("s", "b")]},
        {"firstIndex": 1, "events": [sim.run_step("s", 0)], "usage": [sim.usage_openai()]},
        {"firstIndex": 0, "complete": sim.final_event("v")},
        {"firstIndex": 0, "error": "boom"},
        {"firstIndex": 0, "events": [], "metadata": {"userMessage": {"text": "no id"}}},
        {"firstIndex": 99, "events": [sim.text_delta("s", "gap")]},
        {"firstIndex": 0, "events": [{"event": "on_x", "data": [[[[1]]]]}]},
    ]


SUCCESS_TYPES: dict[str, Any] = {
    "status": StatusReply,
    "resume": ResumeSnapshot,
    "abort": AbortResult,
    "active": ActiveReply,
    "counts": CountsReply,
    "ingest": IngestReply,
}


def check(target: str, msg: Msg, created: set[str], codes: dict[str, int]) -> None:
    """A structured error (headers + body agree) or a success of the endpoint's type."""
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" in headers:
        body = decode(msg.data, ErrorBody)
        code = ErrorCode(body.error.code)
        assert headers["Nats-Service-Error-Code"] == str(code.status), (target, body)
        assert headers.get("Nats-Service-Error"), (target, body)
        assert body.error.message
        assert code is not ErrorCode.UNAVAILABLE, (target, body)  # nothing is down here
        codes[code.value] = codes.get(code.value, 0) + 1
        return
    codes["ok"] = codes.get("ok", 0) + 1
    if target == "create":
        rec = decode_record(msg.data)
        assert rec.user_id not in PROTECTED_USERS
        created.add(rec.stream_id)
    elif target == "sync":
        assert isinstance(json.loads(msg.data)["syncSent"], bool)
    elif target == "ingest":
        reply = decode(msg.data, IngestReply)
        assert reply.ok, reply
        assert reply.next_index == K, reply
        assert not reply.aborted
    else:
        decode(msg.data, SUCCESS_TYPES[target])


async def snapshot(replica: Replica) -> dict[str, tuple[Any, int]]:
    out = {}
    for key in await replica.store.jobs.keys():
        loaded = await replica.store.load_record(key)
        if loaded is not None:
            out[key] = (msgspec.json.encode(loaded[0]), loaded[1])
    return out


@pytest.mark.timeout(120)
async def test_fuzzed_requests_get_structured_answers_and_change_nothing(
    nc: NATS, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings.with_(max_request_bytes=LIMIT)
    rng = random.Random(SEED)
    async with served(s) as (a, b):
        victim = "victim-job"
        await (await b.create_job("other", job_id="done-job")).complete()
        await b.create_job("other", job_id="aborted-job")
        await b.ops.abort("aborted-job", "other")
        job = await a.create_job(VICTIM_USER, job_id=victim)
        first = {
            "firstIndex": 0,
            "events": [sim.run_step("s", 0)] + [sim.text_delta("s", f"t{i} ") for i in range(10)],
            "usage": [sim.usage_openai()],
        }
        reply = await nc.request(s.ingest_subject(victim), json.dumps(first).encode(), timeout=10)
        assert json.loads(reply.data)["nextIndex"] == K
        before = await snapshot(a)

        fz = Fuzzer(rng, victim)
        work: list[tuple[str, str, bytes]] = []
        for name, bases in api_bases(victim).items():
            subject = f"{s.prefix}.api.{name}"
            work += [(name, subject, fz.payload(rng.choice(bases))) for _ in range(PER_ENDPOINT)]
            work += [(name, subject, fz.raw()) for _ in range(RAW // 7)]
        ingest = s.ingest_subject(victim)
        work += [("ingest", ingest, ingest_payload(fz, rng)) for _ in range(INGEST)]
        work += [("ingest", ingest, fz.raw()) for _ in range(RAW)]
        for _ in range(20):
            name = "".join(rng.choice("abcxyz_-") for _ in range(rng.randrange(1, 12)))
            work.append(("unknown", f"{s.prefix}.api.{name}", fz.payload({"userId": "fuzzer"})))
        rng.shuffle(work)

        created: set[str] = set()
        codes: dict[str, int] = {}
        gate = asyncio.Semaphore(64)

        async def send(target: str, subject: str, data: bytes) -> None:
            async with gate:
                msg = await nc.request(subject, data, timeout=10)
            if target == "unknown":
                assert decode(msg.data, ErrorBody).error.code == "bad_request"
            else:
                check(target, msg, created, codes)

        caplog.set_level(logging.ERROR, logger="genjobs")
        await asyncio.gather(*(send(*w) for w in work))
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(work) >= 3000
        assert {"ok", "bad_request", "invalid_id", "forbidden", "not_found", "too_large"} <= set(
            codes
        ), codes

        # Nothing that existed before changed (records and their revisions) ...
        after = await snapshot(a)
        for key, value in before.items():
            assert after.get(key) == value, key
        # ... and every new record is a job the fuzzer created and was told about.
        new = set(after) - set(before)
        assert new <= created
        for key in new:
            assert decode_record(after[key][0]).user_id not in PROTECTED_USERS

        # The victim's actor is alive and the service still answers correctly.
        assert a.registry.get(victim) is not None
        assert not job.ended
        assert not job.aborted.is_set()
        status = await nc.request(
            f"{s.prefix}.api.status",
            json.dumps({"jobId": victim, "userId": VICTIM_USER}).encode(),
            timeout=10,
        )
        assert json.loads(status.data)["active"] is True
        more = {"firstIndex": K, "events": [sim.text_delta("s", "after")]}
        reply = await nc.request(ingest, json.dumps(more).encode(), timeout=10)
        assert json.loads(reply.data)["nextIndex"] == K + 1
        await job.complete()
