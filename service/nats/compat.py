"""Every use of nats-py internals, in one place: read this file when nats-py is upgraded.

genjobs uses nats-py's public API everywhere but here. Four things have no public API:

* **The raw message hook** (:func:`raw_routes`). nats-py's parser calls
  ``await nc._process_msg(sid, subject, reply, data, headers)`` for every message, before it
  parses the header block into a dict (~1.2 µs per header) and queues a ``Msg`` for the
  subscription's task. Direct Get replies (``service/nats/directget.py``) are routed by
  subscription id here instead and handled inline from the raw bytes: the replay path of every
  reader, 70 % of its time before (docs/nats-py.md).
* **A subscription's id and task** (:func:`subscription_id`, :func:`subscription_task`): the
  id keys the route above; the task nats-py runs for a ``cb=`` subscription is only cancelled
  by ``unsubscribe()``, so a closing reader hub awaits it (``service/client/reader.py``).
* **nats.micro's request message** (:func:`request_msg`): ``Request`` hides the reply subject,
  which the service API must check (a plain publish is processed and not answered).
* **nats.micro's endpoint counters** (:func:`last_endpoint`, :func:`add_endpoint_stats`):
  an endpoint handler that hands its request to a task returns at once, so the task adds the
  real processing time and the errors itself (``nats micro stats``).

Nothing here falls back silently. :func:`check` runs at import and raises
:class:`NatsPyChanged` if any of these has changed shape (a signature, or an attribute the
constructor no longer sets); ``tests/test_compat.py`` also checks the live objects against a real
server. Checked against nats-py 2.16 (pinned range in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Final

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import Request
from nats.micro.service import Endpoint, Service


class NatsPyChanged(ImportError):
    """The installed nats-py no longer has the shape ``service/nats/compat.py`` relies on."""


_PROCESS_MSG_PARAMS: Final = ["self", "sid", "subject", "reply", "data", "headers"]
_SET_BY_INIT: Final[list[tuple[type, frozenset[str]]]] = [
    (Subscription, frozenset({"_id", "_wait_for_msgs_task"})),
    (Request, frozenset({"_msg"})),
    (
        Endpoint,
        frozenset(
            {
                "_num_requests",
                "_num_errors",
                "_processing_time",
                "_average_processing_time",
                "_last_error",
            }
        ),
    ),
    (Service, frozenset({"_endpoints"})),
]


def check() -> None:
    """Raise :class:`NatsPyChanged` unless every internal used here is where it was.

    Checks the signature of ``Client._process_msg`` and, by the names each constructor's code
    assigns, the attributes read below.
    """
    process = getattr(NATS, "_process_msg", None)
    if process is None or not inspect.iscoroutinefunction(process):
        raise NatsPyChanged("nats-py: Client._process_msg is gone or no longer a coroutine")
    params = list(inspect.signature(process).parameters)
    if params != _PROCESS_MSG_PARAMS:
        raise NatsPyChanged(f"nats-py: Client._process_msg{tuple(params)} changed its parameters")
    for cls, names in _SET_BY_INIT:
        missing = names - set(vars(cls)["__init__"].__code__.co_names)
        if missing:
            raise NatsPyChanged(f"nats-py: {cls.__name__}() no longer sets {sorted(missing)}")
    if "_endpoints" not in Service.add_endpoint.__code__.co_names:
        raise NatsPyChanged("nats-py: Service.add_endpoint no longer appends to _endpoints")


check()


# --- the raw message hook --------------------------------------------------------------------

RawHandler = Callable[[bytes, "bytes | None", bytes], None]
"""An inline handler: (subject, raw header block or None, payload), called in the read loop.
It must not raise and must not block: it runs inside nats-py's read loop."""

_routes: weakref.WeakKeyDictionary[NATS, dict[int, RawHandler]] = weakref.WeakKeyDictionary()


class _Done:
    """An awaitable already complete: what the wrapped ``_process_msg`` returns when it handled
    a message inline (nats-py's parser awaits the result)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_DONE: Final = _Done()


def raw_routes(nc: NATS) -> dict[int, RawHandler]:
    """The connection's inline routes (subscription id -> handler), installed on first use.

    The wrapper hands a message whose sid has a route to its handler (counting it in
    ``nc.stats`` as nats-py would) and passes every other message to nats-py's method
    untouched (the same coroutine, no extra frame).
    """
    routes = _routes.get(nc)
    if routes is not None:
        return routes
    original = nc._process_msg
    table: dict[int, RawHandler] = {}
    stats: dict[str, int] = nc.stats

    def process_msg(
        sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> Awaitable[None]:
        handler = table.get(sid)
        if handler is None:
            result: Awaitable[None] = original(sid, subject, reply, data, headers)  # type: ignore[arg-type]
            return result
        stats["in_msgs"] += 1
        stats["in_bytes"] += len(data)
        handler(subject, headers, data)
        return _DONE

    nc._process_msg = process_msg  # type: ignore[method-assign,assignment]
    _routes[nc] = table
    return table


def routed(nc: NATS) -> dict[int, RawHandler]:
    """The connection's routes if :func:`raw_routes` installed them, else an empty dict."""
    routes = _routes.get(nc)
    return {} if routes is None else routes


# --- subscriptions ---------------------------------------------------------------------------


def subscription_id(sub: Subscription) -> int:
    """The sid nats-py passes to ``_process_msg`` for this subscription's messages."""
    sid: int = sub._id
    return sid


def subscription_task(sub: Subscription) -> asyncio.Task[None] | None:
    """The task nats-py runs for a ``cb=`` subscription (``None`` before it started)."""
    task: asyncio.Task[None] | None = sub._wait_for_msgs_task
    return task


# --- nats.micro ------------------------------------------------------------------------------


def request_msg(req: Request) -> Msg:
    """The message of a micro request (its reply subject above all)."""
    msg: Msg = req._msg
    return msg


def last_endpoint(service: Service) -> Endpoint:
    """The endpoint the last ``add_endpoint`` call registered (nats-py does not return it)."""
    endpoint: Endpoint = service._endpoints[-1]
    return endpoint


def add_endpoint_stats(endpoint: Endpoint, elapsed_ns: int, error: str | None) -> None:
    """Add a request's real processing time, and its error if it failed, to the endpoint's
    counters (nats.micro counted the request when its handler returned)."""
    ep: Any = endpoint  # nats-py types _last_error as None
    ep._processing_time += elapsed_ns
    ep._average_processing_time = ep._processing_time // max(1, ep._num_requests)
    if error is not None:
        ep._num_errors += 1
        ep._last_error = error
