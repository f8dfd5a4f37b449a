"""Token usage from upstream responses: whole JSON bodies and SSE streams split anywhere.

The SSE scanner works on bytes and only ever parses complete events, so a chunk
boundary inside a line, a JSON object or a UTF-8 character changes nothing. Only
events that carry a non-null ``usage`` are JSON-decoded (the hot path is a byte search).
"""

from __future__ import annotations

import json
import re
from collections import deque

from proxywasm.jsonscan import JsonObject

MAX_JSON_BODY = 1 << 20  # parse whole bodies up to this; beyond, scan the tail for usage
MAX_EVENT = 1 << 20  # an SSE event longer than this is passed on unexamined (usage reports are small)
TAIL = 8192
INDEX_MAX = 1 << 16  # JSON answers up to this are indexed whole first (valid JSON: the same answer as below)
TAIL_KEEP = 1 << 16  # an SSE stream passed through keeps its last 64 KiB for reading usage and [DONE]
SETTLE_WINDOW = 4096  # ... and reads its last 4 KiB first
_USAGE_RE = re.compile(rb'"usage"\s*:\s*\{([^{}]*)\}')
_FIELD_RE = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d{1,12})')
# An event ends at a blank line: two line ends, each LF, CRLF or CR (WHATWG event streams), so LF LF, CRLF CRLF,
# CR CR and the mixed LF CRLF (CRLF LF holds LF LF; CR CRLF holds CR CR). LF then a bare CR is not taken for one:
# whether that CR starts a CRLF is known only from the next byte, which a chunk may not hold yet.
EVENT_END = re.compile(rb"\r\n\r\n|\n\r\n|\n\n|\r\r")
_USUAL_END = b"\n\ndata: [DONE]\n\n"
# "usage": {object, at most one level of nested objects}, then only scalar members and the closing "}"
_USAGE_LAST = re.compile(rb'"usage"\s*:\s*(\{[^{}\[\]]*(?:\{[^{}\[\]]*\}[^{}\[\]]*)*\})[^{}\[\]]*\}\s*\Z')


class Usage:
    """Token counts of one answer (a plain class: one is made per request)."""

    __slots__ = ("input", "output", "total")

    def __init__(self, input: int = 0, output: int = 0, total: int = 0) -> None:
        self.input, self.output, self.total = input, output, total

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Usage) and (self.input, self.output, self.total) == (
            other.input, other.output, other.total)

    def __repr__(self) -> str:
        return f"Usage(input={self.input}, output={self.output}, total={self.total})"

    @classmethod
    def from_obj(cls, usage: object) -> Usage | None:
        """From a usage object (a dict, or a lazy JsonObject); None for anything else."""
        if isinstance(usage, JsonObject):  # the counts come decoded with the scan's index
            small = usage.small_int
            inp, out, total = small(b"prompt_tokens"), small(b"completion_tokens"), small(b"total_tokens")
        elif isinstance(usage, dict):
            inp, out, total = usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")
        else:
            return None
        inp, out = _count(inp), _count(out)
        return cls(inp, out, _count(total) or inp + out)


def _count(v: object) -> int:
    return v if type(v) is int and 0 <= v < 1 << 40 else 0  # not bool, not float, not absurd


def usage_from_json(body: bytes) -> Usage | None:
    """Usage of a complete (non-streaming) response body, or None.

    A body of at most INDEX_MAX bytes is validated and indexed in one native pass (SIMD) and only its ``usage``
    member read; a longer one has its top-level ``usage`` found from the end when that is unambiguous, else the
    same native pass. A body that is not strict JSON gets the search from the end, Python's laxer decoder (NaN),
    then the tail search.
    """
    small = len(body) <= INDEX_MAX
    if small:
        try:
            return _usage_of(JsonObject.parse(body))
        except ValueError:
            pass
    fast = _top_level_usage(body)
    if fast is not None:
        return fast
    if not small:
        try:
            return _usage_of(JsonObject.parse(body))
        except ValueError:
            pass
    doc = _lenient(body)  # not strict JSON: Python's json is laxer (NaN), as upstreams can be
    return usage_from_tail(body[-TAIL:]) if doc is None else Usage.from_obj(doc.get("usage"))


def _usage_of(doc: JsonObject | None) -> Usage | None:
    return None if doc is None else Usage.from_obj(doc.object("usage"))


