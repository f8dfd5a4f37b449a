"""Strict JSON validation and the top-level object's member spans, without building the document.

``members(body)`` answers ``[(key_start, key_end, value_start, value_end), ...]`` (byte offsets into
``body``, keys with their quotes) when ``body`` is a JSON object, ``None`` when it is another JSON value,
and raises ``ValueError`` when it is not JSON. JSON here is RFC 8259 in strict UTF-8, as ``json.loads``
reads the strictly decoded text with these limits: no NaN/Infinity, numbers finite as doubles, integers
of at most 4300 digits (Python's limit), nesting at most ``MAX_DEPTH`` deep.

The shim does this in C in one pass (build/shim/json.c: a tenth of the cost of ``json.loads`` on a request
body); on ordinary CPython its Python twin (proxywasm.testing.shim_twins) gives the same answers, so tests on both
hosts agree.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    from _proxywasm import json_index, json_members  # type: ignore[import-not-found]
except ImportError:  # ordinary CPython: the shim's Python twins
    from .testing.shim_twins import MAX_DEPTH, json_index, json_members
else:
    MAX_DEPTH = 500  # PW_JSON_MAX_DEPTH, build/shim/json.c

DECODER = json.JSONDecoder()  # for values the scan has validated already
Index = dict[bytes, tuple[int, int, int, "int | None"]]

# members(body) -> [(key_start, key_end, value_start, value_end), ...] | None, ValueError: see the module's docstring
members = json_members

# index(body) -> ({raw key bytes: (value_start, value_end, times seen, the value if a non-negative integer of at most
# 18 digits)}, whether a key holds a JSON escape) for the top-level object's members (the last one of a repeated
# key); None and ValueError as ``members``.
index = json_index


def _index_of(body: bytes, members: list[tuple[int, int, int, int]], key_of: Callable[[int, int], bytes]) -> Index:
    """The index entries (as json_index makes them) of ``members``, keyed by ``key_of(key_start, key_end)``."""
    out: Index = {}
    for ks, ke, vs, ve in members:
        key, value = key_of(ks, ke), body[vs:ve]
        out[key] = (vs, ve, out[key][2] + 1 if key in out else 1,
                    int(value) if value.isdigit() and len(value) <= 18 else None)
    return out


_LITERALS = {b"true": True, b"false": False, b"null": None}
_NOT_LITERAL = object()


class JsonObject:
    """A JSON object whose top-level members are decoded only when read.

    ``JsonObject.parse(raw)`` validates ``raw`` in one pass (``index``) and answers None when it is another
    JSON value; reading one member then decodes just that member's bytes. Reading ``model`` or ``usage``
    this way costs a fraction of building the whole document, which ``full()`` does (once) when needed.
    """

    __slots__ = ("_full", "_index", "raw")

    def __init__(self, raw: bytes, found: tuple[Index, bool]) -> None:
        self.raw = raw
        self._full: dict[str, Any] | None = None
        idx, escaped = found
        if escaped:  # keys compared as decoded: "mod\\u0065l" is "model" (rare: rebuilt in Python)
            idx = _index_of(raw, members(raw) or [],
                            lambda ks, ke: DECODER.decode(raw[ks:ke].decode("utf-8")).encode("utf-8", "surrogatepass"))
        self._index = idx

    @classmethod
    def parse(cls, raw: bytes) -> JsonObject | None:
        """The object ``raw`` holds, None for another JSON value; ValueError when ``raw`` is not JSON."""
        found = index(raw)
        return None if found is None else cls(raw, found)

    def get(self, key: str, default: Any = None) -> Any:
        """The member's value (the last one when repeated, as json.loads keeps)."""
        span = self._index.get(key.encode())
        if span is None:
            return default
        if span[3] is not None:  # a non-negative integer (token counts, max_tokens), decoded by the scan
            return span[3]
        raw = self.raw[span[0] : span[1]]
        if raw[:1] == b'"' and 92 not in raw:  # a plain string (model names; 92 is a backslash): no decoder
            return raw[1:-1].decode("utf-8")
        literal = _LITERALS.get(raw, _NOT_LITERAL)
        return DECODER.decode(raw.decode("utf-8")) if literal is _NOT_LITERAL else literal

    def object(self, key: str) -> JsonObject | None:
        """The member as a lazy JsonObject when it is an object (already validated: nothing is decoded)."""
        span = self._index.get(key.encode())
        if span is None or self.raw[span[0]] != 123:  # "{"
            return None
        return JsonObject.parse(self.raw[span[0] : span[1]])

    def text(self, key: str) -> bytes:
        """The member's JSON text as sent (b"" when absent), not decoded."""
        span = self._index.get(key.encode())
        return b"" if span is None else self.raw[span[0] : span[1]]

    def small_int(self, key: bytes) -> int | None:
        """The member (key as raw bytes) when it is a non-negative integer of at most 18 digits, else None: token
        counts and limits, read straight from the scan's index."""
        span = self._index.get(key)
        return None if span is None else span[3]

    def count(self, key: str) -> int:
        span = self._index.get(key.encode())
        return 0 if span is None else span[2]

    def full(self) -> dict[str, Any]:
        if self._full is None:
            self._full = DECODER.decode(self.raw.decode("utf-8"))
        return self._full
