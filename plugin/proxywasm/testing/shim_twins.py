"""The shim's C helpers in Python, side by side: what ``_proxywasm`` offers beside the host's calls inside the VM.

Each part is the twin of one file of build/shim and follows its rules, so tests on the in-process host and on the
compiled module agree (tests/test_sdk.py compares them on both):

- **headers.c**: ``unpack_pairs``, ``unpack_dict`` and ``ShimTwins.header_map`` (a header map read and unpacked
  in one call);
- **json.c**: ``json_members`` and ``json_index``, the strict JSON scan (proxywasm.jsonscan imports these two on
  plain CPython, where there is no ``_proxywasm``);
- **tap.c**: ``ShimTwins.tap_start``, ``tap_take``, ``tap_skip``, ``tap_count``, and ``tap_handles``: what the
  shim decides before it calls Python's ``proxy_on_response_body`` (keep or skip the chunk, count its strings).

The in-process host (proxywasm.testing.fake) makes one ``ShimTwins`` per VM and binds it with its HostState
(``hostcalls.bind``); the rules of the SDK modules (proxywasm.hostcalls, proxywasm.taps) then run unchanged.
"""

from __future__ import annotations

import json
import struct
from json.decoder import scanstring
from typing import Any

from ..abi import BufferType
from ..taps import count_strings

Pairs = list[tuple[str, str]]
Index = dict[bytes, tuple[int, int, int, "int | None"]]


# --- headers.c: the host's header-map serialisation, u32 count, (u32 klen, u32 vlen)*, then "k\0v\0"* ---

