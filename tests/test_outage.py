"""The outage policy's arithmetic (service/nats/outage.py); the faults it rides out are in
tests/faults/test_outage_budget.py and tests/test_reader.py, against a real nats-server."""

from __future__ import annotations

import asyncio

import pytest

from service.config import Settings
from service.nats.outage import OutagePolicy, retry


def test_the_policy_comes_from_the_settings(settings: Settings) -> None:
    s = settings.with_(publish_outage_budget=7.5, publish_retries=2)
    assert OutagePolicy.from_settings(s) == OutagePolicy(budget=7.5, retries=2)


async def test_backoff_doubles_to_its_cap_and_never_outlasts_the_budget() -> None:
    policy = OutagePolicy(budget=1000.0, backoff_first=0.1, backoff_max=1.0)
    outage = policy.begin()
    assert outage.failed()
    assert [outage.pause() for _ in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    short = OutagePolicy(budget=0.05, backoff_first=0.1).begin()
    assert short.failed()
    assert short.pause() <= 0.05 + 0.01 + 1e-6


async def test_a_timed_out_attempt_counts_from_when_it_was_sent() -> None:
    outage = OutagePolicy(budget=2.0).begin(retries=0)
    assert not outage.failed(waited=2.5)  # one attempt that waited past the budget
    assert outage.spent >= 2.5
    assert outage.attempts == 1


async def test_retries_is_a_minimum_even_once_the_budget_is_spent() -> None:
    outage = OutagePolicy(budget=0.0, retries=3).begin()
    assert [outage.failed() for _ in range(5)] == [True, True, True, False, False]


class Flaky(Exception):
    pass


async def test_retry_returns_once_the_operation_succeeds_and_raises_what_is_not_transient() -> None:
    calls = 0
    pauses: list[float] = []

    async def op() -> str:
        nonlocal calls
        calls += 1
        if calls < 4:
            raise Flaky(calls)
        return "done"

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    def transient(e: Exception) -> bool | None:
        return True if isinstance(e, Flaky) else None

    policy = OutagePolicy(budget=30.0)
    assert await retry(op, policy, what="op", transient=transient, sleep=sleep) == "done"
    assert calls == 4
    assert pauses == pytest.approx([0.1, 0.2, 0.4])

    async def broken() -> str:
        raise ValueError("not an outage")

    with pytest.raises(ValueError, match="not an outage"):
        await retry(broken, policy, what="op", transient=transient, sleep=sleep)


async def test_retry_gives_up_with_the_callers_error_once_the_budget_is_spent() -> None:
    async def op() -> None:
        raise Flaky("down")

    def transient(e: Exception) -> bool | None:
        return True if isinstance(e, Flaky) else None

    with pytest.raises(RuntimeError, match=r"gave up after \d attempts") as err:
        await retry(
            op,
            OutagePolicy(budget=0.05, backoff_first=0.01),
            what="op",
            transient=transient,
            spent=lambda outage, e: RuntimeError(f"gave up after {outage.attempts} attempts"),
        )
    assert isinstance(err.value.__cause__, Flaky)
    stopped = asyncio.Event()
    stopped.set()
    with pytest.raises(Flaky):  # a stopped operation raises at once, whatever the budget
        await retry(
            op, OutagePolicy(budget=30.0), what="op", transient=transient, stopped=stopped.is_set
        )
