"""A stored message as Direct Get returns it, with its header block parsed lazily, by name.

Direct Get replies on the inline path (``service/nats/directget.py``) arrive as raw bytes: a
header block ``NATS/1.0\\r\\n`` then ``Name: Value`` lines, and the payload. Parsing the ten
headers of a stored event into a dict costs ~12 µs in Python, and a reader needs two of them,
so :class:`StoredMsg` parses the dict only when (if) it is asked for, and reads single headers
straight from the bytes. Every read is by name: nothing depends on the order in which a writer
put its headers.
"""

from __future__ import annotations

import re
from typing import Final

from schemas import headers as hdr

_CRLF: Final = b"\r\n"
_header_res: dict[str, re.Pattern[bytes]] = {}


def header_at(name: str) -> bytes:
    """What a header line of ``name`` starts with inside a block: ``\\r\\nName:``."""
    return b"\r\n" + name.encode("ascii") + b":"


# As nats-py and nats-server write them: "Name: value". Other spacing takes header().
_KIND_AT: Final = header_at(hdr.KIND) + b" "
_INDEX_AT: Final = header_at(hdr.INDEX) + b" "
_KIND_LEN: Final = len(_KIND_AT)
_INDEX_LEN: Final = len(_INDEX_AT)


def _header_re(name: str) -> re.Pattern[bytes]:
    pattern = _header_res.get(name)
    if pattern is None:
        key = re.escape(name.encode("ascii"))
        pattern = _header_res[name] = re.compile(rb"\r\n[ \t]*" + key + rb"[ \t]*:([^\r\n]*)")
    return pattern


def parse_headers(raw: bytes) -> dict[str, str]:
    """A NATS header block as nats-py parses it: names and values stripped, names with inner
    whitespace or non-ASCII bytes skipped, the last of repeated names kept, values decoded as
    UTF-8 with replacement. The status line's code and description are not included."""
    out: dict[str, str] = {}
    for line in raw.split(_CRLF)[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        try:
            key = name.strip().decode("ascii")
        except UnicodeDecodeError:
            continue
        if len(key.split()) != 1:  # empty, or whitespace inside the name
            continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def _index(value: str | bytes) -> int:
    """An event index header's value, or -1 when it is not a decimal number."""
    return int(value) if value.isdigit() else -1


class StoredMsg:
    """One stored message as Direct Get returned it.

    ``headers`` is parsed from the raw header block on first access; :meth:`header` reads one
    header without building the dict, and :meth:`kind_index` the two a reader needs.
    """

    __slots__ = ("_headers", "_raw", "data", "seq")

    def __init__(
        self,
        seq: int,
        data: bytes,
        *,
        raw_headers: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.seq = seq
        self.data = data
        self._raw = raw_headers
        self._headers = headers

    @property
    def raw_headers(self) -> bytes:
        """The header block as received (empty when the message came parsed by nats-py)."""
        return self._raw

    @property
    def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = parse_headers(self._raw) if self._raw else {}
        return self._headers

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (stripped), or ``None``; first occurrence if repeated."""
        if self._headers is not None:
            return self._headers.get(name)
        m = _header_re(name).search(self._raw)
        return None if m is None else m.group(1).strip().decode("utf-8", "replace")

    def kind_index(self) -> tuple[str, int]:
        """The event's ``Genjobs-Kind`` ("" if absent) and ``Genjobs-Index`` (-1 if absent or
        not a number), wherever they are in the block.

        The replay's hot path: two ``bytes.find`` by name (~0.5 µs for a stored event's ten
        headers); a block with other spacing around the names, or an index that is not a
        number, takes :meth:`header`.
        """
        raw = self._raw
        k = raw.find(_KIND_AT)
        i = raw.find(_INDEX_AT)
        if k >= 0 and i >= 0:  # a block ends with CRLF CRLF: every line has its CR
            i += _INDEX_LEN
            index = raw[i : raw.find(b"\r", i)]
            if index.isdigit():
                k += _KIND_LEN
                kind = raw[k : raw.find(b"\r", k)].strip().decode("utf-8", "replace")
                return kind, int(index)
        return self.header(hdr.KIND) or "", _index(self.header(hdr.INDEX) or "")

    def __repr__(self) -> str:
        return f"StoredMsg(seq={self.seq}, headers={self.headers!r}, data={self.data!r})"
