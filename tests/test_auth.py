"""The users of ``nats.conf`` (docs/protocol.md, Authorization) against the session server, which runs that file.

The permissions name the default prefix, so these tests use ``genjobs`` (not a per-test prefix);
every job id is unique, and nothing here depends on another test's jobs. Denied publishes are
silent for the publisher except for the server's ``-ERR 'Permissions Violation ...'``, which
nats-py hands to ``error_cb``; the tests wait for that error and then check, as the replica
user, that nothing was stored.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, NotFoundError

from service import simulate as sim
from service.client.presence import presence_hub
from service.client.sessions import SessionStore
from service.config import Settings
from service.server.replica import Replica
from tests.helpers import wait_for
from tests.http_helpers import (
    auth,
    gateway,
    http_settings,
    produce,
    read_sse,
    seen,
    serving,
    stored,
)

READER = ("reader", "reader-local-only")
PRODUCER = ("producer", "producer-local-only")
GATEWAY = ("gateway", "gateway-local-only")
T = 10.0


@pytest.fixture
def gsettings(settings: Settings) -> Settings:
    """The test settings under the prefix the permissions in nats.conf are written for."""
    return settings.with_(prefix="genjobs")


class Client:
    """A connection as one of the nats.conf users, collecting the errors the server sends."""

    def __init__(self) -> None:
        self.errors: asyncio.Queue[str] = asyncio.Queue()
        self.nc: NATS = NATS()

    async def connect(self, url: str, user: str, password: str) -> NATS:
        async def on_error(e: Exception) -> None:
            await self.errors.put(str(e))

        await self.nc.connect(
            url, user=user, password=password, error_cb=on_error, max_reconnect_attempts=1
        )
        return self.nc

    async def violation(self, subject: str) -> str:
        """Wait for the server's permission error about ``subject`` (publish or subscribe).

        nats-py lower-cases the server's message, subject included.
        """
        wanted = f'"{subject}"'.lower()
        async with asyncio.timeout(T):
            while True:
                err = (await self.errors.get()).lower()
                if "permissions violation" in err and wanted in err:
                    return err

    def no_errors(self) -> list[str]:
        out = []
        while not self.errors.empty():
            out.append(self.errors.get_nowait())
        return out


@asynccontextmanager
async def as_user(url: str, who: tuple[str, str]) -> AsyncIterator[Client]:
    client = Client()
    await client.connect(url, *who)
    try:
        yield client
    finally:
        await client.nc.close()


def _is(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def request(nc: NATS, subject: str, body: Any) -> Any:
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=T)
    return json.loads(msg.data)


async def finished_job(replica: Any, user: str) -> tuple[str, list[dict[str, Any]]]:
    job_id = "auth-" + uuid.uuid4().hex[:12]
    events = list(sim.generation(job_id, tokens=5, reasoning=0, with_tool=False))
    job = await replica.create_job(user, job_id=job_id)
    for ev in events:
        await job.emit(ev)
    await job.complete(sim.final_event(job_id))
    return job_id, events


async def denied_then_absent(
    client: Client, subject: str, still_absent: Callable[[], Awaitable[None]]
) -> None:
    """Publish as ``client``; the server refuses it, and nothing appears."""
    with pytest.raises(NatsTimeout):  # a JetStream publish that is refused gets no ack
        await client.nc.request(subject, b'{"error":"forged"}', timeout=0.5)
    await client.violation(subject)
    await still_absent()


async def test_connections_without_credentials_are_the_full_replica_user(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().account_info()  # JetStream works for the default user
        assert info.limits is not None
    finally:
        await nc.close()


async def test_a_wrong_password_is_refused(nats_url: str) -> None:
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    with pytest.raises(nats.errors.NoServersError):
        await nats.connect(
            nats_url,
            user="reader",
            password="wrong",
            error_cb=on_error,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.05,
        )
    assert errors
    assert any("authorization violation" in e.lower() for e in errors), errors


async def cannot_publish_events(
    replica: Replica, user: NATS, gsettings: Settings, job_id: str
) -> None:
    """``user`` is refused a publish on the job's event subject, and no event is stored."""
    js = replica.nc.jetstream()
    subject = f"genjobs.events.{job_id}"
    last_before = (await js.get_last_msg(gsettings.stream_name, subject)).seq

    async def no_new_event() -> None:
        last = await js.get_last_msg(gsettings.stream_name, subject)
        assert last.seq == last_before

    await denied_then_absent(user, subject, no_new_event)