def _s(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def unpack_pairs(buf: bytes) -> Pairs:
    """[(name, value), ...] of a serialised map (pw_unpack_pairs)."""
    if len(buf) < 4:
        return []
    (n,) = struct.unpack_from("<I", buf)
    sizes = struct.unpack_from(f"<{2 * n}I", buf, 4)
    pos = 4 + 8 * n
    out: Pairs = []
    for i in range(n):
        kl, vl = sizes[2 * i], sizes[2 * i + 1]
        k = buf[pos : pos + kl]
        pos += kl + 1
        v = buf[pos : pos + vl]
        pos += vl + 1
        out.append((_s(k), _s(v)))
    return out


def unpack_dict(buf: bytes) -> dict[str, str]:
    """{name: value}, repeated names joined with "," as proxy_get_header_map_value answers (pw_unpack_dict)."""
    out: dict[str, str] = {}
    for k, v in unpack_pairs(buf):
        out[k] = out[k] + "," + v if k in out else v
    return out


# --- json.c: strict JSON (RFC 8259 in strict UTF-8, as json.loads reads the strictly decoded text) ---

MAX_DEPTH = 500  # PW_JSON_MAX_DEPTH


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # 1e999 overflows to inf, which json.dumps would write as Infinity
        raise ValueError("number out of range")
    return value


def _not_json(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity, -Infinity: Python accepts them, JSON does not


_STRICT = json.JSONDecoder(parse_float=_finite, parse_constant=_not_json)
_WS = " \t\n\r"


def _depth(doc: object) -> int:
    deepest, todo = 0, [(doc, 1)]
    while todo:
        node, d = todo.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, d)
            todo += [(v, d + 1) for v in (node.values() if isinstance(node, dict) else node)]
    return deepest


def json_members(body: bytes) -> list[tuple[int, int, int, int]] | None:
    """The top-level object's member spans (byte offsets, keys with their quotes); None for another JSON value;
    ValueError when ``body`` is not JSON (pw_json_members)."""
    text = body.decode("utf-8")  # strictly: encoded surrogates, overlongs, a BOM's bytes as text... fail
    try:
        doc = _STRICT.decode(text)
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
        _, i = _STRICT.raw_decode(text, i)
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


def json_index(body: bytes) -> tuple[Index, bool] | None:
    """``({raw key: (value_start, value_end, times seen, small int or None)}, a key holds an escape)`` of the
    top-level object; None and ValueError as ``json_members`` (pw_json_index)."""
    found = json_members(body)
    if found is None:
        return None
    out: Index = {}
    for ks, ke, vs, ve in found:
        key, value = body[ks + 1 : ke - 1], body[vs:ve]
        out[key] = (vs, ve, out[key][2] + 1 if key in out else 1,
                    int(value) if value.isdigit() and len(value) <= 18 else None)
    return out, any(b"\\" in k for k in out)


# --- tap.c: response body taps ---

MAX_LINE = 1 << 16  # a longer line is not counted (PW_MAX_LINE)
Markers = tuple[tuple[bytes, bytes], ...]


def ends_event(chunk: bytes) -> bool:
    """Whether the chunk ends an SSE event: a blank line (pw_ends_event)."""
    return chunk.endswith((b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n"))


def marked(chunk: bytes, markers: Markers) -> bool:
    """Whether the chunk holds a marker: its needle, unless the 16 bytes after it, past spaces, tabs, line ends and
    colons, begin with its ``unless`` text (pw_tap_marked)."""
    for needle, unless in markers:
        i = chunk.find(needle)
        while i >= 0:
            after = chunk[i + len(needle) : i + len(needle) + 16].lstrip(b" \t\r\n:")
            if not unless or not after.startswith(unless):
                return True
            i = chunk.find(needle, i + 1)
    return False


class Tap:
    """One stream's tap (pw_tap)."""

    __slots__ = ("armed", "data", "first_ns", "first_string_ns", "keep", "keys", "line", "markers", "size",
                 "string_bytes", "strings", "trimmed", "whole_upto")

    def __init__(self, keep: int, whole_upto: int) -> None:
        self.keep, self.whole_upto = keep, whole_upto  # keep 0: not keeping bytes (skipping or counting only)
        self.data = bytearray()
        self.size = self.first_ns = 0
        self.trimmed = self.armed = False
        self.markers: Markers | None = None  # skipping events (tap_skip)
        self.keys: tuple[bytes, ...] = ()  # counting (tap_count), keys without their quotes
        self.line = bytearray()
        self.strings = self.string_bytes = self.first_string_ns = 0

    def handles(self, shim: ShimTwins, size: int, end_of_stream: bool) -> bool:  # pw_tap_handles
        feeds = self.markers is None and self.keep > 0
        chunk = b""
        if size and (self.keys or feeds or (self.markers is not None and self.armed and not end_of_stream)):
            st, got = shim.host.proxy_get_buffer_bytes(int(BufferType.HTTP_RESPONSE_BODY), 0, size)
            chunk = (got or b"") if st == 0 else b""
        if self.keys:
            self.count(shim, chunk, end_of_stream)
        if self.markers is not None:
            return self.skips(chunk, size, end_of_stream)
        if not feeds:
            return False
        self.feed(shim, chunk)
        return not end_of_stream

    def skips(self, chunk: bytes, size: int, end_of_stream: bool) -> bool:  # pw_tap_skips
        if not size and not end_of_stream:
            return True
        armed, self.armed = self.armed, False
        if not armed or end_of_stream:
            return False
        self.armed = ends_event(chunk) and not marked(chunk, self.markers or ())
        self.size += size
        return self.armed

    def feed(self, shim: ShimTwins, chunk: bytes) -> None:  # pw_tap_feed
        size = len(chunk)
        if not size:
            return
        if not self.size:
            self.first_ns = shim.host.now_ns()
        self.size += size
        start = 0
        if self.size > self.whole_upto:
            if size > self.keep:
                start, self.trimmed = size - self.keep, True
            want = size - start
            if len(self.data) + want > self.keep:
                del self.data[: len(self.data) + want - self.keep]
                self.trimmed = True
        self.data += chunk[start:]

    def count(self, shim: ShimTwins, chunk: bytes, end_of_stream: bool) -> None:  # pw_tap_count
        before = self.strings
        cut = max(chunk.rfind(b"\n"), chunk.rfind(b"\r")) + 1
        if cut:
            if self.line:
                if len(self.line) + cut <= MAX_LINE:
                    self._add(bytes(self.line) + chunk[:cut])
                self.line.clear()
            else:
                self._add(chunk[:cut])
        if cut < len(chunk):
            if len(self.line) + len(chunk) - cut > MAX_LINE:
                self.line.clear()
            else:
                self.line += chunk[cut:]
        if end_of_stream and self.line:
            self._add(bytes(self.line))
            self.line.clear()
        if self.strings != before and not self.first_string_ns:
            self.first_string_ns = shim.host.now_ns()

    def _add(self, lines: bytes) -> None:  # pw_count_strings: the rule of proxywasm.taps.count_strings
        n, size = count_strings(lines, self.keys)
        self.strings += n
        self.string_bytes += size


# --- the whole of _proxywasm's helpers for one VM ---

class ShimTwins:
    """The shim's helpers of one VM over ``host`` (a HostState): its taps live here, as tap.c's table does."""

    unpack_pairs = staticmethod(unpack_pairs)
    unpack_dict = staticmethod(unpack_dict)
    json_members = staticmethod(json_members)
    json_index = staticmethod(json_index)

    def __init__(self, host: Any) -> None:
        self.host = host
        self.taps: dict[int, Tap] = {}  # context id -> the stream's tap

    def header_map(self, map_type: int, as_dict: bool, names: tuple[bytes, ...] | None = None) -> Any:
        """The map as unpack_dict/unpack_pairs give it (only ``names`` if given); the host's status (an int) when
        it is not OK (pw_header_map)."""
        st, buf = self.host.proxy_get_header_map_pairs(map_type)
        if st:
            return st
        if not as_dict:
            return unpack_pairs(buf or b"")
        got = unpack_dict(buf or b"")
        if names is None:
            return got
        wanted = {_s(n) for n in names}
        return {k: v for k, v in got.items() if k in wanted}

    def tap_start(self, context_id: int, keep: int, whole_upto: int) -> None:
        tap = self.taps.get(context_id)
        if tap is None:
            self.taps[context_id] = Tap(keep, whole_upto)
        else:
            tap.keep, tap.whole_upto, tap.markers = keep, whole_upto, None

    def tap_take(self, context_id: int) -> tuple[bytes, int, int, bool, int, int, int] | None:
        tap = self.taps.pop(context_id, None)
        return None if tap is None else (bytes(tap.data), tap.size, tap.first_ns, tap.trimmed, tap.strings,
                                         tap.string_bytes, tap.first_string_ns)

    def tap_skip(self, context_id: int, markers: Markers) -> None:
        tap = self.taps.setdefault(context_id, Tap(0, 0))
        tap.markers, tap.armed = markers, True

    def tap_count(self, context_id: int, keys: tuple[bytes, ...]) -> None:
        self.taps.setdefault(context_id, Tap(0, 0)).keys = keys

    def tap_handles(self, context_id: int, body_size: int, end_of_stream: bool) -> bool:
        """Before proxy_on_response_body: keep, count or skip the chunk if the stream is tapped; True if Python need
        not see it (pw_tap_handles)."""
        tap = self.taps.get(context_id)
        return False if tap is None else tap.handles(self, body_size, end_of_stream)

    def tap_remove(self, context_id: int) -> None:
        """On proxy_on_delete: the stream's tap goes with it (pw_tap_remove)."""
        self.taps.pop(context_id, None)
