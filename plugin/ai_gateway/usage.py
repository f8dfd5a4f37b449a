"""Token usage from upstream responses: whole JSON bodies and SSE streams split anywhere.

The SSE scanner works on bytes and only ever parses complete events, so a chunk
boundary inside a line, a JSON object or a UTF-8 character changes nothing. Only
events that carry a non-null ``usage`` are JSON-decoded (the hot path is a byte search).
"""

from __future__ import annotations

import json
import re

from proxywasm import record

MAX_JSON_BODY = 1 << 20  # parse whole bodies up to this; beyond, scan the tail for usage
MAX_EVENT = 1 << 20  # an SSE event longer than this is passed on unexamined (usage reports are small)
TAIL = 8192
_USAGE_RE = re.compile(rb'"usage"\s*:\s*\{([^{}]*)\}')
_FIELD_RE = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)"\s*:\s*(\d{1,12})')
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DECODER = json.JSONDecoder()


@record
class Usage:
    input: int = 0
    output: int = 0
    total: int = 0

    @classmethod
    def from_obj(cls, usage: object) -> Usage | None:
        if not isinstance(usage, dict):
            return None
        def num(key: str) -> int:
            v = usage.get(key)
            return v if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 40 else 0
        inp, out = num("prompt_tokens"), num("completion_tokens")
        return cls(inp, out, num("total_tokens") or inp + out)


def usage_from_json(body: bytes) -> Usage | None:
    """Usage of a complete (non-streaming) response body, or None."""
    fast = _top_level_usage(body)
    if fast is not None:
        return fast
    try:
        doc = json.loads(body.decode("utf-8"))  # bytes would make json guess UTF-16/32, codecs WASI lacks
    except (ValueError, RecursionError):
        return usage_from_tail(body[-TAIL:])
    return Usage.from_obj(doc.get("usage")) if isinstance(doc, dict) else None


def _top_level_usage(body: bytes) -> Usage | None:
    """The top-level ``usage`` object read without parsing the whole body, when that is unambiguous.

    Parsing a whole answer costs ~50 VM instructions per byte; usage sits near the end. The last
    ``"usage"`` key is taken when it follows ``{`` or ``,`` (so it is a key, not text in a string) and
    only scalar members and the final ``}`` come after its object (so its parent is the outermost
    object). Anything else, including a body that is not JSON, takes the full parse.
    """
    i = body.rfind(b'"usage"')
    if i < 0:
        return None
    if body[max(0, i - 64) : i].rstrip()[-1:] not in (b"{", b","):
        return None
    j = i + 7
    while body[j : j + 1] in (b" ", b"\t", b"\r", b"\n"):
        j += 1
    if body[j : j + 1] != b":":
        return None
    try:
        text = body[j + 1 :].decode("utf-8")
        start = len(text) - len(text.lstrip())
        obj, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    rest = text[end:].rstrip()
    if not isinstance(obj, dict) or rest[-1:] != "}" or any(c in rest[:-1] for c in "{}[]"):
        return None
    return Usage.from_obj(obj)


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

    def usage(self) -> Usage | None:
        return usage_from_json(b"".join(self.parts)) if self.parts else usage_from_tail(self.tail)


def _data(event: bytes) -> bytes:
    """The data payload of one SSE event (multi-line data joined with newlines)."""
    lines = [ln[5:].lstrip(b" ") for ln in event.splitlines() if ln.startswith(b"data:")]
    return b"\n".join(lines)


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


def _last_event_end(data: bytearray, start: int, stop: int) -> int:
    """The offset just after the last event end (blank line) in ``data[start:stop]``, or 0.

    Events are short, so the last 2 KiB are searched first; ``\r`` endings only where a ``\r`` occurs.
    """
    lo = max(start, stop - 2048)
    while True:
        seps = (b"\n\n", b"\r\r", b"\r\n\r\n") if data.find(b"\r", lo, stop) >= 0 else (b"\n\n",)
        end = 0
        for sep in seps:
            i = data.rfind(sep, lo, stop)
            if i >= 0:
                end = max(end, i + len(sep))
        if end or lo == start:
            return end
        lo = start


def _is_usage_only(obj: dict) -> bool:
    return obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


class SseScanner:
    """Scans an SSE response as it streams.

    ``feed(chunk)`` returns the bytes to pass to the client now. With
    ``drop_usage_only`` (usage was requested by the gateway, not the client) whole
    events are held until complete so the usage-only event can be removed; otherwise
    bytes pass through unchanged and immediately.
    """

    done = False  # saw the "data: [DONE]" event: the answer is complete, whatever happens to the connection
    skim = True  # passing through: split only the events that may matter (False: every event, as reference)

    def __init__(self, drop_usage_only: bool) -> None:
        self.drop = drop_usage_only
        self.pending = bytearray()  # bytes of the event not yet complete (at most MAX_EVENT + one chunk)
        self.oversized = False  # within an event longer than MAX_EVENT: passed on, neither held nor parsed
        self.usage: Usage | None = None
        self.events = 0
        self.clean = 0  # pass-through: leading bytes of pending already seen to hold no usage or [DONE]

    def feed(self, chunk: bytes, end: bool = False) -> bytes:
        buf = self.pending
        scan_from = max(0, len(buf) - 3)  # held bytes have no event end, but may end with part of one
        buf += chunk
        if self.skim and not self.drop and not self.oversized:
            # Passing through: only events that may carry usage or [DONE] are split and read; the events
            # before them are skipped (splitting one costs ~40k VM instructions, and most carry neither).
            old = len(buf) - len(chunk)  # held bytes: they hold no event end, and self.clean of them no mark
            at = _interesting(buf, max(0, min(self.clean, old) - 32))
            cut = _last_event_end(buf, max(0, old - 3), len(buf) if at < 0 else at)
            if cut:
                del buf[:cut]
                scan_from = 0
            if at >= 0:
                return self._split(buf, scan_from, end, chunk)
            self.clean = len(buf)
            if len(buf) > MAX_EVENT:  # an overlong event: from here on the full path passes it unexamined
                del buf[:-3]
                self.oversized = True
            if end:
                buf.clear()
                self.oversized = False
            return chunk
        return self._split(buf, scan_from, end, chunk)

    def _split(self, buf: bytearray, scan_from: int, end: bool, chunk: bytes) -> bytes:
        self.clean = 0  # what stays held is looked at afresh next time
        out = []
        start = 0
        for m in _EVENT_END.finditer(buf, scan_from):
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
        self.events += 1
        if b"[DONE]" in event and _data(event) == b"[DONE]":
            self.done = True
            return True
        if b'"usage"' not in event:
            return True
        payload = _data(event)
        if not payload or payload == b"[DONE]" or re.search(rb'"usage"\s*:\s*\{', payload) is None:
            return True
        try:
            obj = json.loads(payload.decode("utf-8"))
        except (ValueError, RecursionError):
            return True
        if not isinstance(obj, dict):
            return True
        usage = Usage.from_obj(obj.get("usage"))
        if usage is not None:
            self.usage = usage
        return not _is_usage_only(obj)
