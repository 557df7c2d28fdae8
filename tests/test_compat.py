"""The nats-py internals genjobs uses (service/nats/compat.py), checked on live objects.

If a nats-py upgrade moves one of them, these fail by name; nothing falls back silently.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Endpoint

from service.nats import compat

WAIT = 10.0


def test_the_import_time_check_passes_and_refuses_a_changed_shape(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compat.check()

    async def renamed(self: Any, sid: int, subject: bytes, reply: bytes, payload: bytes) -> None:
        """``_process_msg`` with a parameter renamed and one dropped."""

    monkeypatch.setattr(NATS, "_process_msg", renamed)
    with pytest.raises(compat.NatsPyChanged, match="_process_msg"):
        compat.check()
    monkeypatch.undo()

    def bare_init(self: Any, msg: Msg) -> None:
        """A ``Request`` that no longer keeps its message."""

    monkeypatch.setattr(Request, "__init__", bare_init)
    with pytest.raises(compat.NatsPyChanged, match=r"Request.*_msg"):
        compat.check()


async def test_subscription_id_task_and_raw_routes_on_a_live_connection(nc: NATS) -> None:
    got: list[tuple[bytes, bytes | None, bytes]] = []
    routed = asyncio.Event()
    plain = asyncio.Event()

    async def on_plain(msg: Msg) -> None:
        plain.set()

    routed_sub = await nc.subscribe("compat.routed", cb=on_plain)
    plain_sub = await nc.subscribe("compat.plain", cb=on_plain)
    sid = compat.subscription_id(routed_sub)
    assert isinstance(sid, int)
    assert nc._subs[sid] is routed_sub  # the id nats-py routes the sub's messages by
    task = compat.subscription_task(plain_sub)
    assert isinstance(task, asyncio.Task)
    assert not task.done()

    def handler(subject: bytes, headers: bytes | None, data: bytes) -> None:
        got.append((subject, headers, data))
        routed.set()

    routes = compat.raw_routes(nc)
    assert compat.raw_routes(nc) is routes  # installed once per connection
    assert compat.routed(nc) is routes
    routes[sid] = handler
    before = nc.stats["in_msgs"]
    await nc.publish("compat.routed", b"raw", headers={"X-A": "1"})
    await nc.publish("compat.plain", b"parsed")
    async with asyncio.timeout(WAIT):
        await routed.wait()
        await plain.wait()
    ((subject, headers, data),) = got
    assert (subject, data) == (b"compat.routed", b"raw")
    assert headers is not None
    assert headers.startswith(b"NATS/1.0\r\n")
    assert b"X-A: 1" in headers
    assert nc.stats["in_msgs"] - before == 2  # the routed one is counted as nats-py would
    del routes[sid]
    await routed_sub.unsubscribe()
    await plain_sub.unsubscribe()
    await asyncio.wait([task], timeout=WAIT)
    assert task.done()


async def test_micro_request_message_and_endpoint_counters(nc: NATS) -> None:
    seen: list[Msg] = []

    async def handler(req: Request) -> None:
        seen.append(compat.request_msg(req))
        await req.respond(b"ok")

    service = await add_service(nc, name="compatcheck", version="0.0.1")
    try:
        await service.add_endpoint(name="ping", subject="compat.ping", handler=handler)
        endpoint = compat.last_endpoint(service)
        assert isinstance(endpoint, Endpoint)
        reply = await nc.request("compat.ping", b"hi", timeout=WAIT)
        assert reply.data == b"ok"
        (msg,) = seen
        assert isinstance(msg, Msg)
        assert msg.reply  # what compat exists for: the reply subject
        assert msg.data == b"hi"
        compat.add_endpoint_stats(endpoint, 5_000_000, "500:boom")
        (stats,) = service.stats().endpoints
        assert stats.name == "ping"
        assert stats.num_requests == 1
        assert stats.num_errors == 1
        assert stats.last_error == "500:boom"
        assert stats.processing_time >= 5_000_000
        assert stats.average_processing_time == stats.processing_time
    finally:
        await service.stop()


def test_every_internal_accessor_is_listed_in_the_module() -> None:
    """The module docstring lists what it wraps; a new accessor must be documented there."""
    doc = compat.__doc__ or ""
    public = [
        name
        for name, obj in vars(compat).items()
        if inspect.isfunction(obj)
        and not name.startswith("_")
        and obj.__module__ == compat.__name__
    ]
    for name in public:
        if name in ("check", "routed"):
            continue
        assert f":func:`{name}`" in doc, name