def _top_level_usage(body: bytes) -> Usage | None:
    """The top-level ``usage`` object, found from the end, when that is unambiguous.

    Usage sits near the end of an answer. The last ``"usage"`` key is taken when it follows ``{`` or
    ``,`` (so it is a key, not text in a string) and only scalar members and the final ``}`` come after
    its object (so its parent is the outermost object). Anything else takes the full scan.
    """
    i = body.rfind(b'"usage"')
    if i < 0 or body[max(0, i - 64) : i].rstrip()[-1:] not in (b"{", b","):
        return None
    m = _USAGE_LAST.match(body, i)
    if m is None:
        return None
    try:
        return Usage.from_obj(JsonObject.parse(m.group(1)))
    except ValueError:
        return None


def _lenient(data: bytes) -> dict | None:
    """``data`` decoded by Python's json (NaN and Infinity accepted) when it is an object; None otherwise."""
    try:
        doc = json.loads(data.decode("utf-8"))  # bytes would make json guess UTF-16/32, codecs WASI lacks
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def usage_from_tail(tail: bytes) -> Usage | None:
    """Usage found by pattern in the last bytes of a body too large (or too broken) to parse."""
    matches = _USAGE_RE.findall(tail)
    if not matches:
        return None
    fields = {k.decode(): int(v) for k, v in _FIELD_RE.findall(matches[-1])}
    return Usage.from_obj(fields)


