"""Validation of one append against a stream's state (no I/O): closed, producer, Stream-Seq."""

from __future__ import annotations

from service.nats.directget import StoredMsg

from . import protocol as p
from .model import (
    M_APPEND,
    M_CLOSE,
    M_EPOCH,
    M_PRODUCER,
    M_PSEQ,
    M_SEQ,
    AppendOutcome,
    AppendRequest,
    DsError,
    StreamState,
)


def decide(st: StreamState, req: AppendRequest) -> AppendOutcome | DsError | None:
    """The answer to ``req`` without storing anything (a success or an error), or ``None``:
    store it.

    Order as the specification's: closed, then the producer (a retried duplicate is a success
    even if its Stream-Seq would now conflict), then Stream-Seq.
    """
    try:
        return _verdict(st, req)
    except DsError as e:
        return e


def _verdict(st: StreamState, req: AppendRequest) -> AppendOutcome | None:
    tail = p.format_offset(st.tail)
    prod = req.producer
    if st.closed:
        if prod is not None and st.closed_by == (prod.id, prod.epoch, prod.seq):
            return AppendOutcome(
                204,
                {
                    p.H_NEXT_OFFSET: tail,
                    p.H_CLOSED: "true",
                    p.H_PRODUCER_EPOCH: str(prod.epoch),
                    p.H_PRODUCER_SEQ: str(prod.seq),
                },
            )
        if req.payload is None and prod is None:
            return AppendOutcome(204, {p.H_NEXT_OFFSET: tail, p.H_CLOSED: "true"})
        raise DsError(409, "Stream is closed", {p.H_CLOSED: "true", p.H_NEXT_OFFSET: tail})
    if prod is not None:
        state = st.producers.get(prod.id)
        if state is None:
            if prod.seq != 0:
                _gap(0, prod.seq)
        else:
            epoch, last = state
            if prod.epoch < epoch:
                raise DsError(403, "Stale producer epoch", {p.H_PRODUCER_EPOCH: str(epoch)})
            if prod.epoch > epoch:
                if prod.seq != 0:
                    raise DsError(400, "New epoch must start with sequence 0")
            elif prod.seq <= last:
                return AppendOutcome(
                    204,
                    {
                        p.H_NEXT_OFFSET: tail,
                        p.H_PRODUCER_EPOCH: str(prod.epoch),
                        p.H_PRODUCER_SEQ: str(last),
                    },
                )
            elif prod.seq != last + 1:
                _gap(last + 1, prod.seq)
    if (
        req.stream_seq is not None
        and st.stream_seq is not None
        and req.stream_seq.encode() <= st.stream_seq.encode()
    ):
        raise DsError(409, "Sequence conflict")
    return None


def _gap(expected: int, received: int) -> None:
    raise DsError(
        409,
        "Producer sequence gap",
        {p.H_PRODUCER_EXPECTED: str(expected), p.H_PRODUCER_RECEIVED: str(received)},
    )


def message_headers(req: AppendRequest, append_id: str) -> dict[str, str]:
    h = {M_APPEND: append_id}
    if req.close:
        h[M_CLOSE] = "1"
    if req.producer is not None:
        h[M_PRODUCER] = req.producer.id
        h[M_EPOCH] = str(req.producer.epoch)
        h[M_PSEQ] = str(req.producer.seq)
    if req.stream_seq is not None:
        h[M_SEQ] = req.stream_seq
    return h


def as_stored(seq: int, headers: dict[str, str]) -> StoredMsg:
    return StoredMsg(seq, b"", headers=headers)


def success(req: AppendRequest, seq: int, closed: bool) -> AppendOutcome:
    """The answer to a stored append; ``closed``: the stream is closed after it."""
    headers = {p.H_NEXT_OFFSET: p.format_offset(seq)}
    if req.producer is not None:
        headers[p.H_PRODUCER_EPOCH] = str(req.producer.epoch)
        headers[p.H_PRODUCER_SEQ] = str(req.producer.seq)
    if closed:
        headers[p.H_CLOSED] = "true"
    status = 200 if req.producer is not None and req.payload is not None else 204
    return AppendOutcome(status, headers, seq, stored=True)
