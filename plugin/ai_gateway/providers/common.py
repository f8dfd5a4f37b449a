"""What every upstream-protocol translator shares: OpenAI's side of the translation.

A request translator reads the OpenAI request (a dict) and rejects, with a 400 naming the field, what the provider
cannot carry (``untranslatable``); an answer translator builds OpenAI shapes (``chunk``, ``usage``, ``error``)
from the provider's, and reads the provider's SSE events as they complete, whatever the splits (``EventSplitter``).
"""

from __future__ import annotations

import json

from proxywasm.jsonscan import JsonObject

from ..errors import GatewayError, error_body
from ..request import encode_json as encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

DONE = b"data: [DONE]\n\n"
CHAT = "chat"  # the request kinds a translator is asked for (from the client's path)
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
_KINDS = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS}
MAX_EVENT = 1 << 20  # a provider event longer than this ends the stream with an error (no unbounded buffering)


def kind_of(path: str) -> str:
    """The request kind of a client's path (``/v1/chat/completions?x=1`` -> ``chat``); "" for any other path."""
    return _KINDS.get(path.partition("?")[0], "")


def untranslatable(provider: str, field: str, why: str) -> GatewayError:
    return GatewayError(400, f"`{field}` cannot be sent to this model ({provider}): {why}", "unsupported_parameter",
                        field)


def check_kind(provider: str, kind: str) -> None:
    if kind != CHAT:
        raise GatewayError(400, f"this model ({provider}) serves /v1/chat/completions only", "unsupported_endpoint")


def reject_unsupported(provider: str, doc: dict[str, Any], fields: tuple[str, ...]) -> None:
    """A 400 for the first of ``fields`` set to something other than its neutral value (absent, null, 0, false,
    empty, ``n`` 1, ``response_format`` text)."""
    for f in fields:
        v = doc.get(f)
        if v is None or v is False or v == 0 or v == {} or v == [] or (f == "n" and v == 1):
            continue
        if f == "response_format" and isinstance(v, dict) and v.get("type") == "text":
            continue
        raise untranslatable(provider, f, "the provider has no equivalent")


def max_tokens(doc: dict[str, Any], default: int) -> int:
    for f in ("max_completion_tokens", "max_tokens"):
        v = doc.get(f)
        if v is not None:
            if type(v) is not int or v < 1:
                raise GatewayError(400, f"`{f}` must be a positive integer", "invalid_value", f)
            return v
    return default


def stops(doc: dict[str, Any]) -> list[str]:
    s = doc.get("stop")
    if s is None:
        return []
    if isinstance(s, str):
        return [s]
    if isinstance(s, list) and all(isinstance(x, str) for x in s):
        return s
    raise GatewayError(400, "`stop` must be a string or a list of strings", "invalid_value", "stop")


def text_of(content: Any, field: str) -> str:
    """The text of a message's content (a string, or text parts); images are not allowed where this is used."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for p in content:
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str):
                out.append(p["text"])
            else:
                raise GatewayError(400, f"`{field}` may hold only text here", "invalid_value", field)
        return "".join(out)
    raise GatewayError(400, f"`{field}` must be a string or a list of parts", "invalid_value", field)


def image_url(part: dict[str, Any], field: str) -> tuple[str, str, str]:
    """An ``image_url`` part as (media type, base64 data, "") for a data URL, or ("", "", url) for a link."""
    iu = part.get("image_url")
    url = iu.get("url") if isinstance(iu, dict) else iu
    if not isinstance(url, str) or not url:
        raise GatewayError(400, f"`{field}.image_url.url` must be a URL", "invalid_value", f"{field}.image_url")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media, _, enc = head.partition(";")
        if not sep or enc != "base64" or not media:
            raise GatewayError(400, f"`{field}.image_url.url`: a data URL must be data:<type>;base64,<data>",
                               "invalid_value", f"{field}.image_url")
        return media, data, ""
    return "", "", url


def user_parts(provider: str, content: Any, field: str, text: Callable[[str], Any],
               image: Callable[[str, str, str], Any]) -> list[Any]:
    """A user message's parts, each made by ``text(text)`` or ``image(media type, base64 data, url)``; any other
    part is a 400 naming it."""
    if isinstance(content, str):
        return [text(content)]
    if not isinstance(content, list):
        raise GatewayError(400, f"`{field}` must be a string or a list of parts", "invalid_value", field)
    out = []
    for j, p in enumerate(content):
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            out.append(text(p["text"]))
        elif kind == "image_url":
            out.append(image(*image_url(p, f"{field}[{j}]")))
        else:
            raise untranslatable(provider, f"{field}[{j}]", f"a {kind!r} part has no equivalent there")
    return out


def conversation(provider: str, msgs: Any) -> tuple[list[str], list[tuple[str, str, dict[str, Any]]]]:
    """The system and developer messages' texts, and the other messages as (field, role, message)."""
    if not isinstance(msgs, list) or not msgs:
        raise GatewayError(400, "`messages` must be a non-empty list", "invalid_value", "messages")
    system: list[str] = []
    rest = []
    for i, m in enumerate(msgs):
        field = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            system.append(text_of(m.get("content"), f"{field}.content"))
        elif role in ("user", "assistant", "tool"):
            rest.append((field, role, m))
        else:
            raise untranslatable(provider, f"{field}.role", f"role {role!r} has no equivalent there")
    if not rest:
        raise GatewayError(400, "`messages` needs a user message", "invalid_value", "messages")
    return system, rest


