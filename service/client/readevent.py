"""What a reader hands out: one event of a job (:class:`ReadEvent`) and the errors that end a
reader before its job's terminal event.

A :class:`ReadEvent` is built once per event and process, from the live message's headers
(:func:`live_event`) or from a replayed message (:func:`stored_event`), and shared by every
reader of the job in that process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from schemas import headers as hdr
from service.nats.stored import StoredMsg

TERMINAL_KINDS: Final = frozenset({"final", "error"})
_UNSET: Final[Any] = object()


@dataclass(slots=True)
class ReadEvent:
    """One event. Shared by all readers of the job in this process, so treat it as read-only;
    ``event`` decodes JSON on first access only (a gateway forwarding ``data`` never does)."""

    seq: int
    index: int
    kind: str
    data: bytes
    _event: Any = field(default=_UNSET, repr=False, compare=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS

    @property
    def event(self) -> dict[str, Any] | None:
        """The payload as a dict; ``None`` if it is not a JSON object.

        Raises:
            msgspec.DecodeError: the payload is not JSON (a producer broke the contract).
        """
        if self._event is _UNSET:
            value = msgspec.json.decode(self.data) if self.data else None
            self._event = value if isinstance(value, dict) else None
        result: dict[str, Any] | None = self._event
        return result


def live_event(seq: int, headers: dict[str, str], data: bytes) -> ReadEvent:
    """The event of a live message (its headers parsed by nats-py)."""
    index = headers.get(hdr.INDEX, "")
    kind = headers.get(hdr.KIND, "")
    return ReadEvent(seq, int(index) if index.isdigit() else -1, kind, data)


def stored_event(m: StoredMsg) -> ReadEvent:
    """The event of a replayed message, reading only the two headers it needs, by name."""
    kind, index = m.kind_index()
    return ReadEvent(m.seq, index, kind, m.data)


class ReaderError(RuntimeError):
    """A reader ended before its job's terminal event; resume from ``last_seq``."""

    def __init__(self, message: str, job_id: str, last_seq: int) -> None:
        super().__init__(f"{message} (job {job_id}, resume after seq {last_seq})")
        self.job_id = job_id
        self.last_seq = last_seq


class HubClosed(ReaderError):
    """The hub was closed (shutdown) while the reader was open."""
