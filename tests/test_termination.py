"""actors.termination, the one way a job ends, as a table: every reason, its event, its record
change, who gets the usage; and the jobs that have ended (a later abort, a repair from the log).
Pure functions: no NATS needed."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from actors.termination import (
    Abort,
    Complete,
    Ending,
    Fail,
    Reason,
    claim_ended,
    repaired,
    terminate,
)
from schemas.api import AbortResult, CompletionResult
from schemas.events import EventKind
from schemas.job import IllegalTransition, JobRecord, JobStatus, can_transition

USAGE = [{"model": "gpt-4o", "input_tokens": 5}]
CONTENT = [{"type": "text", "text": "so far"}]


def running(**changes: Any) -> JobRecord:
    rec = JobRecord(
        stream_id="j1",
        user_id="u1",
        status=JobStatus.RUNNING,
        created_at=1,
        sync_sent=False,
        owner="rA",
        lease_until=0,
        last_seq=7,
        last_index=3,
        first_seq=0,
        collected_usage=list(USAGE),
        usage_claimed=False,
        response_message_id="resp-1",
        user_message={"messageId": "um-1", "text": "hi"},
    )
    return msgspec.structs.replace(rec, **changes)


# reason -> (ending, status, event kind, claimed by, usage handed out)
CASES: list[tuple[Ending, JobStatus, EventKind, str | None]] = [
    (Complete({"final": True, "title": "t"}), JobStatus.COMPLETE, EventKind.FINAL, "complete"),
    (Complete(None), JobStatus.COMPLETE, EventKind.FINAL, "complete"),
    (Fail("model exploded"), JobStatus.ERROR, EventKind.ERROR, "error"),
    (Fail.shutdown(), JobStatus.ERROR, EventKind.ERROR, "error"),
    (Fail("per-job cap", Reason.BUDGET), JobStatus.ERROR, EventKind.ERROR, "error"),
    (Fail.owner_lost(), JobStatus.ERROR, EventKind.ERROR, None),
    (Abort("api"), JobStatus.ABORTED, EventKind.FINAL, "abort"),
    (Abort("abort-subject"), JobStatus.ABORTED, EventKind.FINAL, "abort"),
    (Abort("replace"), JobStatus.ABORTED, EventKind.FINAL, "abort"),
]


@pytest.mark.parametrize(("ending", "status", "kind", "claimed_by"), CASES)
def test_every_reason_ends_a_running_job_one_way(
    ending: Ending, status: JobStatus, kind: EventKind, claimed_by: str | None
) -> None:
    rec = running()
    end = terminate(rec, ending, CONTENT)
    assert end.status is status
    assert end.kind is kind
    assert end.claimed_by == claimed_by
    assert end.usage == (USAGE if claimed_by else [])
    after = end.record(rec, seq=8, index=4, now=99)
    assert rec.status is JobStatus.RUNNING  # a new value; the input is untouched
    assert (after.status, after.last_seq, after.last_index, after.completed_at) == (
        status,
        8,
        4,
        99,
    )
    assert after.usage_claimed is (claimed_by is not None)
    assert after.usage_claimed_by == claimed_by
    result = end.result(after, 8)
    if isinstance(ending, Abort):
        assert isinstance(result, AbortResult)
        assert end.event["aborted"] is True
        assert end.event["final"] is True
        assert result.content == CONTENT
        assert result.text == "so far"
        assert result.collected_usage == USAGE
        assert not result.usage_already_claimed
        assert after.aborted_by == ending.by
    else:
        assert isinstance(result, CompletionResult)
        assert result.seq == 8
        assert result.final_event == end.event
    if isinstance(ending, Fail):
        assert end.event == {"error": ending.message}
        assert after.error == ending.message


def test_an_ended_job_cannot_end_again() -> None:
    for status in (JobStatus.COMPLETE, JobStatus.ERROR, JobStatus.ABORTED):
        assert not any(can_transition(status, s) for s in JobStatus)
        with pytest.raises(IllegalTransition):
            terminate(running(status=status), Abort("api"), [])


def test_a_later_abort_claims_the_usage_once() -> None:
    lost = terminate(running(), Fail.owner_lost(), [])
    ended = lost.record(running(), seq=8, index=4, now=9)
    changed, first = claim_ended(ended)
    assert changed is not None
    assert changed.usage_claimed
    assert changed.usage_claimed_by == "abort"
    assert first.collected_usage == USAGE
    assert not first.usage_already_claimed
    assert not first.success
    again, second = claim_ended(changed)
    assert again is None
    assert second.collected_usage == []
    assert second.usage_already_claimed


def test_a_record_is_repaired_from_the_logs_terminal_event() -> None:
    rec = running()
    cases = [
        ("final", {"final": True}, JobStatus.COMPLETE),
        ("final", {"final": True, "aborted": True}, JobStatus.ABORTED),
        ("error", {"error": "boom"}, JobStatus.ERROR),
    ]
    for kind, event, status in cases:
        fixed = repaired(rec, kind, event, seq=9, index=5, now=3)
        assert fixed is not None
        assert (fixed.status, fixed.last_seq, fixed.last_index) == (status, 9, 5)
        assert not fixed.usage_claimed  # nobody was answered: the next abort gets it
    assert repaired(rec, "step", {}, seq=9, index=5, now=3) is None
    assert repaired(running(status=JobStatus.COMPLETE), "error", {}, seq=9, index=5, now=3) is None