def arguments(tc: Any, field: str) -> tuple[str, str, Any]:
    """(id, name, arguments decoded) of an assistant message's tool call."""
    fn = tc.get("function") if isinstance(tc, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise GatewayError(400, f"`{field}.function.name` is required", "invalid_value", field)
    raw = fn.get("arguments") or "{}"
    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise GatewayError(400, f"`{field}.function.arguments` must be JSON", "invalid_value", field) from None
    return str(tc.get("id") or ""), fn["name"], args


def functions(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's tools, each ``{name, description?, parameters?}``; only function tools exist here."""
    out = []
    for i, t in enumerate(doc.get("tools") or ()):
        fn = t.get("function") if isinstance(t, dict) and t.get("type", "function") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise GatewayError(400, f"`tools[{i}]` must be a function tool with a name", "invalid_value", f"tools[{i}]")
        out.append(fn)
    return out


def tool_choice(doc: dict[str, Any]) -> tuple[str, str]:
    """(mode, function name): mode one of auto, none, required, function ("" when not set)."""
    tc = doc.get("tool_choice")
    if tc is None:
        return "", ""
    if tc in ("auto", "none", "required"):
        return tc, ""
    fn = tc.get("function") if isinstance(tc, dict) else None
    if isinstance(fn, dict) and isinstance(fn.get("name"), str):
        return "function", fn["name"]
    raise GatewayError(400, "`tool_choice` must be auto, none, required or a function", "invalid_value", "tool_choice")


def include_usage(doc: dict[str, Any]) -> bool:
    opts = doc.get("stream_options")
    return isinstance(opts, dict) and opts.get("include_usage") is True


# -- answers --


def usage(prompt: int, completion: int, total: int = 0, cached: int | None = None,
          reasoning: int | None = None) -> dict[str, Any]:
    u: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                         "total_tokens": total or prompt + completion}
    if cached is not None:
        u["prompt_tokens_details"] = {"cached_tokens": cached}
    if reasoning is not None:
        u["completion_tokens_details"] = {"reasoning_tokens": reasoning}
    return u


def completion(rid: str, created: int, model: str, choices: list[dict[str, Any]],
               use: dict[str, Any] | None) -> bytes:
    doc = {"id": rid, "object": "chat.completion", "created": created, "model": model, "choices": choices}
    if use is not None:
        doc["usage"] = use
    return encode(doc)


def error(status: int, message: str, code: str) -> bytes:
    """An OpenAI-style error body for a provider's error (``code``: the provider's error kind; a 429 is OpenAI's
    ``rate_limit_exceeded``, which clients back off on)."""
    if status == 429:
        return error_body(status, message, "rate_limit_exceeded", None, "requests")
    return error_body(status, message, code)


def event(doc: Any) -> bytes:
    return b"data: " + encode(doc) + b"\n\n"


_MARK = b'"\\u0000":0'  # ({"\x00": 0} encoded) where a delta's members go in a chunk made once per answer (Chunks.member)


class Chunks:
    """Builds one answer's OpenAI stream chunks (``chat.completion.chunk``), as SSE events."""

    __slots__ = ("created", "final", "head", "id", "model", "out", "tail", "usage_wanted")

    def __init__(self, created: int, usage_wanted: bool) -> None:
        self.id, self.model, self.created, self.usage_wanted = "", "", created, usage_wanted
        self.out: list[bytes] = []
        self.head = self.tail = b""
        self.final: dict[str, Any] | None = None  # the answer's usage, once the provider reported it whole

    def member(self, raw: bytes) -> None:
        """A delta of choice 0 holding ``raw`` (``"content":"..."``: JSON as the provider sent it, not decoded):
        the hot path of a stream, a copy into a chunk encoded once per answer."""
        if not self.head:
            whole = event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                           "model": self.model, "choices": [{"index": 0, "delta": {"\x00": 0}, "logprobs": None,
                                                             "finish_reason": None}]})
            i = whole.rindex(_MARK)
            self.head, self.tail = whole[:i], whole[i + len(_MARK) :]
        self.out.append(self.head + raw + self.tail)

    def delta(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> None:
        self.out.append(event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                                                 "finish_reason": finish}]}))

    def usage(self, use: dict[str, Any]) -> None:
        self.final = use
        if self.usage_wanted:
            self.out.append(event({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                   "model": self.model, "choices": [], "usage": use}))

    def error(self, message: str, kind: str, code: str) -> None:
        """An error in the middle of a stream, as OpenAI sends one (clients raise it); no [DONE] follows."""
        self.out.append(event({"error": {"message": message, "type": kind, "param": None, "code": code}}))

    def take(self) -> bytes:
        out = b"".join(self.out)
        self.out.clear()
        return out


