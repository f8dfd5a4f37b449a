"""Client protocols other than OpenAI's: a request in the client's protocol becomes an OpenAI chat-completions
request at the start of the pipeline (routing, limits, cache, fallback and accounting then work on it unchanged),
and the answer the client gets goes back into its protocol at the very end.

``BY_PATH`` is the table of what exists: a normalised request path -> the client protocol spoken there. Each
protocol is a class with one instance per request (``request``, ``answer_begins`` then its ``translator``'s
``feed`` for a stream, ``whole``, ``local_reply``); its translations are pure functions in their own modules.
"""

from __future__ import annotations

from .anthropic_answer import error_body, message_body
from .anthropic_request import to_openai
from .anthropic_stream import StreamTranslator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHAT_PATH = "/v1/chat/completions"  # where a translated request goes upstream
MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
CLIENT_KEY_HEADER = "x-api-key"  # Anthropic's API key header: never sent upstream
_SSE = "text/event-stream"


def _is_sse(content_type: str | None) -> bool:
    return content_type is not None and _SSE in content_type


class AnthropicClient:
    """A client of Anthropic's Messages API (``POST /v1/messages``)."""

    protocol = "anthropic"
    counts_tokens = False  # answered by the gateway: the request's input tokens (estimated), nothing goes upstream
    __slots__ = ("content_type", "stops", "translator")

    def __init__(self) -> None:
        self.stops: tuple[str, ...] = ()
        self.translator: StreamTranslator | None = None  # set when a streamed answer begins
        self.content_type: str | None = None  # the upstream answer's (response headers are not readable later)

    def request(self, body: bytes) -> dict[str, Any]:
        """The chat-completions request for the client's body (GatewayError 400 when it is not a valid one)."""
        doc = to_openai(body, self.counts_tokens)
        stop = doc.get("stop")
        self.stops = tuple(s for s in stop if isinstance(s, str)) if isinstance(stop, list) else ()
        return doc

    def answer_begins(self, status: int, input_tokens: int = 0) -> bool:
        """An upstream answer (of ``content_type``) begins: True when it is a stream translated chunk by chunk
        (``translator.feed``, its ``message_start`` saying ``input_tokens``); else its whole body goes through
        ``whole``."""
        if status < 400 and _is_sse(self.content_type):
            self.translator = StreamTranslator(self.stops, input_tokens)
            return True
        self.translator = None
        return False

    def whole(self, status: int, body: bytes, content_type: str | None) -> bytes:
        """A whole answer (JSON, an error, or a stream that came whole, of ``content_type``) in the client's
        protocol."""
        if status >= 400:
            return error_body(status, body)
        if _is_sse(content_type):
            return StreamTranslator(self.stops).feed(body, True)
        return message_body(body, self.stops)

    def local_reply(self, status: int, body: bytes, headers: Any) -> tuple[bytes, list[tuple[str, str]]]:
        """A reply the gateway sends itself (an error, a cache hit, a callout fallback's answer), translated."""
        ctype = next((v for k, v in headers if k.lower() == "content-type"), None)
        drop = ("content-length", "content-type") if status >= 400 else ("content-length",)
        headers = [(k, v) for k, v in headers if k.lower() not in drop]
        if status >= 400:
            headers.append(("content-type", "application/json"))
        return self.whole(status, body, ctype), headers


class AnthropicTokenCounter(AnthropicClient):
    """``POST /v1/messages/count_tokens``: the gateway answers ``{"input_tokens": n}`` itself (estimate.py's
    estimate of the translated request: no OpenAI-compatible server counts tokens for a chat request)."""

    counts_tokens = True
    __slots__ = ()

    def local_reply(self, status: int, body: bytes, headers: Any) -> tuple[bytes, list[tuple[str, str]]]:
        return (body, list(headers)) if status < 400 else super().local_reply(status, body, headers)


BY_PATH = {MESSAGES_PATH: AnthropicClient, COUNT_TOKENS_PATH: AnthropicTokenCounter}
