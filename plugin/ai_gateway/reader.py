"""Reading the answer the client gets, whichever attempt it came from: usage, ``[DONE]``, time to first token.

The direct answer and an Envoy retry's answer stream through ``read_answer``; a callout fallback's answer comes
whole (``whole_answer``). Unless usage-only events are to be dropped (each event is then looked at), a body
passes on untouched and the VM keeps only what is read at its end (a response tap): a JSON answer whole (up to
MAX_JSON_BODY, then its end), a stream's last TAIL_KEEP bytes; the tap also counts a stream's generated text
(TTFT, estimates). A provider's answer (providers/) is translated chunk by chunk first (``translator``): such an
answer is read here, untapped, and everything below it sees OpenAI's shapes.
"""

from __future__ import annotations

from proxywasm import hostcalls as hc

from .estimate import OUTPUT_KEYS, body_output, estimate
from .usage import MAX_JSON_BODY, SKIP_MARKERS, TAIL, TAIL_KEEP, JsonCollector, SseScanner, Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class AnswerReader:
    """Mixed into the stream's HttpContext (``self`` is the stream): a separate object per request would cost a
    few thousand VM instructions on every request for nothing but the indirection. Reads ``status``,
    ``drop_usage``, ``client`` and ``body`` (the client's request, for an input estimate) from the stream."""

    sse: SseScanner | None = None  # (or a client protocol's stream translator: it has usage and done too)
    collector: JsonCollector | None = None
    tapped = False  # the response body goes on untouched and the VM keeps its end (see start_answer)
    counting = False  # the response tap counts the generated text of a stream (estimate.OUTPUT_KEYS)
    out_strings = out_bytes = 0  # what it counted: members, their bytes
    first_out_ns = 0  # when the first event carrying output came (time to first token)
    ended = False  # the response body reached its end (also when held back while falling back)
    keep_whole = 0  # the response cache keeps this answer whole up to this many bytes (cache.py); 0: not kept
    cache_raw = b""  # a kept streamed answer, whole (from the response tap, or chunk by chunk in cache_buf)
    cache_buf: list[bytes] | None = None
    translator = None  # a provider's answer -> OpenAI's, chunk by chunk (providers.Answer.begin); None: as it is

    def start_answer(self: Any, content_type: str | None, tap: bool = True) -> None:
        """An answer begins (its response headers): SSE or JSON, tapped unless ``tap`` is False."""
        if "text/event-stream" in (content_type or ""):
            # a translated stream holds no usage chunk the client did not ask for: nothing to drop
            self.sse = SseScanner(self.drop_usage and self.translator is None)
            if tap:  # output is counted (TTFT, estimates) in C, however the chunks go on
                self.count_response_strings(OUTPUT_KEYS)
                self.counting = True
            if tap and not self.drop_usage and self.translator is None:
                self.tap_response_body(TAIL_KEEP, self.keep_whole)
                self.tapped = True
            elif self.keep_whole:
                self.cache_buf = []
        else:
            self.collector = JsonCollector()
            if tap and self.translator is None:
                self.tap_response_body(TAIL, MAX_JSON_BODY)
                self.tapped = True

    def take_tap(self: Any, ended: bool) -> None:
        """What the response tap kept goes to the scanner or collector, as if it had been fed chunk by chunk;
        what it counted, to out_*."""
        tapped, self.tapped, self.counting = self.tapped, False, False
        got = self.take_response_tap()
        if got is None:
            return
        self.out_strings, self.out_bytes, self.first_out_ns = got.strings, got.string_bytes, got.first_string_ns
        if not tapped:
            return
        if self.keep_whole and self.sse is not None and not got.trimmed:
            self.cache_raw = got.data
        if self.sse is not None:
            self.sse.trimmed = got.trimmed  # the kept bytes may start inside an event
            self.sse.feed(got.data, ended)
        elif self.collector is not None:
            self.collector.kept(got.data, got.size, got.trimmed)

    def read_answer(self: Any, body_size: int, end_of_stream: bool) -> None:
        """A response body callback of a streamed answer (the caller publishes at its end)."""
        if self.tapped:  # the end of a tapped body (its last chunk is in the tap)
            self.take_tap(end_of_stream)
            if end_of_stream:
                return
            # not the end: the tap gave up (the host refused a read); this chunk and the next are read here
        chunk = self.response_body.read() if body_size else b""
        tr = self.translator
        if tr is not None:  # the provider's bytes -> OpenAI's, before anything reads them
            chunk = tr.feed(chunk, end_of_stream)
        sse = self.sse
        if sse is not None:
            if self.cache_buf is not None:
                self._keep(chunk)
            out = sse.feed(chunk, end_of_stream)
            if tr is not None or (out is not chunk and out != chunk):
                self.response_body.replace(out)
            if not end_of_stream and sse.idle and self.cache_buf is None and tr is None:  # whole events pass
                self.skip_response_events(SKIP_MARKERS)
        elif self.collector is not None:
            self.collector.feed(chunk)
            if tr is not None:
                self.response_body.replace(chunk)
        if end_of_stream and self.counting:
            self.take_tap(True)

    def _keep(self, chunk: bytes) -> None:
        buf = self.cache_buf
        assert buf is not None
        buf.append(chunk)
        if len(buf) > 1 and sum(map(len, buf)) > self.keep_whole:
            self.cache_buf, self.keep_whole = None, 0  # too large to keep: not stored

    def held_answer(self: Any) -> None:
        """The primary's answer, held while falling back, goes to the client after all (Envoy hands a held body to
        no further callback): a provider's (an error, whole by now) in OpenAI's shape, then in the client's
        protocol (the stream's ``client``)."""
        tr, c = self.translator, self.client
        if (tr is None and c is None) or not self.ended:
            return
        body = self.response_body.read()
        if tr is not None:
            body = tr.feed(body, True)
        if c is not None:
            body = c.whole(self.status, body, self.response_headers.get("content-type"))
        self.response_body.replace(body)

    def whole_answer(self, content_type: str | None, body: bytes) -> bytes:
        """An answer that came whole (a callout); returns the body the client gets."""
        self.translator = None  # translated already, if it had to be (Fallback): not the primary's translator
        self.start_answer(content_type, tap=False)
        if self.sse is not None:
            self.out_strings, self.out_bytes = body_output(body)
            self.first_out_ns = hc.now_ns() if self.out_strings else 0
            return self.sse.feed(body, end=True)
        assert self.collector is not None
        self.collector.feed(body)
        return body

    def answer_usage(self: Any) -> tuple[Usage | None, bool]:
        """(usage, estimated): the server's, else estimated for a served answer whose server said nothing."""
        usage = self.sse.usage if self.sse is not None else self.collector.usage() if self.collector else None
        if usage is None and self.translator is not None:  # a translated stream: its provider's usage, as reported
            final = self.translator.final_usage
            if final is not None:
                usage = Usage.from_obj(final)
        estimated = usage is None and 200 <= self.status < 300
        if estimated:
            out = (self.out_strings, self.out_bytes) if self.sse is not None else (
                body_output(self.collector.body()) if self.collector is not None else (0, 0))
            usage = estimate(self.body, *out)
        return usage, estimated

    @property
    def answer_done(self) -> bool:
        """The answer reached its end, or (SSE) its ``data: [DONE]``."""
        return self.ended or (self.sse is not None and self.sse.done)
