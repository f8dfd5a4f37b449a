"""Reading the answer the client gets, whichever attempt it came from: usage, ``[DONE]``, time to first byte.

The direct answer and an Envoy retry's answer stream through ``on_body``; a callout fallback's answer comes
whole (``whole``). Unless usage-only events are to be dropped (each event is then looked at), a body passes on
untouched and the VM keeps only what is read at its end (a response tap): a JSON answer whole (up to
MAX_JSON_BODY, then its end), a stream's last TAIL_KEEP bytes.
"""

from __future__ import annotations

from proxywasm import hostcalls as hc

from .usage import MAX_JSON_BODY, SKIP_MARKERS, TAIL, TAIL_KEEP, JsonCollector, SseScanner, Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class AnswerReader:
    """Mixed into the stream's HttpContext (``self`` is the stream): a separate object per request would cost a
    few thousand VM instructions on every request for nothing but the indirection."""

    drop_usage = False  # the gateway asked for usage on the client's behalf: drop that event
    sse: SseScanner | None = None
    collector: JsonCollector | None = None
    first_byte_ns = 0
    tapped = False  # the body goes on untouched and the VM keeps its end

    def start_answer(self: Any, content_type: str | None, tap: bool = True) -> None:
        """An answer begins (its response headers): SSE or JSON, tapped unless ``tap`` is False."""
        if "text/event-stream" in (content_type or ""):
            self.sse = SseScanner(self.drop_usage)
            if tap and not self.drop_usage:
                self.tap_response_body(TAIL_KEEP)
                self.tapped = True
        else:
            self.collector = JsonCollector()
            if tap:
                self.tap_response_body(TAIL, MAX_JSON_BODY)
                self.tapped = True

    def take_tap(self: Any, ended: bool) -> None:
        """What the response tap kept goes to the scanner or collector, as if it had been fed chunk by chunk."""
        self.tapped = False
        got = self.take_response_tap()
        if got is None:
            return
        if self.sse is not None:
            self.first_byte_ns = got.first_ns
            self.sse.trimmed = got.trimmed  # the kept bytes may start inside an event
            self.sse.feed(got.data, ended)
        elif self.collector is not None:
            self.collector.kept(got.data, got.size, got.trimmed)

    def read_answer(self: Any, body_size: int, end_of_stream: bool) -> None:
        """A response body callback of a streamed answer."""
        if self.tapped:  # the end of a tapped body (its last chunk is in the tap)
            self.take_tap(end_of_stream)
            if end_of_stream:
                return
            # not the end: the tap gave up (the host refused a read); this chunk and the next are read here
        chunk = self.response_body.read() if body_size else b""
        sse = self.sse
        if sse is not None:
            if chunk and not self.first_byte_ns:
                self.first_byte_ns = hc.now_ns()
            out = sse.feed(chunk, end_of_stream)
            if out is not chunk and out != chunk:
                self.response_body.replace(out)
            if not end_of_stream and sse.idle:  # whole events without marks can pass without Python
                self.skip_response_events(SKIP_MARKERS)
        elif self.collector is not None:
            self.collector.feed(chunk)

    def whole_answer(self, content_type: str | None, body: bytes) -> bytes:
        """An answer that came whole (a callout); returns the body the client gets."""
        self.start_answer(content_type, tap=False)
        if self.sse is not None:
            self.first_byte_ns = hc.now_ns()
            return self.sse.feed(body, end=True)
        assert self.collector is not None
        self.collector.feed(body)
        return body

    def answer_usage(self) -> Usage | None:
        return self.sse.usage if self.sse is not None else self.collector.usage() if self.collector else None

    @property
    def answer_done(self) -> bool:
        """An SSE answer that reached its ``data: [DONE]``."""
        return self.sse is not None and self.sse.done
