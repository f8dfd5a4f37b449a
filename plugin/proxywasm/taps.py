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
"""

from __future__ import annotations

from . import hostcalls as hc
from .abi import BufferType

try:
    from _proxywasm import tap_skip as _native_skip  # type: ignore[import-not-found]
    from _proxywasm import tap_start as _native_start
    from _proxywasm import tap_take as _native_take
except ImportError:
    _native_start = _native_take = _native_skip = None

Markers = tuple[tuple[bytes, bytes], ...]


class Tapped:
    """What a response tap kept (a plain class, not a record: one is made per response, and a record's
    generic __init__ costs microseconds inside V8)."""

    __slots__ = ("data", "first_ns", "size", "trimmed")

    def __init__(self, data: bytes, size: int, first_ns: int, trimmed: bool) -> None:
        self.data = data  # the whole body, or (trimmed) its last bytes
        self.size = size  # bytes the body had, kept or not
        self.first_ns = first_ns  # when its first bytes came (hostcalls.now_ns clock); 0: it had none
        self.trimmed = trimmed  # bytes were dropped: data is the body's end, not all of it


class _Tap:
    __slots__ = ("armed", "data", "first_ns", "keep", "markers", "size", "trimmed", "whole_upto")

    def __init__(self, keep: int, whole_upto: int) -> None:
        self.keep, self.whole_upto = keep, whole_upto
        self.data = bytearray()
        self.size = self.first_ns = 0
        self.trimmed = self.armed = False
        self.markers: Markers | None = None  # skipping events (skip_events)

    def skips(self, size: int, end_of_stream: bool) -> bool:  # the rules of pw_tap_skips, build/shim/tap.c
        if not size and not end_of_stream:
            return True
        armed, self.armed = self.armed, False
        if not armed or end_of_stream:
            return False
        chunk = hc.get_buffer(BufferType.HTTP_RESPONSE_BODY, 0, size) or b""
        self.armed = _ends_event(chunk) and not _marked(chunk, self.markers or ())
        return self.armed

    def feed(self, size: int) -> None:  # the rules of pw_tap_feed, build/shim/tap.c
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
        self.data += hc.get_buffer(BufferType.HTTP_RESPONSE_BODY, start, size - start) or b""


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
    return None if tap is None else Tapped(bytes(tap.data), tap.size, tap.first_ns, tap.trimmed)


def skip_events(context_id: int, markers: Markers) -> None:
    if len(markers) > 4 or not all(isinstance(n, bytes) and isinstance(u, bytes) and 0 < len(n) < 32 and len(u) < 16
                                   for n, u in markers):
        raise ValueError("skip_response_events: at most 4 (needle, unless) bytes pairs, needles of 1..31 bytes, "
                         "unless texts of at most 15")
    if _native_skip is not None:
        _native_skip(context_id, markers)
        return
    tap = _py_taps.setdefault(context_id, _Tap(1, 0))
    tap.markers, tap.armed = markers, True


def _ends_event(chunk: bytes) -> bool:
    return chunk.endswith((b"\n\n", b"\r\r", b"\r\n\r\n"))


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
    if tap is None:
        return False
    if tap.markers is not None:
        return tap.skips(body_size, end_of_stream)
    tap.feed(body_size)
    return not end_of_stream

