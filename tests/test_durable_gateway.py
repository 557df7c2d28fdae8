"""Durable Streams inside the HTTP gateway with its JWT authentication on: a stream belongs to
the tenant and user that created it, a job's stream to the job's user."""

from __future__ import annotations

import aiohttp

from service import simulate
from service.config import Settings

from .http_helpers import auth, gateway, serving

TEXT = {"Content-Type": "text/plain"}


async def test_with_jwt_a_stream_belongs_to_its_creator_and_a_job_to_its_user(
    settings: Settings,
) -> None:
    async with serving(settings) as replica, gateway(settings) as gw:
        base = gw.url + "/v1/stream/"
        async with aiohttp.ClientSession() as http:
            async with http.put(
                base + "notes", data="mine", headers={**TEXT, **auth("alice")}
            ) as r:
                assert r.status == 201
            async with http.get(base + "notes", headers=auth("alice")) as r:
                assert r.status == 200
                assert await r.read() == b"mine"
            for other in (auth("bob"), auth("alice", "t2")):
                async with http.get(base + "notes", headers=other) as r:
                    assert r.status == 403
                async with http.post(base + "notes", data="x", headers={**TEXT, **other}) as r:
                    assert r.status == 403
            async with http.get(base + "notes") as r:
                assert r.status == 401
            async with http.options(base + "notes") as r:
                assert r.status == 204
            job = await replica.create_job("carol")
            async with job:
                await job.complete(simulate.final_event(job.job_id))
            async with http.get(base + "jobs/" + job.job_id, headers=auth("carol")) as r:
                assert r.status == 200
                assert r.headers["Stream-Closed"] == "true"
            async with http.get(base + "jobs/" + job.job_id, headers=auth("alice")) as r:
                assert r.status == 403
