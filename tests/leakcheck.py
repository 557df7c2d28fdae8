"""Teardown check: an async test leaves no task behind (CONVENTIONS: "no task without an owner").

Every async test gets ``no_task_left_behind``: as an autouse fixture it is set up first and torn
down last, after the test's replicas, hubs and connections have been closed by their own
fixtures. Tasks the test started that are still running then are waited for a bounded moment
(a connection's reader task finishing its close, say) and, if they still run, cancelled and
reported: something started work that nobody owns or stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

GRACE = 5.0
"""How long tasks may take to finish after the test's own teardown (they are awaited, not slept)."""


def _describe(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    where = getattr(coro, "__qualname__", repr(coro))
    return f"{task.get_name()} ({where})"


@pytest.fixture(autouse=True)
async def no_task_left_behind() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    me = asyncio.current_task()
    started = {t for t in asyncio.all_tasks() - before if t is not me and not t.done()}
    if started:
        await asyncio.wait(started, timeout=GRACE)
    left = [t for t in started if not t.done()]
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=GRACE)
    assert not left, "tasks still running after teardown: " + ", ".join(
        sorted(_describe(t) for t in left)
    )