async def test_reader_cannot_publish_events_nor_write_kv(
    nats_url: str, gsettings: Settings
) -> None:
    async with serving(gsettings) as replica, as_user(nats_url, READER) as reader:
        job_id, _ = await finished_job(replica, "u-auth")
        js = replica.nc.jetstream()
        await cannot_publish_events(replica, reader, gsettings, job_id)

        forged = "auth-forged-" + uuid.uuid4().hex[:8]

        async def no_record() -> None:
            kv = await js.key_value(gsettings.jobs_bucket)
            with pytest.raises(KeyNotFoundError):
                await kv.get(forged)

        await denied_then_absent(reader, f"$KV.genjobs-jobs.{forged}", no_record)
        # Nor may it create or delete streams.
        await reader.nc.publish("$JS.API.STREAM.DELETE.GENJOBS_EVENTS", b"")
        await reader.violation("$JS.API.STREAM.DELETE.GENJOBS_EVENTS")
        assert (await js.stream_info(gsettings.stream_name)).config.name == "GENJOBS_EVENTS"


async def test_reader_reads_live_and_by_direct_get_and_calls_the_api(
    nats_url: str, gsettings: Settings
) -> None:
    async with serving(gsettings) as replica, as_user(nats_url, READER) as reader:
        nc = reader.nc
        job_id = "auth-" + uuid.uuid4().hex[:12]
        live = await nc.subscribe(f"genjobs.live.{job_id}")
        await nc.flush()
        job = await replica.create_job("u-auth", job_id=job_id)
        await job.emit(sim.created_event(job_id))
        first = await live.next_msg(timeout=T)  # the stream republished it to the reader
        assert json.loads(first.data)["created"] is True
        assert first.headers is not None
        assert first.headers["Genjobs-Kind"] == "created"
        await live.unsubscribe()

        # A reader hub that announces presence: the owner counts it, then reads it all.
        hub, announcer = presence_hub(nc, gsettings, interval=0.5)
        async with hub, hub.subscribe(job_id) as stream:
            await wait_for(_is(lambda: replica.watchers(job_id) == 1))
            for ev in sim.generation(job_id, tokens=4, reasoning=0, with_tool=False):
                if "created" not in ev:
                    await job.emit(ev)
            await job.complete(sim.final_event(job_id))
            events = [ev async for ev in stream]  # live, then replay by Direct Get if needed
        await announcer.stop()
        assert events[0].kind == "created"
        assert events[-1].kind == "final"

        status = await request(nc, "genjobs.api.status", {"jobId": job_id, "userId": "u-auth"})
        assert status["status"] == "complete"
        other = await request(nc, "genjobs.api.status", {"jobId": job_id, "userId": "someone"})
        assert other["error"]["code"] == "forbidden"  # the service still checks the user

        # Durable reader sessions work with the reader's permissions too.
        sessions = SessionStore(nc, gsettings)
        async with await sessions.open(job_id, "auth-session") as session:
            got = await session.read(max_events=100, timeout=2.0)
            assert [e.seq for e in got] == [e.seq for e in events]
            await session.ack(got[-1].seq)
            assert (await session.info()).num_ack_pending == 0
        assert await sessions.delete(job_id, "auth-session")
        assert reader.no_errors() == []


async def test_producer_creates_and_ingests_but_cannot_write_the_stream(
    nats_url: str, gsettings: Settings
) -> None:
    async with serving(gsettings) as replica, as_user(nats_url, PRODUCER) as producer:
        nc = producer.nc
        rec = await request(nc, "genjobs.api.create", {"userId": "u-prod"})
        job_id = rec["streamId"]
        events = list(sim.generation(job_id, tokens=3, reasoning=0, with_tool=False))
        reply = await request(
            nc,
            f"genjobs.ingest.{job_id}",
            {"firstIndex": 0, "events": events, "complete": sim.final_event(job_id)},
        )
        assert reply["ok"] is True, reply
        js = replica.nc.jetstream()
        last = await js.get_last_msg(gsettings.stream_name, f"genjobs.events.{job_id}")
        assert last.headers is not None
        assert last.headers["Genjobs-Kind"] == "final"

        async def unchanged() -> None:
            again = await js.get_last_msg(gsettings.stream_name, f"genjobs.events.{job_id}")
            assert again.seq == last.seq

        await denied_then_absent(producer, f"genjobs.events.{job_id}", unchanged)

        # Nor can it eavesdrop on the live subjects or read the stream directly.
        await nc.subscribe(f"genjobs.live.{job_id}")
        await producer.violation(f"genjobs.live.{job_id}")
        fresh = "auth-none-" + uuid.uuid4().hex[:8]

        async def nothing() -> None:
            with pytest.raises(NotFoundError):
                await js.get_last_msg(gsettings.stream_name, f"genjobs.events.{fresh}")

        await denied_then_absent(producer, f"genjobs.events.{fresh}", nothing)


