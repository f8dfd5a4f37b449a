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

try:
    from _proxywasm import json_members as _native  # type: ignore[import-not-found]
except ImportError:
    _native = None

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
