"""Strict JSON validation and the top-level object's member spans, without building the document.

``members(body)`` answers ``[(key_start, key_end, value_start, value_end), ...]`` (byte offsets into
``body``, keys with their quotes) when ``body`` is a JSON object, ``None`` when it is another JSON value,
and raises ``ValueError`` when it is not JSON. JSON here is RFC 8259 in strict UTF-8, as ``json.loads``
reads the strictly decoded text with these limits: no NaN/Infinity, numbers finite as doubles, integers
of at most 4300 digits (Python's limit), nesting at most ``MAX_DEPTH`` deep.

Inside the VM the shim does this in C in one pass (a tenth of the cost of ``json.loads`` on a request
body); on ordinary CPython the reference below gives the same answers, so tests on both hosts agree.
"""

from __future__ import annotations

import json
from json.decoder import scanstring

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    from _proxywasm import json_index as _native_index  # type: ignore[import-not-found]
    from _proxywasm import json_members as _native
except ImportError:
    _native = _native_index = None

MAX_DEPTH = 500


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e999 overflows to inf, which json.dumps would write as Infinity
        raise ValueError("number out of range")
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python accepts them, JSON does not


DECODER = json.JSONDecoder(parse_float=_finite, parse_constant=_not_json)
_WS = " \t\n\r"


def _depth(doc: object) -> int:
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            todo += [(v, d + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


def _reference(body: bytes) -> list[tuple[int, int, int, int]] | None:
    text = body.decode("utf-8")  # strictly: encoded surrogates, overlongs, a BOM's bytes as text... fail
    try:
        doc = DECODER.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if _depth(doc) > MAX_DEPTH:
        raise ValueError("nested too deeply")
    if not isinstance(doc, dict):
        return None
    spans = []
    i = len(text) - len(text.lstrip(_WS)) + 1  # after "{"
    while text[i] in _WS:
        i += 1
    while text[i] != "}":
        ks = i
        _, i = scanstring(text, i + 1)
        ke = i
        i = text.index(":", i) + 1
        while text[i] in _WS:
            i += 1
        vs = i
        _, i = DECODER.raw_decode(text, i)
        spans.append((ks, ke, vs, i))
        while text[i] in _WS:
            i += 1
        if text[i] == ",":
            i += 1
            while text[i] in _WS:
                i += 1
    if text.isascii():
        return spans
    offset = lambda n: len(text[:n].encode("utf-8"))  # noqa: E731 - character to byte offsets
    return [(offset(a), offset(b), offset(c), offset(d)) for a, b, c, d in spans]


def members(body: bytes) -> list[tuple[int, int, int, int]] | None:
    return _native(body) if _native is not None else _reference(body)


Index = dict[bytes, tuple[int, int, int, "int | None"]]


def _index_reference(body: bytes) -> tuple[Index, bool] | None:
    found = _reference(body)
    if found is None:
        return None
    out = _index_of(body, found, lambda ks, ke: body[ks + 1 : ke - 1])
    return out, any(b"\\" in k for k in out)


def _index_of(body: bytes, members: list[tuple[int, int, int, int]], key_of: Callable[[int, int], bytes]) -> Index:
    """The index entries (as json_index makes them) of ``members``, keyed by ``key_of(key_start, key_end)``."""
    out: Index = {}
    for ks, ke, vs, ve in members:
        key, value = key_of(ks, ke), body[vs:ve]
        out[key] = (vs, ve, out[key][2] + 1 if key in out else 1,
                    int(value) if value.isdigit() and len(value) <= 18 else None)
    return out


def index(body: bytes) -> tuple[Index, bool] | None:
    """``{raw key bytes: (value_start, value_end, times seen, the value if a non-negative integer of at most 18
    digits)}`` for the top-level object's members (the last one of a repeated key) and whether a key holds a JSON
    escape; None and ValueError as ``members``."""
    return _native_index(body) if _native_index is not None else _index_reference(body)


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
