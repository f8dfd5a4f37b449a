"""Response body taps: the chunks of a response body go on without a Python call each.

A plugin that only needs how a response body ends (an LLM's token usage, ``data: [DONE]``) and when it began
(time to first token) calls ``HttpContext.tap_response_body(keep, whole_upto)``. From then on the VM keeps every
byte while the body is at most ``whole_upto`` bytes long, then only its last ``keep`` bytes, and the time the
first bytes came; ``on_response_body`` is called again only at the end of the body, with the last chunk already
kept. ``HttpContext.take_response_tap()`` hands over what was kept (once). The shim does this in C
(build/shim/tap.c: one host call per chunk instead of a Python callback); its Python twin for the in-process test
host is proxywasm.testing.shim_twins.

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


def start(context_id: int, keep: int, whole_upto: int) -> None:
    if keep < 1 or whole_upto < 0 or keep > 1 << 30 or whole_upto > 1 << 30:
        raise ValueError("tap_response_body: keep must be 1..2**30 bytes, whole_upto 0..2**30")
    hc.shim.tap_start(context_id, keep, whole_upto)


def take(context_id: int) -> Tapped | None:
    got = hc.shim.tap_take(context_id)
    return None if got is None else Tapped(*got)


def count_keys(context_id: int, keys: tuple[bytes, ...]) -> None:
    if not keys or len(keys) > 6 or not all(isinstance(k, bytes) and 0 < len(k) < 30 for k in keys):
        raise ValueError("count_response_strings: 1..6 keys, bytes of 1..29 bytes (without quotes)")
    hc.shim.tap_count(context_id, keys)


def skip_events(context_id: int, markers: Markers) -> None:
    if len(markers) > 4 or not all(isinstance(n, bytes) and isinstance(u, bytes) and 0 < len(n) < 32 and len(u) < 16
                                   for n, u in markers):
        raise ValueError("skip_response_events: at most 4 (needle, unless) bytes pairs, needles of 1..31 bytes, "
                         "unless texts of at most 15")
    hc.shim.tap_skip(context_id, markers)


def count_strings(data: bytes, keys: tuple[bytes, ...]) -> tuple[int, int]:
    """(members of ``data`` named by one of ``keys`` (without quotes) whose value is a non-empty string, the bytes of
    those values as sent): the rule a counting tap applies to its whole lines (pw_count_strings, build/shim/tap.c).
    A quote inside a JSON string is escaped, so text can never look like a member; the key may be followed by
    spaces, tabs and the colon; a value must close on its line."""
    quoted = tuple(b'"' + k + b'"' for k in keys)
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
