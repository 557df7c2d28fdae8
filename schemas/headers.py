"""Every NATS header name genjobs writes or reads: the one place they are spelled.

Two families. ``Genjobs-*`` are genjobs' own, written on every stored event (docs/protocol.md,
the event log) and on some answers: the event's kind (routes it without parsing the payload), its index in the job
and the writer that stored it (how a retried publish is told from another writer's event at the
same index). ``Nats-*``, ``Status`` and ``KV-Operation`` are the server's: set by JetStream on
Direct Get replies and republished messages, by KV on its entries, by nats.micro on errors.

This module is plain names, no I/O, in the lowest layer, so the actor, the NATS adapter
(``service/nats/``), the client SDK and the server side all import it; nothing spells a header
as a literal elsewhere.
"""

from __future__ import annotations

from typing import Final

# --- genjobs' own, on every stored event -------------------------------------------------------

KIND: Final = "Genjobs-Kind"
"""The event's kind (``schemas.events.EventKind``): ``created``, ``step``, ..., ``final``."""
INDEX: Final = "Genjobs-Index"
"""The event's index in its job, from 0: the producer's position, dense and unique."""
WRITER: Final = "Genjobs-Writer"
"""Who stored it: the owner's replica id, or ``takeover:<replica id>``."""

# --- genjobs' own, on answers ----------------------------------------------------------------

UNREACHABLE: Final = "Genjobs-Unreachable"
"""On an answer given in another replica's place when that replica did not answer: its id."""

# --- JetStream -------------------------------------------------------------------------------

EXPECTED_LAST_SUBJECT_SEQ: Final = "Nats-Expected-Last-Subject-Sequence"
"""On a publish: store only if the subject's last message has this sequence (the fence)."""
SEQUENCE: Final = "Nats-Sequence"
"""On a Direct Get reply and a republished message: the stored message's stream sequence."""
LAST_SEQUENCE: Final = "Nats-Last-Sequence"
"""On a republished message: the previous sequence on the same subject (gap detection). Inside
a Direct Get batch it is the previous message *of the batch*, useless for that."""
NUM_PENDING: Final = "Nats-Num-Pending"
"""On the end of a Direct Get batch: how many matching messages remain after it."""
SUBJECT: Final = "Nats-Subject"
"""On a Direct Get reply: the stored message's subject (multi-last replies need it)."""
STATUS: Final = "Status"
"""nats-py's key for a status line (``NATS/1.0 404 ...``): 204 end of batch, 404, 503."""
DESCRIPTION: Final = "Description"
"""nats-py's key for the text after a status code."""
TIME_STAMP: Final = "Nats-Time-Stamp"
"""On a Direct Get reply: when the message was stored (RFC 3339, nanoseconds, UTC)."""
KV_OPERATION: Final = "KV-Operation"
"""On a KV entry: ``DEL`` or ``PURGE`` for a removed key (absent on a put)."""

# --- Durable Streams: on every stored append (docs/http.md, storage layout) ---------------------

DS_CLOSE: Final = "Ds-Close"
"""This append closes the stream (a close without data is an empty message with it)."""
DS_PRODUCER: Final = "Ds-Pid"
"""The append's ``Producer-Id``; with :data:`DS_EPOCH` and :data:`DS_PSEQ` its producer tuple."""
DS_EPOCH: Final = "Ds-Pep"
DS_PSEQ: Final = "Ds-Psq"
DS_SEQ: Final = "Ds-Seq"
"""The append's ``Stream-Seq``."""
DS_APPEND: Final = "Ds-Aid"
"""A random id per request: finds an append whose publish ack was lost."""

# --- nats.micro ------------------------------------------------------------------------------

SERVICE_ERROR: Final = "Nats-Service-Error"
"""A micro endpoint's error text."""
SERVICE_ERROR_CODE: Final = "Nats-Service-Error-Code"
"""A micro endpoint's error code (HTTP-like number)."""
