"""An OpenAI chat-completions stream as Anthropic's Messages stream, event by event.

Fed the upstream's SSE bytes as they come, split anywhere (inside a line, an event, a UTF-8 character), it returns
the Anthropic events each complete OpenAI event makes: ``message_start`` on the first, ``content_block_start`` /
``content_block_delta`` (``text_delta``, ``thinking_delta``, ``input_json_delta``) / ``content_block_stop`` as
text, reasoning and tool calls come and go, and on ``data: [DONE]`` (or the body's end after the finish) one
``message_delta`` with the stop reason and usage, then ``message_stop``. Only an incomplete event is held. The
usage-only chunk (``stream_options.include_usage``, which the gateway always asks for) becomes message_delta's
usage; an upstream error event, or an end before the answer finished, becomes ``event: error``.

The usual chunk, one event that adds text to the text block (vLLM's exact bytes, ``_TEXT``), is translated without
decoding it: its content's JSON string goes into the Anthropic event as it is. Every other event is decoded.
The translator is also the gateway's reader of the stream it translates (``usage``, ``done``, as usage.SseScanner).
"""

from __future__ import annotations

import json
import re
from json.encoder import encode_basestring_ascii as _str

from ..request import encode_json
from ..usage import EVENT_END, Usage, event_data
from .anthropic_answer import error_doc, message_id, stop_reason, usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_EMPTY_USAGE = {"input_tokens": 0, "output_tokens": 0}
_START = {"text": {"type": "text", "text": ""}, "thinking": {"type": "thinking", "thinking": "", "signature": ""}}
_DELTA = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking")}
# One text delta of choice 0, no finish, no usage (vLLM's chunk; SGLang's and others' take the general path)
_TEXT_AT = b'"choices":[{"index":0,"delta":{"content":"'  # found first (C), then matched from there
_TEXT = re.compile(rb'"choices":\[\{"index":0,"delta":\{"content":("(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*")\},'
                   rb'"logprobs":null,"finish_reason":null(?:,"stop_reason":null)?\}\](?:,"usage":null)?\}$')
_TEXT_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":%s}}\n\n'