async def test_gateway_serves_chat_and_durable_streams_with_its_own_permissions(
    nats_url: str, gsettings: Settings
) -> None:
    """The compose gateway's user: every route works, and the server refuses nothing."""
    async with (
        serving(gsettings) as replica,
        as_user(nats_url, GATEWAY) as client,
        gateway(gsettings, nc=client.nc) as gw,
        aiohttp.ClientSession() as http,
    ):
        async with http.get(gw.url + "/readyz") as r:
            assert r.status == 200, await r.text()
        async with http.get(gw.url + "/metrics") as r:
            assert r.status == 200
        chat = gw.url + http_settings().chat_prefix
        done = "auth-gw-" + uuid.uuid4().hex[:8]
        await produce(replica, "u-gw", done, tokens=4)
        got = await read_sse(http, f"{chat}/stream/{done}", headers=auth("u-gw"))
        assert got.complete
        assert seen(got.frames) == await stored(replica.nc, gsettings, done)
        async with http.get(f"{chat}/status/{done}", headers=auth("u-gw")) as r:
            assert (await r.json())["status"] == "complete"

        running = "auth-gw-" + uuid.uuid4().hex[:8]
        gate, created = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(produce(replica, "u-gw", running, gate=gate, created=created))
            await created.wait()
            async with http.get(f"{chat}/active", headers=auth("u-gw")) as r:
                assert running in (await r.json())["activeJobIds"]
            async with http.post(
                f"{chat}/abort", json={"streamId": running}, headers=auth("u-gw")
            ) as r:
                assert await r.json() == {"success": True, "aborted": running}
            gate.set()

        # Durable Streams: its own stream and bucket (provisioned at start), and a job's log.
        ds = f"{gw.url}/v1/stream/"
        text = {"Content-Type": "text/plain", **auth("u-gw")}
        notes = ds + "notes-" + uuid.uuid4().hex[:8]
        async with http.put(notes, data="a", headers=text) as r:
            assert r.status == 201, (await r.text(), client.no_errors())
            tail = r.headers["Stream-Next-Offset"]

        async def poll() -> bytes:
            params = {"offset": tail, "live": "long-poll"}
            async with http.get(notes, params=params, headers=auth("u-gw")) as r:
                assert r.status == 200, await r.text()
                return await r.read()

        async with asyncio.TaskGroup() as tg:
            woken = tg.create_task(poll())
            while not woken.done():  # the poll may subscribe before or after an append
                async with http.post(notes, data="b", headers=text) as r:
                    assert r.status == 204, await r.text()
                await asyncio.wait([woken], timeout=0.2)
        assert woken.result().startswith(b"b")
        async with http.get(notes, params={"offset": "-1"}, headers=auth("u-gw")) as r:
            assert (await r.read()).startswith(b"ab")
        async with http.get(ds + "jobs/" + done, headers=auth("u-gw")) as r:
            assert r.status == 200
            assert r.headers["Stream-Closed"] == "true"
        async with http.delete(notes, headers=auth("u-gw")) as r:
            assert r.status == 204, await r.text()
        async with http.head(notes, headers=auth("u-gw")) as r:
            assert r.status == 404
        async with http.put(notes, data="again", headers=text) as r:  # a deleted name anew
            assert r.status == 201, (await r.text(), client.no_errors())
        async with http.get(notes, params={"offset": "-1"}, headers=auth("u-gw")) as r:
            assert await r.read() == b"again"
        assert client.no_errors() == []


async def test_gateway_cannot_write_job_events_records_or_other_streams(
    nats_url: str, gsettings: Settings
) -> None:
    async with serving(gsettings) as replica, as_user(nats_url, GATEWAY) as gw:
        job_id, _ = await finished_job(replica, "u-auth")
        js = replica.nc.jetstream()
        await cannot_publish_events(replica, gw, gsettings, job_id)

        kv = await js.key_value(gsettings.jobs_bucket)
        record = await kv.get(job_id)

        async def record_unchanged() -> None:
            now = await kv.get(job_id)
            assert (now.revision, now.value) == (record.revision, record.value)

        await denied_then_absent(gw, f"$KV.genjobs-jobs.{job_id}", record_unchanged)
        for forbidden in (
            "$JS.API.STREAM.DELETE.GENJOBS_EVENTS",
            "$JS.API.STREAM.PURGE.GENJOBS_EVENTS",
            "$JS.API.STREAM.CREATE.GENJOBS_OTHER",
            "genjobs.abort." + job_id,
        ):
            await gw.nc.publish(forbidden, b"")
            await gw.violation(forbidden)
        await gw.nc.subscribe("genjobs.events.>")
        await gw.violation("genjobs.events.>")
        assert (await js.stream_info(gsettings.stream_name)).config.name == "GENJOBS_EVENTS"
