"""The rule of docs/protocol.md ("Every request gets one answer"): every request on every subject
genjobs serves gets exactly one reply, in every job state, with the documented body and code.

:func:`bench.answers.enumerate_answers` sends ``REPEAT`` requests for every (subject, state)
cell over plain NATS (its docstring describes the replicas and how each state is made); this
test checks every reply against :data:`TABLE`, the table of docs/protocol.md, and that every
request got exactly one reply. Reply times per state are printed as figures (p50/p99/max);
they are a benchmark (``python -m bench.run --only answers``), not an assertion.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bench.answers import CELLS, DELTA, answers_settings, enumerate_answers
from bench.common import summary_ms
from service import simulate as sim
from service.config import Settings
from service.server.api import ServiceApi
from service.server.replica import Replica

REPEAT = 6


def body_of(msg: Msg) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(msg.data)
    return out


def is_error(code: str) -> Callable[[Msg], None]:
    def check(msg: Msg) -> None:
        body = body_of(msg)
        assert body.get("error", {}).get("code") == code, body
        headers = msg.headers or {}
        assert headers.get("Nats-Service-Error"), (code, headers)
        assert headers.get("Nats-Service-Error-Code"), (code, headers)

    check.__name__ = f"error:{code}"
    return check


def ok_status(status: str, active: bool) -> Callable[[Msg], None]:
    def check(msg: Msg) -> None:
        body = body_of(msg)
        assert body["status"] == status, body
        if "active" in body:
            assert body["active"] is active, body

    check.__name__ = f"status:{status}"
    return check


def ok_resume(status: str) -> Callable[[Msg], None]:
    def check(msg: Msg) -> None:
        body = body_of(msg)
        assert body["status"] == status, body
        assert isinstance(body["seq"], int)
        assert isinstance(body["aggregatedContent"], list)

    check.__name__ = f"resume:{status}"
    return check


def aborted_now(msg: Msg) -> None:
    body = body_of(msg)
    assert body["success"] is True, body
    assert body["jobData"]["status"] == "aborted", body
    assert body["finalEvent"]["aborted"] is True, body
    assert body["usageAlreadyClaimed"] is False, body


def ended_abort(msg: Msg) -> None:
    """An abort of an ended job: no abort happens; the usage once (if unclaimed), then never."""
    body = body_of(msg)
    assert body["success"] is False, body
    assert isinstance(body["usageAlreadyClaimed"], bool), body
    assert isinstance(body["collectedUsage"], list), body


def sync_ok(msg: Msg) -> None:
    assert body_of(msg) == {"syncSent": True}


def ingest_ack(msg: Msg) -> None:
    assert body_of(msg)["ok"] is True, body_of(msg)
    assert body_of(msg)["nextIndex"] == 1, body_of(msg)


def ingest_aborted(msg: Msg) -> None:
    body = body_of(msg)
    assert body["ok"] is False, body
    assert body["aborted"] is True, body


def no_responders(msg: Msg) -> None:
    """The server's own answer: nobody serves the subject (rpc of a replica that is gone)."""
    assert (msg.headers or {}).get("Status") == "503", (msg.headers, msg.data)


def snapshot_ok(msg: Msg) -> None:
    body = body_of(msg)
    assert isinstance(body["seq"], int), body
    assert isinstance(body["aggregatedContent"], list), body