class JsonCollector:
    """Keeps a non-streaming body (bounded) to read its usage at the end."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0
        self.tail = b""

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size <= MAX_JSON_BODY:
            self.parts.append(chunk)
        else:
            if self.parts:
                self.tail = b"".join(self.parts)[-TAIL:]
                self.parts = []
            self.tail = (self.tail + chunk)[-TAIL:]

    def kept(self, data: bytes, size: int, trimmed: bool) -> None:
        """The body as a response tap kept it (whole up to MAX_JSON_BODY, else its last TAIL bytes)."""
        self.size = size
        if trimmed:
            self.parts, self.tail = [], data[-TAIL:]
        else:
            self.parts = [data]

    def usage(self) -> Usage | None:
        return usage_from_json(b"".join(self.parts)) if self.parts else usage_from_tail(self.tail)

    def body(self) -> bytes:
        """The body kept: all of it, or (beyond MAX_JSON_BODY) its end."""
        return b"".join(self.parts) if self.parts else self.tail


def event_data(event: bytes) -> bytes:
    """The data payload of one SSE event (multi-line data joined with newlines)."""
    line = event.rstrip(b"\n")
    if line[:6] == b"data: " and b"\n" not in line and b"\r" not in line:  # one data line (the usual)
        return bytes(line[6:].lstrip(b" "))
    lines = [ln[5:].lstrip(b" ") for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


# Events the scanner must see, as proxywasm.taps markers (the rule of _interesting, below): a "usage" that is not
# null, and [DONE]. A rewritten stream's other whole events go on without Python (skip_response_events).
SKIP_MARKERS = ((b'"usage"', b"null"), (b"[DONE]", b""))


def _interesting(data: bytearray, start: int) -> int:
    """Where ``data[start:]`` may hold a usage report (a ``"usage"`` that is not null) or the [DONE] event; -1: nowhere."""
    done = data.find(b"[DONE]", start)
    stop = done if done >= 0 else len(data)
    i = data.find(b'"usage"', start, stop)
    while i >= 0:
        if not data[i + 7 : i + 23].lstrip(b" \t\r\n:").startswith(b"null"):
            return i  # a usage object, or a "usage" cut off by the chunk end: scan it properly
        i = data.find(b'"usage"', i + 7, stop)
    return done


def _last_event_end(data: bytearray | bytes, start: int, stop: int) -> int:
    """The offset just after the last event end (blank line) in ``data[start:stop]``, or 0.

    Events are short, so the last 512 bytes are searched first, then 4 KiB, then all; ``\r`` endings
    only where a ``\r`` occurs.
    """
    for lo in (stop - 512, stop - 4096, start):
        lo = max(lo, start)
        seps = (b"\n\n", b"\r\r", b"\r\n\r\n", b"\n\r\n") if data.find(b"\r", lo, stop) >= 0 else (b"\n\n",)
        end = 0
        for sep in seps:
            i = data.rfind(sep, lo, stop)
            if i >= 0:
                end = max(end, i + len(sep))
        if end or lo == start:
            return end
    return 0


def _last_bytes(parts: deque[bytes], n: int) -> bytes:
    """The last ``n`` bytes of the concatenated ``parts`` (copying only those)."""
    out: list[bytes] = []
    for part in reversed(parts):
        if len(part) >= n:
            out.append(part[len(part) - n :])
            break
        out.append(part)
        n -= len(part)
    return b"".join(reversed(out))


class SseScanner:
    """Scans an SSE response as it streams.

    ``feed(chunk)`` returns the bytes to pass to the client now. With
    ``drop_usage_only`` (usage was requested by the gateway, not the client) whole
    events are held until complete so the usage-only event can be removed; otherwise
    bytes pass through unchanged and immediately, and only the stream's last
    ``TAIL_KEEP`` bytes are kept: ``usage`` and ``done`` are read from them when asked
    (the usage report and [DONE] are the last events of a stream).

    Both ways, only events that may carry a usage object or [DONE] are split and read
    (splitting an event costs ~40k VM instructions, and most carry neither); ``skim =
    False`` reads every event as it arrives, the reference the tests compare against.
    """

    skim = True

    def __init__(self, drop_usage_only: bool) -> None:
        self.drop = drop_usage_only
        self.pending = bytearray()  # bytes of the event not yet complete (at most MAX_EVENT + one chunk)
        self.oversized = False  # within an event longer than MAX_EVENT: passed on, neither held nor parsed
        self._usage: Usage | None = None
        self._done = False
        self.clean = 0  # leading bytes of pending already seen to hold no usage or [DONE]
        self.tail: deque[bytes] | None = None if drop_usage_only else deque()
        self.tail_size = 0
        self.trimmed = False  # the tail no longer starts at the stream's start
        self.ended = False
        self.settled = -1  # tail_size when usage/done were last read from the tail

    @property
    def usage(self) -> Usage | None:
        """The last usage report seen."""
        if self.tail is not None and self.skim:
            self._settle()
        return self._usage

    @property
    def idle(self) -> bool:
        """Rewriting, and holding nothing back: a chunk of whole events with no SKIP_MARKERS would pass unchanged."""
        return self.drop and self.skim and not self.pending and not self.oversized

    @property
    def done(self) -> bool:
        """Saw the "data: [DONE]" event: the answer is complete, whatever happens to the connection."""
        if self.tail is not None and self.skim:
            self._settle()
        return self._done

    def feed(self, chunk: bytes, end: bool = False) -> bytes:
        tail = self.tail
        if tail is not None and self.skim:  # passing through: keep the last TAIL_KEEP bytes, read them when asked
            if chunk:
                tail.append(chunk)
                self.tail_size += len(chunk)
                while self.tail_size - len(tail[0]) >= TAIL_KEEP:
                    self.tail_size -= len(tail.popleft())
                    self.trimmed = True
            self.ended = self.ended or end
            return chunk
        buf = self.pending
        scan_from = max(0, len(buf) - 3)  # held bytes have no event end, but may end with part of one
        buf += chunk
        if not self.skim or self.oversized:
            return self._split(buf, scan_from, end, chunk)
        old = len(buf) - len(chunk)  # held bytes: they hold no event end, and self.clean of them no mark
        at = _interesting(buf, max(0, min(self.clean, old) - 32))
        cut = _last_event_end(buf, max(0, old - 3), len(buf) if at < 0 else at)
        head = b""
        if cut:  # whole events without usage or [DONE]: passed on as they are
            head = bytes(buf[:cut])
            del buf[:cut]
            scan_from = 0
        out = self._split(buf, scan_from, end, chunk)
        if at < 0:
            self.clean = len(buf)
        return head + out if head else out

    def _settle(self) -> None:
        """Read usage and [DONE] from the kept tail, from its end backwards, stopping at the first find.

        Both are in a stream's last events: its last few KiB are read first, the whole tail only when
        one of them is not there.
        """
        assert self.tail is not None
        if self.settled == self.tail_size:
            return
        self.settled = self.tail_size
        if self._settle_usual():
            return
        for window in (SETTLE_WINDOW, TAIL_KEEP):
            whole = window >= self.tail_size
            data = b"".join(self.tail) if whole else _last_bytes(self.tail, window)
            lo = 0
            if self.trimmed or not whole:  # the first bytes may be the end of an event: start after it
                m = EVENT_END.search(data)
                lo = m.end() if m else len(data)
            hi = len(data) if self.ended else _last_event_end(data, lo, len(data))
            if hi > lo:
                self._done = self._done or self._last_event(data, lo, hi, b"[DONE]")
                if self._last_event(data, lo, hi, b'"usage"') and self._done:
                    return
            if whole:
                return

    def _settle_usual(self) -> bool:
        """The usual end, read at once: ``...\n\ndata: {..usage..}\n\ndata: [DONE]\n\n`` (what the general search
        below finds for it: [DONE] is the last event, and the one before it the last to report usage)."""
        data = _last_bytes(self.tail, SETTLE_WINDOW) if self.tail else b""
        if not data.endswith(_USUAL_END):
            return False
        end = len(data) - len(_USUAL_END) + 2  # just after the usage event's blank line
        start = data.rfind(b"\n\n", 0, end - 2) + 2  # just after the event before it
        if start < 2 or b"\r" in data[start:]:
            return False
        _, usage, _ = _read_event(data[start:end])
        if usage is None:
            return False
        self._done, self._usage = True, usage
        return True

    def _last_event(self, data: bytes, lo: int, hi: int, mark: bytes) -> bool:
        """Find the last event in data[lo:hi] that is [DONE] or reports usage (``mark`` says which); usage is kept."""
        i = data.rfind(mark, lo, hi)
        while i >= 0:
            if mark == b'"usage"' and data[i + 7 : i + 23].lstrip(b" \t\r\n:").startswith(b"null"):
                i = data.rfind(mark, lo, i)
                continue
            start = _last_event_end(data, lo, i) or lo
            m = EVENT_END.search(data, i, hi)
            end = m.end() if m else hi
            if end - start <= MAX_EVENT:
                done, usage, _ = _read_event(data[start:end])
                if mark == b"[DONE]" and done:
                    return True
                if mark == b'"usage"' and usage is not None:
                    self._usage = usage
                    return True
            i = data.rfind(mark, lo, start)
        return False

    def _split(self, buf: bytearray, scan_from: int, end: bool, chunk: bytes) -> bytes:
        self.clean = 0  # what stays held is looked at afresh next time
        out = []
        start = 0
        for m in EVENT_END.finditer(buf, scan_from):
            event = buf[start : m.end()]
            start = m.end()
            if self.oversized or len(event) > MAX_EVENT:  # too long to hold (or to be a usage report)
                self.oversized = False
                out.append(event)
            elif self._event(event) or not self.drop:
                out.append(event)
        del buf[:start]
        if (self.oversized or len(buf) > MAX_EVENT) and len(buf) > 3:  # too long to hold: pass it on at once,
            out.append(buf[:-3])  # all but what may be the start of its end
            del buf[:-3]
            self.oversized = True
        if end and buf:  # a last event without its blank line: scan it, pass it on as it is
            tail = bytes(buf)
            buf.clear()
            if not self.oversized:
                self._event(tail)
            self.oversized = False
            out.append(tail)
        return b"".join(out) if self.drop else chunk

    def _event(self, event: bytes) -> bool:
        """Record what the event says; False if it is a usage-only event to drop."""
        done, usage, usage_only = _read_event(event)
        if done:
            self._done = True
        if usage is not None:
            self._usage = usage
        return not usage_only


def _read_event(event: bytes) -> tuple[bool, Usage | None, bool]:
    """(is the [DONE] event, the usage it reports, is a usage-only event)."""
    if b"[DONE]" in event and event_data(event) == b"[DONE]":
        return True, None, False
    if b'"usage"' not in event:
        return False, None, False
    payload = event_data(event)
    if not payload or payload == b"[DONE]":
        return False, None, False
    try:
        obj: JsonObject | dict | None = JsonObject.parse(payload)
    except ValueError:
        obj = _lenient(payload)
    if obj is None:
        return False, None, False
    if isinstance(obj, dict):
        usage = Usage.from_obj(obj.get("usage"))
        return False, usage, usage is not None and obj.get("choices") == []
    usage = Usage.from_obj(obj.object("usage"))
    choices = obj.text("choices")  # [] (usage-only event) read without decoding
    return False, usage, usage is not None and choices[:1] == b"[" and not choices[1:-1].strip()
