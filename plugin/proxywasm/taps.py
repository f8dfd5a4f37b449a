"""Response body taps: the chunks of a response body go on without a Python call each.

A plugin that only needs how a response body ends (an LLM's token usage, ``data: [DONE]``) and when it began
(time to first token) calls ``HttpContext.tap_response_body(keep, whole_upto)``. From then on the VM keeps every
byte while the body is at most ``whole_upto`` bytes long, then only its last ``keep`` bytes, and the time the
first bytes came; ``on_response_body`` is called again only at the end of the body, with the last chunk already
kept. ``HttpContext.take_response_tap()`` hands over what was kept (once). Inside the VM the shim does this in C
(build/shim/tap.c: one host call per chunk instead of a Python callback); this module is the same in Python for
the in-process test host.

``HttpContext.skip_response_events(markers)`` is the other kind: while armed, each chunk that ends an SSE event
(a blank line) and holds none of the markers goes on without Python; the first that does not, and the end of the
body, reach ``on_response_body`` as usual and disarm it, until the plugin arms it again (when it holds nothing
back). A marker is ``(needle, unless)``: the needle counts unless the 16 bytes after it, past spaces, tabs, line
ends and colons, begin with ``unless`` (``(b'"usage"', b"null")``: a usage object, not ``"usage": null``).

``HttpContext.count_response_strings(keys)`` may come with either (or alone): from then on every response chunk,
whether Python sees it or not, is searched for JSON members named by one of ``keys`` whose value is a non-empty
string (``count_strings``, the rule); the tap counts them, their string bytes (as sent, escapes included) and the time
of the chunk that completed the first line holding one. Only whole lines are searched (a member never spans lines; a
line ends at LF or CR): the last line of a chunk waits for its end, so chunk boundaries change nothing.
``take_response_tap()`` reports the counts (``strings``, ``string_bytes``, ``first_string_ns``).
"""

from __future__ import annotations

from . import hostcalls as hc
from .abi import BufferType

try:
    from _proxywasm import tap_count as _native_count  # type: ignore[import-not-found]
    from _proxywasm import tap_skip as _native_skip
    from _proxywasm import tap_start as _native_start
    from _proxywasm import tap_take as _native_take
except ImportError:
    _native_start = _native_take = _native_skip = _native_count = None

Markers = tuple[tuple[bytes, bytes], ...]


class Tapped:
    """What a response tap kept (a plain class, not a record: one is made per response, and a record's
    generic __init__ costs microseconds inside V8)."""

    __slots__ = ("data", "first_ns", "first_string_ns", "size", "string_bytes", "strings", "trimmed")

    def __init__(self, data: bytes, size: int, first_ns: int, trimmed: bool, strings: int = 0,
                 string_bytes: int = 0, first_string_ns: int = 0) -> None:
        self.data = data  # the whole body, or (trimmed) its last bytes
        self.size = size  # bytes the body had, kept or not
        self.first_ns = first_ns  # when its first bytes came (hostcalls.now_ns clock); 0: it had none
        self.trimmed = trimmed  # bytes were dropped: data is the body's end, not all of it
        self.strings = strings  # counted members (count_response_strings)
        self.string_bytes = string_bytes  # and the bytes of their values
        self.first_string_ns = first_string_ns  # when the first came; 0: none did


MAX_LINE = 1 << 16  # a longer line is not counted (PW_MAX_LINE, build/shim/tap.c)


class _Tap:
    __slots__ = ("armed", "data", "first_ns", "first_string_ns", "keep", "keys", "line", "markers", "size",
                 "string_bytes", "strings", "trimmed", "whole_upto")

    def __init__(self, keep: int, whole_upto: int) -> None:
        self.keep, self.whole_upto = keep, whole_upto  # keep 0: not keeping bytes (skipping or counting only)
        self.data = bytearray()
        self.size = self.first_ns = 0
        self.trimmed = self.armed = False
        self.markers: Markers | None = None  # skipping events (skip_events)
        self.keys: tuple[bytes, ...] = ()  # counting (count_strings), keys with their quotes
        self.line = bytearray()
        self.strings = self.string_bytes = self.first_string_ns = 0

    def handles(self, size: int, end_of_stream: bool) -> bool:  # the rules of pw_tap_handles, build/shim/tap.c
        feeds = self.markers is None and self.keep > 0
        chunk = b""
        if size and (self.keys or feeds or (self.markers is not None and self.armed and not end_of_stream)):
            chunk = hc.get_buffer(BufferType.HTTP_RESPONSE_BODY, 0, size) or b""
        if self.keys:
            self.count(chunk, end_of_stream)
        if self.markers is not None:
            return self.skips(chunk, size, end_of_stream)
        if not feeds:
            return False
        self.feed(chunk)
        return not end_of_stream

    def skips(self, chunk: bytes, size: int, end_of_stream: bool) -> bool:  # the rules of pw_tap_skips
        if not size and not end_of_stream:
            return True
        armed, self.armed = self.armed, False
        if not armed or end_of_stream:
            return False
        self.armed = _ends_event(chunk) and not _marked(chunk, self.markers or ())
        self.size += size
        return self.armed

    def feed(self, chunk: bytes) -> None:  # the rules of pw_tap_feed
        size = len(chunk)
        if not size:
            return
        if not self.size:
            self.first_ns = hc.now_ns()
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

    def count(self, chunk: bytes, end_of_stream: bool) -> None:  # the rules of pw_tap_count
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
            self.first_string_ns = hc.now_ns()

    def _add(self, lines: bytes) -> None:
        n, size = _count(lines, self.keys)
        self.strings += n
        self.string_bytes += size


