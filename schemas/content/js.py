"""JavaScript value semantics the aggregator needs to match ``@librechat/agents`` exactly.

The library's results depend on JS rules (``undefined`` vs ``null``, truthiness, ``+`` on mixed
types, string conversion of numbers); these helpers reproduce the ones it relies on, so the
aggregator itself can read like the TypeScript it ports.
"""

from __future__ import annotations

from typing import Any, Final


class Undefined:
    """JavaScript ``undefined``: an absent key, as opposed to JSON ``null`` (``None``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Final[Any] = Undefined()
JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"


NO_META: Final[dict[str, Any]] = {}


class Abandon(Exception):
    """The JS library would throw here (or store garbage): the event goes no further."""


def nullish(value: Any) -> bool:
    return value is None or value is UNDEFINED


def truthy(value: Any) -> bool:
    if value is None or value is UNDEFINED or value is False or value == "":
        return False
    return not (isinstance(value, int | float) and not isinstance(value, bool) and value == 0)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_object(value: Any) -> bool:
    """``typeof value === 'object'``: null, arrays and objects."""
    return value is None or isinstance(value, dict | list)


def js_get(obj: Any, key: str) -> Any:
    """``obj.key``: throws on null/undefined, undefined on other non-objects."""
    if isinstance(obj, dict):
        return obj.get(key, UNDEFINED)
    if nullish(obj):
        raise Abandon(f"cannot read property {key!r} of {obj!r}")
    return UNDEFINED


def js_opt(obj: Any, key: str) -> Any:
    """``obj?.key``."""
    return obj.get(key, UNDEFINED) if isinstance(obj, dict) else UNDEFINED


def js_str(value: Any) -> str:
    """``String(value)`` for JSON values, as ``+`` with a string and ``startsWith`` use it."""
    if isinstance(value, str):
        return value
    if isinstance(value, Rope):
        return value.value()
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value).replace("e-0", "e-").replace("e+0", "e+")
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    if isinstance(value, list):
        return ",".join("" if nullish(v) else js_str(v) for v in value)
    return "[object Object]"


def js_key(value: Any) -> Any:
    """A dict key with JS ``Map`` identity (SameValueZero); objects never equal a later event's."""
    if value is None or value is UNDEFINED or isinstance(value, str | int | float):
        return ("bool", value) if isinstance(value, bool) else value
    return object()


def spread(value: Any) -> list[Any]:
    """``[...value]``."""
    if isinstance(value, list):
        return list(value)
    if isinstance(value, str):
        return list(value)
    raise Abandon(f"{value!r} is not iterable")


class Rope:
    """A string built by appending; joined only when read.

    Every ``_GROUP`` appended pieces are joined into one, so a long unread stream holds a few
    strings per kilobyte rather than one object per token, at amortised constant cost.
    """

    __slots__ = ("loose", "pieces")
    _GROUP: Final = 128

    def __init__(self, first: str) -> None:
        self.pieces = [first]
        self.loose = 0  # pieces at the end not yet joined into a group

    def add(self, piece: str) -> None:
        pieces = self.pieces
        pieces.append(piece)
        self.loose += 1
        if self.loose == self._GROUP:
            group = "".join(pieces[-self._GROUP :])
            del pieces[-self._GROUP :]
            pieces.append(group)
            self.loose = 0

    def value(self) -> str:
        pieces = self.pieces
        if len(pieces) != 1:
            joined = "".join(pieces)
            pieces.clear()
            pieces.append(joined)
        self.loose = 0
        return pieces[0]


def js_add(left: Any, right: Any) -> Any:
    """``left + right`` for non-object operands; a string result is a (reused) rope."""
    if isinstance(left, Rope):
        left.add(js_str(right))
        return left
    if isinstance(left, str) or isinstance(right, str):
        rope = Rope(js_str(left))
        rope.add(js_str(right))
        return rope
    return (
        int(left) + int(right)
        if isinstance(left, bool) or isinstance(right, bool)
        else left + right
    )


def non_empty(*values: Any) -> Any:
    """``getNonEmptyValue``: the first truthy string that is not blank."""
    for value in values:
        if truthy(value):
            if not isinstance(value, str):
                raise Abandon(f"{value!r}.trim is not a function")
            if value.strip(JS_SPACE) != "":
                return value
    return UNDEFINED


def min_index(value: Any) -> int:
    """The ``minimumIndex`` that ``Math.max`` would see, for the values we accept."""
    if nullish(value):
        return 0
    if isinstance(value, bool):
        raise Abandon(f"step index {value!r} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Abandon(f"step index {value!r} is not an integer")
