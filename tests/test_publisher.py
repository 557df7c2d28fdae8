"""The fenced publisher: a retry after an ambiguous failure never stores an event twice."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from schemas.errors import OwnershipLost, StoreFailed
from service.config import Settings
from service.nats.provision import provision
from service.nats.publisher import FencedPublisher, PublishRejected


def _headers(index: int, writer: str = "r1") -> dict[str, str]:
    return {"Genjobs-Kind": "step", "Genjobs-Index": str(index), "Genjobs-Writer": writer}


async def test_retry_after_a_lost_ack_returns_the_stored_sequence_without_a_duplicate(
    nc: NATS, settings: Settings
) -> None:
    await provision(nc.jetstream(), settings)
    pub = FencedPublisher(nc, timeout=2)
    await pub.start()
    subject = settings.events_subject("j")
    s1 = await pub.publish_fenced(
        settings.stream_name, subject, b"{}", _headers(0), expected_last=0, index=0
    )
    # The ack of the next publish is "lost": the event is stored, the producer retries it.
    s2 = await pub.publish_fenced(
        settings.stream_name, subject, b"{}", _headers(1), expected_last=s1, index=1
    )
    retried = await pub.publish_fenced(
        settings.stream_name, subject, b"{}", _headers(1), expected_last=s1, index=1
    )
    assert retried == s2
    info = await nc.jetstream().stream_info(settings.stream_name)
    assert info.state.messages == 2  # stored once
    await pub.close()


async def test_another_writer_at_the_same_index_fences_the_old_owner_out(
    nc: NATS, settings: Settings
) -> None:
    await provision(nc.jetstream(), settings)
    pub = FencedPublisher(nc, timeout=2)
    await pub.start()
    subject = settings.events_subject("j")
    s1 = await pub.publish_fenced(
        settings.stream_name, subject, b"{}", _headers(0), expected_last=0, index=0
    )
    # A replica taking over writes the terminal event at index 1 ...
    await pub.publish_fenced(
        settings.stream_name,
        subject,
        b'{"error":"owner lost"}',
        _headers(1, "takeover:r2"),
        expected_last=s1,
        index=1,
    )
    # ... so the old owner's event at index 1 is refused, not stored after the terminal.
    with pytest.raises(OwnershipLost):
        await pub.publish_fenced(
            settings.stream_name, subject, b"{}", _headers(1), expected_last=s1, index=1
        )
    info = await nc.jetstream().stream_info(settings.stream_name)
    assert info.state.messages == 2
    await pub.close()


async def test_a_refused_event_is_a_store_failure(nc: NATS, settings: Settings) -> None:
    small = settings.with_(max_events_per_job=1)
    await provision(nc.jetstream(), small)
    pub = FencedPublisher(nc, timeout=2)
    await pub.start()
    subject = small.events_subject("j")
    s1 = await pub.publish_fenced(
        small.stream_name, subject, b"{}", _headers(0), expected_last=0, index=0
    )
    with pytest.raises(StoreFailed, match="refused"):
        await pub.publish_fenced(
            small.stream_name, subject, b"{}", _headers(1), expected_last=s1, index=1
        )
    with pytest.raises(PublishRejected):
        await pub.publish_once(subject, b"{}", {"Nats-Expected-Last-Subject-Sequence": "0"})
    await pub.close()


def test_a_fenced_write_still_in_flight_on_a_replicated_stream_is_retried_not_refused() -> None:
    """10164, "wrong last sequence" without a sequence: another fenced write to the subject is
    being processed (often our own timed-out attempt); 10071 is the verdict, 10077 a full
    subject that no retry fixes."""
    from service.nats.publisher import PublishRejected

    assert PublishRejected(10164, "wrong last sequence", 400).transient
    assert not PublishRejected(10071, "wrong last sequence: 7", 400).transient
    assert not PublishRejected(10077, "maximum messages per subject exceeded", 503).transient
