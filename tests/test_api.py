"""The ``genjobs`` micro service over a real nats-server: two replicas, each serving the API,
every endpoint through ``nc.request``, discovery as ``nats micro`` sees it, every error code,
and the abort paths (issue 5)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from schemas.api import ErrorCode
from service import simulate as sim
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica
from tests.helpers import aggregate, running_replica

TIMEOUT = 10.0


@asynccontextmanager
async def serving(settings: Settings, replica_id: str) -> AsyncIterator[tuple[Replica, ServiceApi]]:
    """A replica with the API on it; the API stops first, as in a real shutdown."""
    async with running_replica(settings.with_(replica_id=replica_id)) as replica:
        api = ServiceApi(replica)
        await api.start()
        try:
            yield replica, api
        finally:
            await api.stop()


@asynccontextmanager
async def two_replicas(settings: Settings) -> AsyncIterator[tuple[Replica, Replica]]:
    async with serving(settings, "rA") as (a, _), serving(settings, "rB") as (b, _):
        yield a, b


async def call(nc: NATS, settings: Settings, name: str, body: Any) -> Msg:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return await nc.request(f"{settings.prefix}.api.{name}", data, timeout=TIMEOUT)


def ok(msg: Msg) -> Any:
    assert not (msg.headers or {}).get("Nats-Service-Error"), msg.data
    return json.loads(msg.data)


def error(msg: Msg, code: ErrorCode) -> str:
    """Assert the micro error convention and our body; returns the message."""
    headers = msg.headers or {}
    body = json.loads(msg.data)
    assert body["error"]["code"] == code.value, body
    assert headers.get("Nats-Service-Error-Code") == str(code.status)
    assert headers.get("Nats-Service-Error")
    message: str = body["error"]["message"]
    assert message
    return message


async def gather(nc: NATS, subject: str, prefix: str, want: int) -> list[dict[str, Any]]:
    """Every reply to one request (discovery answers once per instance), ours only."""
    inbox = nc.new_inbox()
    got: list[dict[str, Any]] = []
    enough = asyncio.Event()

    async def on_reply(msg: Msg) -> None:
        body = json.loads(msg.data)
        if body.get("metadata", {}).get("prefix") == prefix:
            got.append(body)
            if len(got) >= want:
                enough.set()

    sub = await nc.subscribe(inbox, cb=on_reply)
    await nc.publish(subject, b"", reply=inbox)
    async with asyncio.timeout(TIMEOUT):
        await enough.wait()
    await sub.unsubscribe()
    return got


async def job_with_events(replica: Replica, job_id: str, user: str = "u1", **kw: Any) -> Any:
    job = await replica.create_job(user, job_id=job_id, **kw)
    events = list(sim.generation(job_id, tokens=12))
    for ev in events:
        await job.emit(ev)
    await job.flush()
    return job, events


# --- happy paths ---------------------------------------------------------------------------


async def test_create_makes_the_answering_replica_the_owner(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, b):
        rec = ok(await call(nc, settings, "create", {"userId": "u1", "conversationId": "conv-1"}))
        assert rec["streamId"] == "conv-1"
        assert rec["status"] == "running"
        assert rec["userId"] == "u1"
        owner = {"rA": a, "rB": b}[rec["owner"]]
        assert "conv-1" in owner.registry
        explicit = ok(await call(nc, settings, "create", {"userId": "u1", "jobId": "j-2"}))
        assert explicit["streamId"] == "j-2"
        generated = ok(await call(nc, settings, "create", {"userId": "u1"}))
        assert len(generated["streamId"]) == 32
        for job_id in ("conv-1", "j-2", generated["streamId"]):
            await ok_abort(nc, settings, job_id)


async def ok_abort(nc: NATS, settings: Settings, job_id: str, user: str = "u1") -> Any:
    return ok(await call(nc, settings, "abort", {"jobId": job_id, "userId": user}))


async def test_create_honours_tenant_replace_and_conflict(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings):
        body = {"userId": "u1", "jobId": "tj", "tenantId": "t1"}
        first = ok(await call(nc, settings, "create", body))
        assert first["tenantId"] == "t1"
        error(await call(nc, settings, "create", body), ErrorCode.CONFLICT)
        replaced = ok(await call(nc, settings, "create", {**body, "replace": True}))
        assert replaced["createdAt"] >= first["createdAt"]
        assert replaced["status"] == "running"
        # The tenant is part of the identity: without it the same user is someone else.
        error(
            await call(nc, settings, "status", {"jobId": "tj", "userId": "u1"}), ErrorCode.FORBIDDEN
        )
        active = ok(await call(nc, settings, "active", {"userId": "u1", "tenantId": "t1"}))
        assert active == {"activeJobIds": ["tj"]}
        done = ok(
            await call(nc, settings, "abort", {"jobId": "tj", "userId": "u1", "tenantId": "t1"})
        )
        assert done["success"] is True


async def test_create_with_an_idempotency_key_returns_the_same_job_from_any_replica(
    nc: NATS, settings: Settings
) -> None:
    a = Replica(settings.with_(replica_id="rA"))  # owner without the API
    await a.start()
    try:
        async with serving(settings, "rB"):
            job = await a.create_job("u1", idempotency_key="req-7")
            body = {"userId": "u1", "idempotencyKey": "req-7"}
            for _ in range(3):
                again = ok(await call(nc, settings, "create", body))
                assert again["streamId"] == job.job_id
                assert again["owner"] == "rA"
            other = {"userId": "u1", "idempotencyKey": "k2"}
            fresh = ok(await call(nc, settings, "create", other))
            assert fresh["owner"] == "rB"
            assert ok(await call(nc, settings, "create", other))["streamId"] == fresh["streamId"]
            assert fresh["streamId"] != job.job_id
            await ok_abort(nc, settings, fresh["streamId"])
            await job.complete()
    finally:
        await a.stop()


async def test_status_reports_content_as_of_its_seq(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, _):
        job, events = await job_with_events(a, "st")
        status = ok(await call(nc, settings, "status", {"jobId": "st", "userId": "u1"}))
        assert status["active"] is True
        assert status["status"] == "running"
        assert status["aggregatedContent"] == aggregate(events)
        assert status["seq"] == await job.flush()
        assert status["createdAt"] == job.record.created_at
        await job.complete(sim.final_event("st"))
        after = ok(await call(nc, settings, "status", {"jobId": "st", "userId": "u1"}))
        assert after["active"] is False
        assert after["status"] == "complete"


async def test_resume_gives_the_snapshot_a_reader_continues_from(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings) as (a, _):
        job, events = await job_with_events(a, "rs")
        snap = ok(await call(nc, settings, "resume", {"jobId": "rs", "userId": "u1"}))
        assert snap["aggregatedContent"] == aggregate(events)
        assert [s["id"] for s in snap["runSteps"]] == ["step_think", "step_tool", "step_text"]
        assert snap["userMessage"]["messageId"] == "user-msg-1"
        assert snap["status"] == "running"
        assert snap["seq"] == await job.flush()
        await job.complete()


async def test_active_lists_a_users_running_jobs(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, b):
        one = await a.create_job("u1", job_id="act-1")
        two = await b.create_job("u1", job_id="act-2")
        other = await b.create_job("u2", job_id="act-3")
        got = ok(await call(nc, settings, "active", {"userId": "u1"}))
        assert got == {"activeJobIds": ["act-1", "act-2"]}
        await one.complete()
        got = ok(await call(nc, settings, "active", {"userId": "u1"}))
        assert got == {"activeJobIds": ["act-2"]}
        await two.complete()
        await other.complete()


async def test_counts_by_every_status(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, b):
        running = await a.create_job("u1", job_id="c-run")
        await (await b.create_job("u1", job_id="c-done")).complete()
        await (await a.create_job("u1", job_id="c-err")).fail("boom")
        await b.create_job("u1", job_id="c-ab")
        await ok_abort(nc, settings, "c-ab")
        counts = ok(await call(nc, settings, "counts", {}))
        assert counts == {"running": 1, "complete": 1, "error": 1, "aborted": 1}
        assert ok(await call(nc, settings, "counts", b"")) == counts  # `nats req ... ''`
        await running.complete()


async def test_sync_reads_and_sets_sync_sent_through_the_owner(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings) as (a, _):
        job = await a.create_job("u1", job_id="sy")
        ask = {"jobId": "sy", "userId": "u1"}
        assert ok(await call(nc, settings, "sync", ask)) == {"syncSent": False}
        assert ok(await call(nc, settings, "sync", {**ask, "syncSent": True})) == {"syncSent": True}
        assert job.record.sync_sent is True  # written by the owner, whoever answered
        assert ok(await call(nc, settings, "sync", ask)) == {"syncSent": True}
        await job.complete()
        assert ok(await call(nc, settings, "sync", {**ask, "syncSent": False})) == {
            "syncSent": False
        }


async def test_abort_returns_the_abort_result_and_usage_once(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, _):
        job, events = await job_with_events(a, "ab")
        await job.record_usage(sim.usage_openai())
        result = await ok_abort(nc, settings, "ab")
        assert result["success"] is True
        assert result["content"] == aggregate(events)
        assert result["finalEvent"]["aborted"] is True
        assert result["collectedUsage"] == [sim.usage_openai()]
        assert result["jobData"]["status"] == "aborted"
        assert job.aborted.is_set()
        again = await ok_abort(nc, settings, "ab")
        assert again["usageAlreadyClaimed"] is True
        assert again["collectedUsage"] == []


# --- discovery -----------------------------------------------------------------------------


async def test_discovery_answers_what_nats_micro_ls_info_and_stats_expect(
    nc: NATS, settings: Settings
) -> None:
    p = settings.prefix
    names = {"create", "status", "resume", "abort", "active", "counts", "sync"}
    async with two_replicas(settings):
        pings = await gather(nc, "$SRV.PING.genjobs", p, 2)
        assert {m["metadata"]["replica"] for m in pings} == {"rA", "rB"}
        for m in pings:
            assert m["type"] == "io.nats.micro.v1.ping_response"
            assert m["name"] == "genjobs"
            assert m["version"] == "0.1.0"
        ids = {m["id"] for m in pings}
        assert len(ids) == 2
        infos = await gather(nc, "$SRV.INFO.genjobs", p, 2)
        for info in infos:
            assert info["type"] == "io.nats.micro.v1.info_response"
            assert info["id"] in ids
            assert info["description"]
            eps = {e["name"]: e for e in info["endpoints"]}
            assert set(eps) == names
            for name, ep in eps.items():
                assert ep["subject"] == f"{p}.api.{name}"
                assert ep["queue_group"] == "q"
                assert ep["metadata"]["request"].startswith("{")
        # One instance by id, as `nats micro info genjobs <id>` asks.
        one = await gather(nc, f"$SRV.INFO.genjobs.{infos[0]['id']}", p, 1)
        assert one[0]["id"] == infos[0]["id"]

        for body in ({}, {}, {"bogus": 1}):
            await call(nc, settings, "counts", body)
        stats = await gather(nc, "$SRV.STATS.genjobs", p, 2)
        counted = [e for s in stats for e in s["endpoints"] if e["name"] == "counts"]
        assert stats[0]["type"] == "io.nats.micro.v1.stats_response"
        assert sum(e["num_requests"] for e in counted) == 3
        assert sum(e["num_errors"] for e in counted) == 1
        assert any(e["last_error"].startswith("400:") for e in counted)
        assert sum(e["processing_time"] for e in counted) > 0
        for e in (e for st in stats for e in st["endpoints"]):
            # `nats micro stats` validates against the micro schema: data must be an object.
            assert e["data"] == {"inFlight": 0, "maxInFlight": 256}
            assert isinstance(e["last_error"], str)


# --- errors --------------------------------------------------------------------------------


async def test_malformed_requests_get_bad_request_and_change_nothing(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings) as (a, _):
        await a.create_job("u1", job_id="keep")
        before = await a.store.load_record("keep")
        cases: list[tuple[str, Any]] = [
            ("create", b"{not json"),
            ("create", b"\xff\xfe"),
            ("create", b"[]"),
            ("create", b'"u1"'),
            ("create", {"userId": 7}),
            ("create", {"userId": "u1", "replace": "yes"}),
            ("create", {"userId": "u1", "idempotencyKey": ""}),
            ("create", {}),
            ("create", {"userId": "u1", "jobid": "keep"}),  # misspelt: refused, not ignored
            ("status", {"jobId": "keep"}),
            ("status", {"jobId": "keep", "userId": "u1", "extra": True}),
            ("resume", {"jobId": ["keep"], "userId": "u1"}),
            ("abort", {"jobId": "keep", "userId": None}),
            ("abort", b"[" * 5000),
            ("active", {"userId": {"$ne": ""}}),
            ("counts", {"x": 1}),
            ("sync", {"jobId": "keep", "userId": "u1", "syncSent": "true"}),
        ]
        for name, body in cases:
            error(await call(nc, settings, name, body), ErrorCode.BAD_REQUEST)
        assert await a.store.load_record("keep") == before
        assert ok(await call(nc, settings, "counts", {}))["running"] == 1


async def test_unknown_endpoint_gets_bad_request_from_one_replica(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings):
        message = error(await call(nc, settings, "delete", {}), ErrorCode.BAD_REQUEST)
        assert "unknown endpoint" in message
        error(await call(nc, settings, "create.extra", {"userId": "u1"}), ErrorCode.BAD_REQUEST)


async def test_ids_that_could_reach_a_subject_get_invalid_id(nc: NATS, settings: Settings) -> None:
    async with serving(settings, "rA") as (a, _):
        await a.create_job("u1", job_id="keep")
        before = await a.store.load_record("keep")
        for bad in ["a.b", "*", ">", "has space", "", "x" * 1000, "tab\t", "é", "a>b", "$SRV"]:
            for name, body in [
                ("create", {"userId": bad}),
                ("create", {"userId": "u1", "jobId": bad}),
                ("create", {"userId": "u1", "tenantId": bad}),
                ("create", {"userId": "u1", "conversationId": bad}),
                ("status", {"jobId": bad, "userId": "u1"}),
                ("resume", {"jobId": "keep", "userId": bad}),
                ("abort", {"jobId": bad, "userId": "u1"}),
                ("abort", {"jobId": "keep", "userId": "u1", "tenantId": bad}),
                ("active", {"userId": bad}),
                ("sync", {"jobId": bad, "userId": "u1"}),
            ]:
                error(await call(nc, settings, name, body), ErrorCode.INVALID_ID)
        assert await a.store.load_record("keep") == before


async def test_wrong_user_is_forbidden_and_changes_nothing(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, _):
        job, _events = await job_with_events(a, "mine", tenant_id="t1")
        await job.record_usage(sim.usage_openai())
        rec_before, rev_before = await a.ops.record("mine", "u1", "t1")
        for user, tenant in [("intruder", "t1"), ("u1", None), ("u1", "t2")]:
            who = {"userId": user} | ({"tenantId": tenant} if tenant else {})
            ident = {"jobId": "mine", **who}
            for name, body in [
                ("status", ident),
                ("resume", ident),
                ("abort", ident),
                ("sync", {**ident, "syncSent": True}),
                ("create", {**who, "jobId": "mine", "replace": True}),
            ]:
                error(await call(nc, settings, name, body), ErrorCode.FORBIDDEN)
        # Also through the abort subject, which the owner answers itself.
        reply = await nc.request(
            settings.abort_subject("mine"), b'{"userId": "intruder"}', timeout=TIMEOUT
        )
        assert json.loads(reply.data)["error"]["code"] == "forbidden"
        rec_after, rev_after = await a.ops.record("mine", "u1", "t1")
        assert rev_after == rev_before
        assert rec_after == rec_before
        assert not job.aborted.is_set()
        assert "mine" in a.registry
        await job.complete()


async def test_missing_job_is_not_found(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings):
        for name in ("status", "resume", "abort", "sync"):
            body = {"jobId": "nope", "userId": "u1"}
            assert "nope" in error(await call(nc, settings, name, body), ErrorCode.NOT_FOUND)


async def test_oversized_request_is_too_large(nc: NATS, settings: Settings) -> None:
    small = settings.with_(max_request_bytes=4096)
    async with serving(small, "rA"):
        huge = {"userId": "u1", "conversationId": "c" * 5000}
        error(await call(nc, small, "create", huge), ErrorCode.TOO_LARGE)
        near = {"userId": "u" * 3900}  # under the limit: judged on its content
        error(await call(nc, small, "create", near), ErrorCode.INVALID_ID)
        assert ok(await call(nc, small, "counts", {}))["running"] == 0


async def test_owner_that_cannot_answer_is_unavailable(nc: NATS, settings: Settings) -> None:
    fast = settings.with_(lease_ttl=30.0)
    a = Replica(fast.with_(replica_id="rA"))
    await a.start()
    async with serving(fast, "rB"):
        await a.create_job("u1", job_id="gone")
        await a.kill()
        body = {"jobId": "gone", "userId": "u1", "syncSent": True}
        assert "did not answer" in error(await call(nc, fast, "sync", body), ErrorCode.UNAVAILABLE)
        assert ok(await call(nc, fast, "counts", {}))["running"] == 1


# --- concurrency and lifecycle -------------------------------------------------------------


def dead_owner_settings(settings: Settings) -> Settings:
    """An abort of a killed owner's job waits one request timeout before taking over."""
    return settings.with_(lease_ttl=1.5, heartbeat_interval=0.3, request_timeout=1.0)


