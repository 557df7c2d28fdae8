"""The error vocabulary shared by the Python API and the wire (docs/protocol.md, the service API).

Each error carries the structured code of the service API and the fields a caller needs to act
on it; nats-py exceptions are translated into these at the adapter boundary.
"""

from __future__ import annotations

from typing import Any


class GenjobsError(Exception):
    """Base: ``code`` is the service error code; ``details`` go into logs and replies."""

    code = "unavailable"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        """The error body of the service API (docs/protocol.md, Errors)."""
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(GenjobsError):
    code = "bad_request"


class InvalidId(GenjobsError):
    code = "invalid_id"


class Forbidden(GenjobsError):
    code = "forbidden"


class NotFound(GenjobsError):
    code = "not_found"


class Conflict(GenjobsError):
    code = "conflict"


class TooLarge(GenjobsError):
    code = "too_large"


class Unavailable(GenjobsError):
    code = "unavailable"


class JobEnded(Conflict):
    """The job already has its terminal event: emitting or completing again changes nothing."""

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(f"job {job_id} has ended ({status})", job_id=job_id, status=status)
        self.job_id = job_id
        self.status = status


class OwnershipLost(Unavailable):
    """Another replica took the job over (the lease expired); this replica must stop writing."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id}: ownership lost ({reason})", job_id=job_id)
        self.job_id = job_id


class StoreFailed(Unavailable):
    """An event or record could not be made durable; the job fails loudly instead of losing it."""


ERRORS_BY_CODE: dict[str, type[GenjobsError]] = {
    cls.code: cls
    for cls in (BadRequest, InvalidId, Forbidden, NotFound, Conflict, TooLarge, Unavailable)
}


def from_body(body: dict[str, Any]) -> GenjobsError:
    """Rebuild an error from a reply body (client side)."""
    err = body.get("error") or {}
    cls = ERRORS_BY_CODE.get(str(err.get("code")), GenjobsError)
    return cls(str(err.get("message", "unknown error")))