# The table (docs/protocol.md, "Every request gets one answer"): (subject, state) -> check.
E = is_error
TABLE: dict[tuple[str, str], Callable[[Msg], None]] = {
    **{("api.status", s): ok_status(s, s == "running") for s in ("running", "complete", "error")},
    ("api.status", "aborted"): ok_status("aborted", False),
    ("api.status", "owner_dead_unnoticed"): ok_status("running", True),
    ("api.status", "owner_dead_known"): ok_status("running", True),
    ("api.status", "after_takeover"): ok_status("error", False),
    **{("api.resume", s): ok_resume(s) for s in ("running", "complete", "error", "aborted")},
    ("api.resume", "owner_dead_unnoticed"): ok_resume("running"),
    ("api.resume", "owner_dead_known"): ok_resume("running"),
    ("api.resume", "after_takeover"): ok_resume("error"),
    **{
        (subject, s): ended_abort
        for subject in ("api.abort", "abort")
        for s in ("complete", "error", "aborted", "after_takeover")
    },
    **{(subject, "running"): aborted_now for subject in ("api.abort", "abort")},
    **{(subject, "owner_dead_known"): aborted_now for subject in ("api.abort", "abort")},
    **{(subject, "owner_dead_unnoticed"): aborted_now for subject in ("api.abort", "abort")},
    **{("api.sync", s): sync_ok for s in ("running", "complete", "error", "aborted")},
    ("api.sync", "after_takeover"): sync_ok,
    ("api.sync", "owner_dead_unnoticed"): E("unavailable"),
    ("api.sync", "owner_dead_known"): E("unavailable"),
    ("ingest", "running"): ingest_ack,
    ("ingest", "complete"): E("conflict"),
    ("ingest", "error"): E("conflict"),
    ("ingest", "aborted"): ingest_aborted,
    ("ingest", "owner_dead_unnoticed"): E("unavailable"),
    ("ingest", "owner_dead_known"): E("conflict"),
    ("ingest", "after_takeover"): E("conflict"),
    ("rpc", "running"): snapshot_ok,
    ("rpc", "owner_dead_unnoticed"): no_responders,
    **{("rpc", s): E("not_found") for s in ("complete", "error", "aborted", "unknown")},
    ("rpc", "owner_dead_known"): no_responders,
    ("rpc", "after_takeover"): E("not_found"),
    **{
        (subject, "unknown"): E("not_found")
        for subject in ("api.status", "api.resume", "api.abort", "api.sync", "abort", "ingest")
    },
    **{
        (subject, "invalid_id"): E("invalid_id")
        for subject in ("api.status", "api.resume", "api.abort", "api.sync", "abort", "ingest")
    },
    ("rpc", "invalid_id"): E("invalid_id"),
}


@asynccontextmanager
async def replica_with_api(s: Settings, rid: str) -> AsyncIterator[tuple[Replica, ServiceApi]]:
    replica = Replica(s.with_(replica_id=rid))
    await replica.start()
    api = ServiceApi(replica)
    await api.start()
    try:
        yield replica, api
    finally:
        await api.stop()
        await replica.stop()


async def test_every_request_gets_exactly_one_documented_answer_in_every_state(
    nc: NATS, settings: Settings
) -> None:
    assert set(TABLE) == set(CELLS), set(CELLS) ^ set(TABLE)
    out = await enumerate_answers(nc, settings, REPEAT)
    not_one = {i: n for i, n in out.answers.items() if n != 1}
    assert not not_one, f"requests answered other than exactly once: {not_one}"
    assert len(out.replies) == out.requests
    seen = {(r.subject, r.state) for r in out.replies}
    assert seen == set(TABLE), set(TABLE) - seen
    assert out.relayed > 0, "no ingest request was relayed: 'running elsewhere' not exercised"
    for r in out.replies:
        cell = (r.subject, r.state)
        try:
            TABLE[cell](r.msg)
        except (AssertionError, KeyError) as err:
            raise AssertionError(f"{r.subject} x {r.state} ({r.job_id!r}): {err}") from err
    print_figures(out.times())


def print_figures(times: dict[str, list[float]]) -> None:
    print("\nFIGURES reply time per state (ms): state n p50 p99 max")
    for state, t in times.items():
        ms = summary_ms(t)
        print(
            f"FIGURES {state:28s} {len(t):4d} {ms['p50_ms']:8.2f} {ms['p99_ms']:8.2f} "
            f"{ms['max_ms']:8.2f}"
        )


