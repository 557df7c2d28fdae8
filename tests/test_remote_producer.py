"""A remote producer in the style of any language (docs/protocol.md, remote producers): it knows NATS and JSON, nothing of
genjobs. The producer functions below use only ``nats``, ``json`` and ``asyncio``; the tests use
genjobs to check what they did (issue 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import nats
from nats.aio.client import Client as NATS

from service.client.reader import LiveHub, read_all
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica
from tests.helpers import aggregate, decode, running_replica

# --- the remote producer: nats + json only ---------------------------------------------------

USER = "remote-user"
USAGE_CALL_1 = {
    "model": "gpt-4o",
    "input_tokens": 100,
    "output_tokens": 50,
    "total_tokens": 150,
    "input_token_details": {"cache_read": 20},
}
USAGE_CALL_2 = {
    "model": "claude-sonnet-4",
    "input_tokens": 80,
    "output_tokens": 20,
    "cache_read_input_tokens": 30,
}


def text_delta(step_id: str, text: str) -> dict[str, Any]:
    return {
        "event": "on_message_delta",
        "data": {"id": step_id, "delta": {"content": [{"type": "text", "text": text}]}},
    }


def run_step(step_id: str) -> dict[str, Any]:
    return {
        "event": "on_run_step",
        "data": {
            "id": step_id,
            "index": 0,
            "stepIndex": 0,
            "type": "message_creation",
            "stepDetails": {"type": "message_creation", "message_creation": {"message_id": "m1"}},
        },
    }


async def request(nc: NATS, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    """A request; an error reply (micro headers) comes back as ``{"error": {...}, "status": n}``."""
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=10)
    reply: dict[str, Any] = json.loads(msg.data)
    if msg.headers and "Nats-Service-Error-Code" in msg.headers:
        reply["status"] = int(msg.headers["Nats-Service-Error-Code"])
    return reply


async def remote_producer(url: str, prefix: str) -> dict[str, Any]:
    """Create a job, stream it in batches (resending two of them), record usage and metadata,
    complete it; returns what it sent and every reply."""
    nc = await nats.connect(url)
    try:
        job = await request(nc, f"{prefix}.api.create", {"userId": USER, "conversationId": "rc-1"})
        job_id = job["streamId"]
        ingest = f"{prefix}.ingest.{job_id}"
        created = {
            "created": True,
            "message": {"messageId": "um-1", "conversationId": job_id, "text": "Say hello"},
            "streamId": job_id,
        }
        first = {
            "firstIndex": 0,
            "metadata": {"responseMessageId": "resp-1", "sender": "RemoteBot", "model": "m-1"},
            "events": [created, run_step("s1"), text_delta("s1", "Hello"), text_delta("s1", " ")],
        }
        replies = {"first": await request(nc, ingest, first)}
        replies["first-resent"] = await request(nc, ingest, first)  # e.g. after a lost reply
        second = {
            "firstIndex": replies["first"]["nextIndex"],
            "events": [text_delta("s1", "remote"), text_delta("s1", " world")],
            "usage": [USAGE_CALL_1],
        }
        replies["second"] = await request(nc, ingest, second)
        replies["second-resent"] = await request(nc, ingest, second)
        replies["gap"] = await request(nc, ingest, {"firstIndex": 99, "events": []})
        final = {
            "final": True,
            "conversation": {"conversationId": job_id},
            "title": "Remote",
            "responseMessage": {
                "messageId": "resp-1",
                "conversationId": job_id,
                "content": [{"type": "text", "text": "Hello remote world"}],
            },
        }
        last = {"firstIndex": replies["second"]["nextIndex"], "usage": [USAGE_CALL_2]}
        replies["complete"] = await request(nc, ingest, {**last, "complete": final})
        replies["after-end"] = await request(
            nc, ingest, {"firstIndex": replies["complete"]["nextIndex"], "events": []}
        )
        sent = [*first["events"], *second["events"]]
        return {"jobId": job_id, "created": job, "sent": sent, "final": final, "replies": replies}
    finally:
        await nc.drain()


async def streaming_producer(
    url: str,
    prefix: str,
    job_id: str,
    *,
    listen_for_abort: bool,
    paused: asyncio.Event,
    wake: asyncio.Event,
) -> dict[str, Any]:
    """Stream batches of deltas until genjobs says the job was aborted. After the first batch it
    waits for ``wake`` (like a slow tool call); with ``listen_for_abort`` an abort message on
    ``<prefix>.abort.<job_id>`` also wakes it and stops it."""
    nc = await nats.connect(url)
    heard = asyncio.Event()

    async def on_abort(_msg: Any) -> None:
        heard.set()
        wake.set()

    sub = await nc.subscribe(f"{prefix}.abort.{job_id}", cb=on_abort) if listen_for_abort else None
    try:
        await request(nc, f"{prefix}.api.create", {"userId": USER, "jobId": job_id})
        ingest = f"{prefix}.ingest.{job_id}"
        index, batches, events = 0, 0, [run_step("s1"), text_delta("s1", "start ")]
        while True:
            if heard.is_set():
                return {"stoppedBy": "abort-subject", "batches": batches}
            reply = await request(nc, ingest, {"firstIndex": index, "events": events})
            batches += 1
            if reply.get("aborted"):
                return {"stoppedBy": "ingest-reply", "batches": batches, "reply": reply}
            index = reply["nextIndex"]
            events = [text_delta("s1", f"token{batches} ")]
            if batches == 1:
                paused.set()
                await wake.wait()
    finally:
        if sub is not None:
            await sub.unsubscribe()
        await nc.drain()


# --- the tests: genjobs checks what the producer did ------------------------------------------


@asynccontextmanager
async def two_replicas(settings: Settings) -> AsyncIterator[dict[str, Replica]]:
    async with (
        running_replica(settings.with_(replica_id="rA")) as a,
        running_replica(settings.with_(replica_id="rB")) as b,
    ):
        apis = [ServiceApi(a), ServiceApi(b)]
        for api in apis:
            await api.start()
        try:
            yield {"rA": a, "rB": b}
        finally:
            for api in apis:
                await api.stop()


async def test_remote_producer_streams_a_whole_job_with_nats_and_json_only(
    nc: NATS, nats_url: str, settings: Settings
) -> None:
    async with two_replicas(settings) as replicas:
        out = await remote_producer(nats_url, settings.prefix)
        job_id = out["jobId"]
        hub = LiveHub(nc, settings)
        got = await read_all(hub, job_id, timeout=10)
        await hub.close()
        replica = replicas[out["created"]["owner"]]
        rec, _ = await replica.ops.record(job_id, USER, None)

    r = out["replies"]
    assert r["first"] == {"ok": True, "nextIndex": 4, "seq": r["first"]["seq"]}
    assert r["first-resent"]["ok"] is True
    assert r["first-resent"]["nextIndex"] == 4  # acknowledged, not stored again
    assert r["second"]["nextIndex"] == 7  # two events and one usage record
    assert r["second-resent"]["nextIndex"] == 7
    assert r["gap"]["error"]["code"] == "bad_request"
    assert r["gap"]["status"] == 400
    assert r["complete"]["ok"] is True
    assert r["complete"]["nextIndex"] == 9
    assert r["complete"]["seq"] == got[-1].seq
    assert r["after-end"]["error"]["code"] == "conflict"

    # A reader sees exactly what was sent: every index once, nothing duplicated by the resends.
    assert [e.index for e in got] == list(range(len(got)))
    assert [e.kind for e in got].count("created") == 1
    assert got[-1].kind == "final"
    assert decode(got[-1].data) == out["final"]
    steps = [decode(e.data) for e in got if e.kind == "step"]
    assert [s["event"] for s in steps].count("on_run_step") == 1
    content = aggregate(steps)
    assert content == aggregate(out["sent"])
    assert content[0]["text"] == "Hello remote world"

    # Metadata and usage reached the record, usage exactly once despite the resend.
    assert rec.status == "complete"
    assert rec.response_message_id == "resp-1"
    assert rec.sender == "RemoteBot"
    assert rec.model == "m-1"
    assert rec.user_message == {"messageId": "um-1", "conversationId": job_id, "text": "Say hello"}
    assert rec.collected_usage == [USAGE_CALL_1, USAGE_CALL_2]


async def test_abort_from_another_replica_stops_the_producer_at_its_next_ingest(
    nc: NATS, nats_url: str, settings: Settings
) -> None:
    paused, wake = asyncio.Event(), asyncio.Event()
    async with two_replicas(settings) as replicas:
        producer = asyncio.create_task(
            streaming_producer(
                nats_url, settings.prefix, "ra-1", listen_for_abort=False, paused=paused, wake=wake
            )
        )
        async with asyncio.timeout(10):
            await paused.wait()
        loaded = await replicas["rA"].store.load_record("ra-1")
        assert loaded is not None
        other = next(r for rid, r in replicas.items() if rid != loaded[0].owner)
        result = await other.ops.abort("ra-1", USER)
        assert result["success"] is True
        assert "start" in result["text"]
        wake.set()  # the producer sends its next batch to a job that has ended
        async with asyncio.timeout(10):
            stopped = await producer
        hub = LiveHub(nc, settings)
        got = await read_all(hub, "ra-1", timeout=10)
        await hub.close()
    assert stopped["stoppedBy"] == "ingest-reply"
    assert stopped["reply"] == {"ok": False, "nextIndex": 2, "aborted": True}
    assert decode(got[-1].data)["aborted"] is True
    assert not any("token1" in e.data.decode() for e in got)  # nothing after the abort


async def test_remote_producer_learns_of_an_abort_on_the_abort_subject(
    nc: NATS, nats_url: str, settings: Settings
) -> None:
    paused, wake = asyncio.Event(), asyncio.Event()
    async with two_replicas(settings) as replicas:
        producer = asyncio.create_task(
            streaming_producer(
                nats_url, settings.prefix, "ra-2", listen_for_abort=True, paused=paused, wake=wake
            )
        )
        async with asyncio.timeout(10):
            await paused.wait()
        loaded = await replicas["rA"].store.load_record("ra-2")
        assert loaded is not None
        other = next(r for rid, r in replicas.items() if rid != loaded[0].owner)
        # A non-owner forwards the abort on the subject, which the producer hears too.
        result = await other.ops.abort("ra-2", USER)
        assert result["success"] is True
        async with asyncio.timeout(10):
            stopped = await producer
    assert stopped == {"stoppedBy": "abort-subject", "batches": 1}


async def test_ingest_is_answered_by_the_owner_only_and_checks_its_input(
    nc: NATS, settings: Settings
) -> None:
    small = settings.with_(max_request_bytes=8192)
    async with two_replicas(small) as replicas:
        job = await replicas["rB"].create_job(USER, job_id="in-1")
        subject = small.ingest_subject("in-1")
        inbox = nc.new_inbox()
        replies: asyncio.Queue[Any] = asyncio.Queue()

        async def collect(msg: Any) -> None:
            await replies.put(msg)

        sub = await nc.subscribe(inbox, cb=collect)
        cases: list[tuple[bytes, str | None]] = [
            (b"{nope", "bad_request"),
            (b'{"firstIndex": -1}', "bad_request"),
            (b'{"firstIndex": 0, "events": [{"final": true}]}', "bad_request"),
            (b'{"firstIndex": 0, "events": [{"event": 5}]}', "bad_request"),
            (b'{"firstIndex": 0, "bogus": 1}', "bad_request"),
            (json.dumps({"firstIndex": 0, "error": "x" * 9000}).encode(), "too_large"),
            (
                b'{"firstIndex": 0, "events": [{"event": "on_x", "data": '
                + b"[" * 100
                + b"]" * 100
                + b"}]}",
                "bad_request",
            ),
            (b'{"firstIndex": 0, "events": [], "usage": [{"input_tokens": -5}]}', "bad_request"),
            (json.dumps({"firstIndex": 0, "events": [run_step("s")]}).encode(), None),
        ]
        for data, code in cases:
            await nc.publish(subject, data, reply=inbox)
            async with asyncio.timeout(10):
                msg = await replies.get()
            body = json.loads(msg.data)
            if code is None:
                assert body == {"ok": True, "nextIndex": 1, "seq": body["seq"]}
            else:
                assert body["error"]["code"] == code, (data[:60], body)
                assert msg.headers["Nats-Service-Error-Code"] in ("400", "413")
        await nc.flush()
        assert replies.empty()  # one answer each: the non-owner stayed silent
        await sub.unsubscribe()
        assert not job.ended
        await job.complete()