class EventSplitter:
    """A provider's SSE stream in arbitrary splits -> the data of its complete events (the ``event:`` line is not
    needed: both providers' data say what they are)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self.buf + chunk if self.buf else chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the next byte
                self.buf = buf
                return []
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > MAX_EVENT:
                raise ValueError("provider event too long")
            self.buf = buf
            return []
        self.buf = buf[end + 2 :]
        out = []
        for raw in buf[:end].split(b"\n\n"):
            i = raw.find(b"data:")
            if i < 0:
                continue
            j = raw.find(b"\n", i)
            if (i == 0 or raw[i - 1] == 10) and (j < 0 or raw.find(b"data:", j) < 0):  # one data line: the usual
                d = raw[i + 5 :] if j < 0 else raw[i + 5 : j]
                out.append(d[1:] if d[:1] == b" " else d)
                continue
            lines = [ln[6:] if ln[5:6] == b" " else ln[5:] for ln in raw.split(b"\n") if ln.startswith(b"data:")]
            if lines:
                out.append(b"\n".join(lines))
        return out


def json_string(raw: bytes) -> bool:
    """Whether ``raw`` (from a JSON document) is one whole JSON string: quoted, no unescaped quote inside."""
    if len(raw) < 2 or raw[0] != 34 or raw[-1] != 34:
        return False
    inner = raw[1:-1]
    if 92 in inner:  # backslashes: drop escaped backslashes, then escaped quotes
        inner = inner.replace(b"\\\\", b"")
        if inner.endswith(b"\\"):
            return False  # the closing quote was escaped
        inner = inner.replace(b'\\"', b"")
    return 34 not in inner


def count(v: Any) -> int:
    """A provider's token count (anything else: 0)."""
    return v if type(v) is int and v >= 0 else 0


class StreamTranslator:
    """A provider's event stream -> OpenAI chunks as each event completes; subclasses read one event (``event``)
    and may close the answer when the upstream body ends (``end``)."""

    __slots__ = ("chunks", "done", "events")

    def __init__(self, created: int, usage_wanted: bool) -> None:
        self.chunks = Chunks(created, usage_wanted)
        self.events = EventSplitter()
        self.done = False  # [DONE] or an error was sent: nothing more goes to the client

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if self.done:
            return b""
        try:
            events = self.events.feed(chunk + b"\n\n" if end else chunk)  # at the end, a last event without its
        except ValueError:  # blank line is whole
            self.chunks.error("the provider's event is too long", "server_error", "bad_upstream_answer")
            self.done = True
            return self.chunks.take()
        for data in events:
            if not self.fast(data):
                try:  # indexed natively; members are decoded only when read
                    doc = JsonObject.parse(data)
                except ValueError:
                    doc = None
                if doc is not None:
                    self.event(doc)
            if self.done:
                return self.chunks.take()
        if end:
            self.end()
        return self.chunks.take()

    def fast(self, data: bytes) -> bool:
        """Translate the most common event by its bytes alone; False: not that one (``event`` reads it)."""
        return False

    @property
    def final_usage(self) -> dict[str, Any] | None:
        """The answer's usage (OpenAI's shape) once the provider reported it whole."""
        return self.chunks.final

    def event(self, doc: JsonObject) -> None:
        raise NotImplementedError

    def end(self) -> None:
        """The upstream body ended (after every event was read)."""


def json_of(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None


class Whole:
    """An answer translated once it is whole (a JSON answer, an error): ``convert(body) -> body``."""

    __slots__ = ("convert", "parts")
    final_usage = None  # read from the translated answer, as from any JSON answer

    def __init__(self, convert: Callable[[bytes], bytes]) -> None:
        self.convert, self.parts = convert, []

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if chunk:
            self.parts.append(chunk)
        if not end:
            return b""
        body, self.parts = b"".join(self.parts), []
        return self.convert(body)