def sse(kind: str, data: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


def error_event(status: int, message: str) -> bytes:
    return sse("error", encode_json(error_doc(status, message)))


class StreamTranslator:
    """One answer's translation; ``feed`` returns the bytes the client gets for each piece of the upstream's."""

    __slots__ = ("block", "buf", "done", "ended", "index", "input_tokens", "kind", "reason", "started", "stops",
                 "tools", "usage_doc")

    def __init__(self, stops: tuple[str, ...] = (), input_tokens: int = 0) -> None:
        self.stops = stops  # the request's stop_sequences (which one ended the answer: vLLM's stop_reason)
        # message_start's input tokens, as Anthropic sends them before any output: the gateway's estimate (the
        # server reports its count only at the end, in the usage chunk that becomes message_delta's usage)
        self.input_tokens = input_tokens
        self.buf = b""
        self.started = False  # message_start sent
        self.ended = False  # message_stop or an error sent: nothing more goes out
        self.index = -1  # the current content block's index
        self.kind = ""  # its kind while open: text | thinking | tool_use; "" when none is open
        self.block = 0  # the next block's index
        self.tools: dict[Any, int] = {}  # OpenAI tool call index -> its block's index
        self.reason: tuple[str, str | None] | None = None  # (stop_reason, stop_sequence) once the choice finished
        self.usage_doc: Any = None  # the upstream's last usage object
        self.done = False  # the answer ended whole (message_stop sent)

    @property
    def usage(self) -> Usage | None:
        return Usage.from_obj(self.usage_doc)

    def feed(self, chunk: bytes, end: bool = False) -> bytes:
        if self.kind == "text" and not self.buf and chunk.endswith(b"\n\n") and chunk.find(b"\n") == len(chunk) - 2 \
                and chunk.startswith(b"data: "):  # one whole event (the usual chunk)
            i = chunk.find(_TEXT_AT, 6)
            m = _TEXT.match(chunk, i, len(chunk) - 2) if i > 0 else None
            if m is not None:
                out = _TEXT_DELTA % (self.index, m.group(1))
                return out + self.feed(b"", True) if end else out
        buf = self.buf + chunk if self.buf else chunk
        out: list[bytes] = []
        start = 0
        for m in EVENT_END.finditer(buf):
            if not self.ended:
                self._event(buf[start : m.end()], out)
            start = m.end()
        self.buf = buf[start:]
        if end:
            if self.buf.strip() and not self.ended:  # a last event without its blank line
                self._event(self.buf, out)
            self.buf = b""
            if not self.ended:
                self._finish(out)
        return b"".join(out)

    def _event(self, event: bytes, out: list[bytes]) -> None:
        data = event_data(event)
        if not data:
            return  # a comment or keep-alive
        if data == b"[DONE]":
            self._finish(out)
            return
        if self.kind == "text":  # the usual event, undecoded
            i = data.find(_TEXT_AT)
            m = _TEXT.match(data, i) if i > 0 else None
            if m is not None:
                out.append(_TEXT_DELTA % (self.index, m.group(1)))
                return
        try:
            obj = json.loads(data)
        except ValueError:
            return  # not an event of an OpenAI stream: nothing to say about it
        if not isinstance(obj, dict):
            return
        err = obj.get("error")
        if err is not None:  # vLLM reports a failure mid-stream as an event
            msg = err.get("message") if isinstance(err, dict) else err
            self._close(out)
            out.append(error_event(500, msg if isinstance(msg, str) else "upstream error"))
            self.ended = True
            return
        if not self.started:
            self.started = True
            out.append(sse("message_start", encode_json({"type": "message_start", "message": {
                "id": message_id(obj.get("id")), "type": "message", "role": "assistant",
                "model": obj.get("model", ""), "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": self.input_tokens, "output_tokens": 0}}})))
        u = obj.get("usage")
        if isinstance(u, dict):
            self.usage_doc = u
        choices = obj.get("choices")
        if not choices or not isinstance(choices, list):
            return
        ch = choices[0]
        if not isinstance(ch, dict) or ch.get("index", 0) != 0:
            return  # Anthropic's message has one choice
        delta = ch.get("delta")
        if isinstance(delta, dict):
            thinking = delta.get("reasoning_content") or delta.get("reasoning")
            if thinking and isinstance(thinking, str):
                self._delta("thinking", thinking, out)
            text = delta.get("content")
            if text and isinstance(text, str):
                self._delta("text", text, out)
            calls = delta.get("tool_calls")
            if calls and isinstance(calls, list):
                for tc in calls:
                    if isinstance(tc, dict):
                        self._tool(tc, out)
        if ch.get("finish_reason"):
            self._close(out)
            self.reason = stop_reason(ch, self.stops, bool(self.tools))

    def _open(self, kind: str, start: dict[str, Any], out: list[bytes]) -> int:
        self._close(out)
        i = self.index = self.block
        self.block += 1
        self.kind = kind
        out.append(sse("content_block_start", b'{"type":"content_block_start","index":%d,"content_block":%s}'
                       % (i, encode_json(start))))
        return i

    def _close(self, out: list[bytes]) -> None:
        if self.kind:
            out.append(sse("content_block_stop", b'{"type":"content_block_stop","index":%d}' % self.index))
            self.kind = ""

    def _delta(self, kind: str, text: str, out: list[bytes]) -> None:
        if self.kind != kind:
            self._open(kind, _START[kind], out)
        dtype, field = _DELTA[kind]
        out.append(sse("content_block_delta", b'{"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":%s}}'
                       % (self.index, dtype.encode(), field.encode(), _str(text).encode())))

    def _tool(self, tc: dict[str, Any], out: list[bytes]) -> None:
        n = tc.get("index", 0)
        fn = tc.get("function")
        fn = fn if isinstance(fn, dict) else {}
        i = self.tools.get(n)
        if i is None:  # a new call: its id and name come first
            i = self.tools[n] = self._open("tool_use", {"type": "tool_use", "id": tc.get("id") or "",
                                                        "name": fn.get("name") or "", "input": {}}, out)
        args = fn.get("arguments")
        if args and isinstance(args, str):
            out.append(sse("content_block_delta", b'{"type":"content_block_delta","index":%d,"delta":'
                           b'{"type":"input_json_delta","partial_json":%s}}' % (i, _str(args).encode())))

    def _finish(self, out: list[bytes]) -> None:
        """``[DONE]`` or the body's end: the message ends, or (never finished) the client hears why not."""
        self._close(out)
        self.ended = True
        if self.reason is None:
            out.append(error_event(502, "the upstream stream ended before the answer was complete"))
            return
        reason, seq = self.reason
        self.done = True
        out.append(sse("message_delta", encode_json({"type": "message_delta", "delta": {
            "stop_reason": reason, "stop_sequence": seq},
            "usage": usage(self.usage_doc) if self.usage_doc else _EMPTY_USAGE})))
        out.append(sse("message_stop", b'{"type":"message_stop"}'))