async def test_the_terminal_batch_is_idempotent_and_needs_no_first_index(
    nc: NATS, settings: Settings
) -> None:
    """Item 6: the completing batch resent gets the same acknowledgement, from the owner and
    from the other replica; ``{"complete": ...}`` or ``{"error": ...}`` alone is accepted."""
    s = answers_settings(settings)
    async with replica_with_api(s, "rA") as (a, _), replica_with_api(s, "rB") as (_b, _):
        await a.create_job("u1", job_id="t-complete")
        await a.create_job("u1", job_id="t-alone")
        await a.create_job("u1", job_id="t-error")
        ingest = s.ingest_subject
        first = {"firstIndex": 0, "events": [DELTA], "complete": sim.final_event("t-complete")}
        ack = body_of(await nc.request(ingest("t-complete"), json.dumps(first).encode(), 5))
        assert ack["ok"] is True, ack
        assert ack["nextIndex"] == 2, ack
        for _ in range(6):  # whichever replica gets it, the same acknowledgement
            again = body_of(await nc.request(ingest("t-complete"), json.dumps(first).encode(), 5))
            assert again == ack
        # Anything else after the completion is refused.
        more = {"firstIndex": 2, "events": [DELTA]}
        assert (
            body_of(await nc.request(ingest("t-complete"), json.dumps(more).encode(), 5))["error"][
                "code"
            ]
            == "conflict"
        )
        # A terminal-only batch without firstIndex ends the job at its next index.
        await nc.request(
            ingest("t-alone"), json.dumps({"firstIndex": 0, "events": [DELTA]}).encode(), 5
        )
        alone = {"complete": sim.final_event("t-alone")}
        ack = body_of(await nc.request(ingest("t-alone"), json.dumps(alone).encode(), 5))
        assert ack["ok"] is True, ack
        assert ack["nextIndex"] == 2, ack
        assert body_of(await nc.request(ingest("t-alone"), json.dumps(alone).encode(), 5)) == ack
        rec, _ = await a.ops.record("t-alone", "u1", None)
        assert rec.status == "complete"
        err = {"error": "producer failed"}
        ack = body_of(await nc.request(ingest("t-error"), json.dumps(err).encode(), 5))
        assert ack["ok"] is True, ack
        assert body_of(await nc.request(ingest("t-error"), json.dumps(err).encode(), 5)) == ack
        other = {"error": "another message"}
        reply = body_of(await nc.request(ingest("t-error"), json.dumps(other).encode(), 5))
        assert reply["error"]["code"] == "conflict", reply
        # Events without firstIndex are refused: only the terminal needs no position.
        bad = {"events": [DELTA], "complete": sim.final_event("x")}
        reply = body_of(await nc.request(ingest("t-error"), json.dumps(bad).encode(), 5))
        assert reply["error"]["code"] == "bad_request", reply


async def test_pipelined_batches_keep_their_order_through_relays(
    nc: NATS, settings: Settings
) -> None:
    """Batches sent without waiting reach the owner in order although about half of them are
    relayed by the other replica: every one is acknowledged, none is a gap."""
    s = answers_settings(settings)
    async with replica_with_api(s, "rA") as (a, api_a), replica_with_api(s, "rB") as (_, api_b):
        job = await a.create_job("u1", job_id="pipe")
        n = 60
        sends = [
            nc.request(
                s.ingest_subject("pipe"),
                json.dumps({"firstIndex": i, "events": [sim.text_delta("s", f"t{i} ")]}).encode(),
                timeout=10,
            )
            for i in range(n)
        ]
        replies = [body_of(m) for m in await asyncio.gather(*sends)]
        assert all(r.get("ok") for r in replies), [r for r in replies if not r.get("ok")][:3]
        assert max(r["nextIndex"] for r in replies) == n
        assert api_b._ingest.relayed + api_a._ingest.relayed > 0
        await job.complete()


async def test_a_resent_terminal_batch_is_acknowledged_after_its_owner_is_gone(
    nc: NATS, settings: Settings
) -> None:
    """The former owner remembered the acknowledgement; once it is gone, the replica that gets
    the resend answers from the record: the same terminal seq, ``firstIndex + span``."""
    s = answers_settings(settings)
    async with replica_with_api(s, "rB") as _:
        c = Replica(s.with_(replica_id="rC"))
        await c.start()
        api_c = ServiceApi(c)
        await api_c.start()
        await c.create_job("u1", job_id="t-gone")
        batch = {"firstIndex": 0, "events": [DELTA, DELTA], "complete": sim.final_event("g")}
        data = json.dumps(batch).encode()
        ack = body_of(await nc.request(s.ingest_subject("t-gone"), data, 5))
        assert ack["ok"] is True, ack
        await api_c.stop(grace=0)
        await c.kill()
        again = body_of(await nc.request(s.ingest_subject("t-gone"), data, 5))
        assert again == ack