async def test_a_slow_request_does_not_delay_others_on_the_same_endpoint(
    nc: NATS, settings: Settings
) -> None:
    s = dead_owner_settings(settings)
    a = Replica(s.with_(replica_id="rA"))
    await a.start()
    async with serving(s, "rB") as (b, _):
        await a.create_job("u1", job_id="stuck")
        fine = await b.create_job("u1", job_id="fine")
        await a.kill()
        # A stuck owner: its rpc subscription is there but never answers (a killed one would
        # answer "no responders" at once, and the abort would not be slow at all).
        stuck = await nc.subscribe(s.rpc_subject("rA", "abort"))
        await nc.flush()
        slow = asyncio.create_task(ok_abort(nc, s, "stuck"))
        fast = await asyncio.gather(
            call(nc, s, "abort", {"jobId": "missing", "userId": "u1"}),
            call(nc, s, "counts", {}),
            call(nc, s, "abort", {"jobId": "fine", "userId": "u1"}),
        )
        assert not slow.done(), "the dead owner's abort should still be waiting"
        error(fast[0], ErrorCode.NOT_FOUND)
        # Only the shape: the totals race with the abort of "fine" updating its record.
        assert set(ok(fast[1])) == {"running", "complete", "error", "aborted"}
        assert ok(fast[2])["success"] is True
        assert fine.aborted.is_set()
        result = await slow  # taken over once the owner's lease ran out
        await stuck.unsubscribe()
        assert result["jobData"]["status"] in ("aborted", "error")