_py_taps: dict[int, _Tap] = {}  # the in-process host's taps (inside the VM they live in C)


def start(context_id: int, keep: int, whole_upto: int) -> None:
    if keep < 1 or whole_upto < 0 or keep > 1 << 30 or whole_upto > 1 << 30:
        raise ValueError("tap_response_body: keep must be 1..2**30 bytes, whole_upto 0..2**30")
    if _native_start is not None:
        _native_start(context_id, keep, whole_upto)
        return
    tap = _py_taps.get(context_id)
    if tap is None:
        _py_taps[context_id] = _Tap(keep, whole_upto)
    else:
        tap.keep, tap.whole_upto, tap.markers = keep, whole_upto, None


def take(context_id: int) -> Tapped | None:
    if _native_take is not None:
        got = _native_take(context_id)
        return None if got is None else Tapped(*got)
    tap = _py_taps.pop(context_id, None)
    return None if tap is None else Tapped(bytes(tap.data), tap.size, tap.first_ns, tap.trimmed, tap.strings,
                                           tap.string_bytes, tap.first_string_ns)


def count_keys(context_id: int, keys: tuple[bytes, ...]) -> None:
    if not keys or len(keys) > 6 or not all(isinstance(k, bytes) and 0 < len(k) < 30 for k in keys):
        raise ValueError("count_response_strings: 1..6 keys, bytes of 1..29 bytes (without quotes)")
    if _native_count is not None:
        _native_count(context_id, keys)
        return
    tap = _py_taps.setdefault(context_id, _Tap(0, 0))
    tap.keys = tuple(b'"' + k + b'"' for k in keys)


def count_strings(data: bytes, keys: tuple[bytes, ...]) -> tuple[int, int]:
    """(members of ``data`` named by one of ``keys`` (without quotes) whose value is a non-empty string, the bytes of
    those values as sent): the rule a counting tap applies to its whole lines. A quote inside a JSON string is
    escaped, so text can never look like a member; the key may be followed by spaces, tabs and the colon; a value
    must close on its line."""
    return _count(data, tuple(b'"' + k + b'"' for k in keys))


def _count(data: bytes, quoted: tuple[bytes, ...]) -> tuple[int, int]:
    n = size = 0
    end = len(data)
    q = data.find(b'"')
    while q >= 0:
        for key in quoted:
            if data.startswith(key, q) and end > q + len(key):
                break
        else:
            q = data.find(b'"', q + 1)
            continue
        q += len(key)
        while q < end and data[q] in b" \t:":
            q += 1
        if q >= end or data[q] != 0x22:
            q = data.find(b'"', q)
            continue
        opened = q = q + 1
        while True:
            q = data.find(b'"', q)
            if q < 0:
                q = end
                break
            b = q
            while b > opened and data[b - 1] == 0x5C:
                b -= 1
            if not (q - b) & 1:
                break
            q += 1
        eol = min((i for i in (data.find(b"\n", opened, q), data.find(b"\r", opened, q)) if i >= 0), default=q)
        if eol < q or q == end:  # not closed on its line: go on from the line's end
            q = data.find(b'"', eol)
            continue
        if q > opened:
            n += 1
            size += q - opened
        q = data.find(b'"', q + 1)
    return n, size


def skip_events(context_id: int, markers: Markers) -> None:
    if len(markers) > 4 or not all(isinstance(n, bytes) and isinstance(u, bytes) and 0 < len(n) < 32 and len(u) < 16
                                   for n, u in markers):
        raise ValueError("skip_response_events: at most 4 (needle, unless) bytes pairs, needles of 1..31 bytes, "
                         "unless texts of at most 15")
    if _native_skip is not None:
        _native_skip(context_id, markers)
        return
    tap = _py_taps.setdefault(context_id, _Tap(0, 0))
    tap.markers, tap.armed = markers, True


def _ends_event(chunk: bytes) -> bool:
    return chunk.endswith((b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n"))


def _marked(chunk: bytes, markers: Markers) -> bool:
    for needle, unless in markers:
        i = chunk.find(needle)
        while i >= 0:
            after = chunk[i + len(needle) : i + len(needle) + 16].lstrip(b" \t\r\n:")
            if not unless or not after.startswith(unless):
                return True
            i = chunk.find(needle, i + 1)
    return False


def forget(context_id: int) -> None:
    """In-process host only: the stream is gone."""
    _py_taps.pop(context_id, None)


def forget_all() -> None:
    """In-process host only: a new VM."""
    _py_taps.clear()


def handles(context_id: int, body_size: int, end_of_stream: bool) -> bool:
    """In-process host only: keep or skip the chunk if the stream is tapped; True if Python need not see it."""
    tap = _py_taps.get(context_id)
    return False if tap is None else tap.handles(body_size, end_of_stream)

