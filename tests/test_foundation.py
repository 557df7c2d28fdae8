"""The embedded server launcher and provisioning, against real nats-server processes."""

from __future__ import annotations

import tempfile

import pytest
from nats.aio.client import Client as NATS

from service.config import Settings
from service.nats.embedded import EmbeddedServer, EmbeddedServerError
from service.nats.provision import (
    ProvisionMismatch,
    ensure_stream,
    events_stream_config,
    provision,
)


def test_embedded_server_reports_a_taken_port_in_plain_words(nats_server: EmbeddedServer) -> None:
    second = EmbeddedServer(tempfile.mkdtemp(), port=nats_server.port or 0)
    with pytest.raises(EmbeddedServerError, match="already in use"):
        second.start()
    assert second.stop() is not None  # the failed child was reaped, not left behind


def test_embedded_server_reports_an_unusable_data_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EmbeddedServerError, match="data dir"):
        EmbeddedServer(blocker / "store", port=-1).start()


def test_embedded_server_stops_cleanly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    srv = EmbeddedServer(tmp_path, port=-1)
    url = srv.start()
    assert url.startswith("nats://127.0.0.1:")
    assert srv.stop() == 0


async def test_provisioning_is_idempotent_and_sets_what_the_design_lists(
    nc: NATS, settings: Settings
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    await provision(js, settings)  # second run: no error, nothing changed
    info = await js.stream_info(settings.stream_name)
    cfg = info.config
    assert cfg.subjects == [f"{settings.prefix}.events.*"]
    assert cfg.allow_direct is True
    assert cfg.discard_new_per_subject is True
    assert cfg.max_msgs_per_subject == settings.max_events_per_job
    assert cfg.max_consumers == settings.max_consumers
    assert cfg.republish is not None
    assert cfg.republish.dest.startswith(f"{settings.prefix}.live.")
    for bucket in (settings.jobs_bucket, settings.users_bucket, settings.replicas_bucket):
        kv_info = await js.stream_info(f"KV_{bucket}")
        assert kv_info.config.allow_direct is True
        assert kv_info.config.allow_msg_ttl is True


async def test_provisioning_refuses_a_stream_with_other_settings(
    nc: NATS, settings: Settings
) -> None:
    js = nc.jetstream()
    await provision(js, settings)
    other = settings.with_(max_events_per_job=10)
    with pytest.raises(ProvisionMismatch) as err:
        await ensure_stream(js, events_stream_config(other))
    assert "max_msgs_per_subject" in err.value.diffs
    assert err.value.diffs["max_msgs_per_subject"] == (settings.max_events_per_job, 10)


async def test_per_job_cap_refuses_instead_of_dropping_history(
    nc: NATS, settings: Settings
) -> None:
    js = nc.jetstream()
    small = settings.with_(max_events_per_job=3)
    await provision(js, small)
    subject = small.events_subject("capped")
    for i in range(3):
        await js.publish(subject, str(i).encode())
    with pytest.raises(Exception, match="maximum messages per subject exceeded"):
        await js.publish(subject, b"3")
    first = await js.get_msg(small.stream_name, seq=1)
    assert first.data == b"0"  # the oldest event is still there