async def test_abort_of_a_killed_owners_job_returns_usage_once(
    nc: NATS, settings: Settings
) -> None:
    s = dead_owner_settings(settings)
    a = Replica(s.with_(replica_id="rA"))
    await a.start()
    async with serving(s, "rB"):
        job, _ = await job_with_events(a, "dead")
        await job.record_usage(sim.usage_anthropic())
        await job.flush()
        await a.kill()
        first = await ok_abort(nc, s, "dead")
        assert first["collectedUsage"] == [sim.usage_anthropic()]
        assert first["usageAlreadyClaimed"] is False
        second = await ok_abort(nc, s, "dead")
        assert second["collectedUsage"] == []
        assert second["usageAlreadyClaimed"] is True
        assert second["success"] is False


async def test_abort_subject_request_answers_with_the_abort_result(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings) as (_, b):
        job, events = await job_with_events(b, "subj")
        reply = await nc.request(settings.abort_subject("subj"), b'{"userId": "u1"}', timeout=5)
        result = json.loads(reply.data)
        assert result["success"] is True
        assert result["content"] == aggregate(events)
        assert result["finalEvent"]["aborted"] is True
        assert job.ended


async def test_abort_subject_publish_is_fire_and_forget(nc: NATS, settings: Settings) -> None:
    async with two_replicas(settings) as (a, _):
        job, _ = await job_with_events(a, "faf")
        await nc.publish(settings.abort_subject("faf"), b'{"userId": "u1"}')
        async with asyncio.timeout(TIMEOUT):
            await job.wait_ended()
        rec, _ = await a.ops.record("faf", "u1", None)
        assert rec.status == "aborted"


