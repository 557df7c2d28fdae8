"""Identifier validation (docs/protocol.md, Identifiers): ids end up in subjects and KV keys, so they are checked first."""

from __future__ import annotations

import re

from schemas.errors import InvalidId

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def check_id(value: object, field: str = "id") -> str:
    """Return ``value`` if it is a safe identifier.

    Raises:
        InvalidId: not a string of 1 to 128 characters from ``[A-Za-z0-9_-]`` (so no ``.``, ``*``,
            ``>`` or whitespace can reach a subject).
    """
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        shown = (
            repr(value)
            if not isinstance(value, str) or len(value) <= 40
            else repr(value[:40] + "…")
        )
        raise InvalidId(f"{field} must match {ID_RE.pattern}, got {shown}", field=field)
    return value


def check_optional_id(value: object, field: str) -> str | None:
    """Like :func:`check_id` but ``None`` passes.

    Raises:
        InvalidId: present and not a safe identifier.
    """
    return None if value is None else check_id(value, field)
