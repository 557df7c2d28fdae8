"""The actor's queue of events waiting to be published, with coalescing.

While a publish is in flight, later text/reasoning deltas of the same step are merged into the
pending message (``schemas.content.coalesce``), so light load gives one event per token and heavy
load fewer, larger messages with the same aggregate. No I/O here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.content.coalesce import PlainRun, try_merge

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


@dataclass(slots=True)
class Out:
    """An event waiting to be published; ``count`` producer events were merged into it."""

    event: dict[str, Any]
    kind: str
    count: int = 1
    owned: bool = False  # True once we copied the producer's dict (before mutating it)
    run: PlainRun | None = None  # merges kept as strings; ``event`` is built when published
    checked: bool = False  # whether a run was tried for ``event`` already

    def settle(self) -> None:
        """Build the event of a pending run of plain deltas (its own object once merged)."""
        run, self.run = self.run, None
        if run is not None and len(run.pieces) > 1:
            self.event = run.event()
            self.owned = True

    def merge(self, event: dict[str, Any]) -> bool:
        """Fold ``event`` into this pending message if the aggregate stays exactly the same."""
        if not self.checked:
            self.checked = True
            self.run = PlainRun.start(self.event)
        if self.run is not None:
            if self.run.add(event):
                return True
            self.settle()  # not a plain continuation: the general rules decide
        if not self.owned:
            self.event = _decode(_encode(self.event))
            self.owned = True
        return try_merge(self.event, event)


class Outbox:
    def __init__(self) -> None:
        self._pending: deque[Out] = deque()

    def __bool__(self) -> bool:
        return bool(self._pending)

    def add(self, event: dict[str, Any], kind: str) -> bool:
        """Queue ``event``; True if it was merged into the pending tail."""
        if self._pending:
            tail = self._pending[-1]
            if tail.kind == "step" and kind == "step" and tail.merge(event):
                tail.count += 1
                return True
        self._pending.append(Out(event, kind))
        return False

    def head(self) -> Out:
        out = self._pending[0]
        out.settle()
        return out

    def pop(self) -> None:
        self._pending.popleft()

    def clear(self) -> None:
        self._pending.clear()