async def test_requests_without_reply_are_processed_and_break_nothing(
    nc: NATS, settings: Settings
) -> None:
    async with two_replicas(settings) as (a, _):
        job, _ = await job_with_events(a, "quiet")
        for name in ("create", "status", "resume", "active", "counts", "sync", "nope"):
            await nc.publish(f"{settings.prefix}.api.{name}", b"{broken")
        # A well-formed abort published without a reply still aborts (fire and forget).
        await nc.publish(
            f"{settings.prefix}.api.abort", json.dumps({"jobId": "quiet", "userId": "u1"}).encode()
        )
        async with asyncio.timeout(TIMEOUT):
            await job.wait_ended()
        for _ in range(4):  # both replicas still answer
            assert ok(await call(nc, settings, "counts", {}))["aborted"] == 1


async def test_stop_answers_requests_already_in_flight(nc: NATS, settings: Settings) -> None:
    s = dead_owner_settings(settings)
    a = Replica(s.with_(replica_id="rA"))
    await a.start()
    async with running_replica(s.with_(replica_id="rB")) as b:
        api = ServiceApi(b)
        await api.start()
        await a.create_job("u1", job_id="late")
        await a.kill()
        forwarded = asyncio.Event()

        async def seen(_msg: Msg) -> None:
            forwarded.set()

        # B asks the owner on its rpc subject, held here and never answered (a stuck owner):
        # proof that B is working on it when the service stops.
        sub = await nc.subscribe(s.rpc_subject("rA", "abort"), cb=seen)
        await nc.flush()
        pending = asyncio.create_task(ok_abort(nc, s, "late"))
        async with asyncio.timeout(TIMEOUT):
            await forwarded.wait()
        await sub.unsubscribe()
        await api.stop(grace=TIMEOUT)
        result = await pending
        assert result["jobData"]["streamId"] == "late"
        with pytest.raises(Exception, match=r"[Nn]o responders"):
            await call(nc, s, "counts", {})
