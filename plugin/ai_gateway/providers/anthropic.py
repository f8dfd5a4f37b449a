"""OpenAI chat completions -> Anthropic Messages (``POST /v1/messages``), and its answers back.

Request: system and developer messages -> ``system``; user parts (text, images as base64 or URL sources); assistant
tool calls -> ``tool_use`` blocks; tool messages -> ``tool_result`` blocks of one user turn; ``max_tokens`` (required
by Anthropic: the model's configured default when the client sets none); temperature, top_p, stop, tools,
tool_choice (``parallel_tool_calls: false`` -> ``disable_parallel_tool_use``), ``user`` -> ``metadata.user_id``.
Answers: text, ``tool_use`` -> tool_calls, thinking -> ``reasoning_content``; ``stop_reason`` -> finish_reason; usage
(``input_tokens`` + cache reads and writes = prompt tokens, cache reads = cached tokens). Streams: ``message_start``,
``content_block_start/delta/stop``, ``message_delta``, ``message_stop``, ``ping``, ``error`` -> OpenAI chunks as
each event completes. Errors: ``{"type": "error", "error": {"type", "message"}}`` -> OpenAI's shape; 529
(overloaded) -> 503.
"""

from __future__ import annotations

import re

from .common import (
    DONE,
    StreamTranslator,
    arguments,
    check_kind,
    completion,
    conversation,
    count,
    encode,
    error,
    functions,
    json_of,
    json_string,
    max_tokens,
    reject_unsupported,
    stops,
    text_of,
    tool_choice,
    usage,
    user_parts,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from proxywasm.jsonscan import JsonObject

    from .config import Provider

NAME = "anthropic"
PATH = "/v1/messages"
UNSUPPORTED = ("n", "logprobs", "top_logprobs", "logit_bias", "presence_penalty", "frequency_penalty",
               "response_format", "audio", "modalities", "prediction", "reasoning_effort")
STATUS = {529: 503}  # overloaded: a 5xx OpenAI clients know (and retry)
_TEXT_DELTA = b'{"type":"content_block_delta","index":'
# a whole chunk that is one text token, as Anthropic sends it (compact JSON); group 1: the text, one JSON string
_TOKEN = re.compile(rb'(?:event: ?content_block_delta\r?\n)?data: ?\{"type":"content_block_delta","index":\d+,'
                    rb'"delta":\{"type":"text_delta","text":("(?:[^"\\\x00-\x1f]++|\\.)*+")\}\}\r?\n\r?\n')
_TEXT = b',"delta":{"type":"text_delta","text":'
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
          "pause_turn": "stop", "refusal": "content_filter", "model_context_window_exceeded": "length"}


def _image(media: str, data: str, url: str) -> dict[str, Any]:
    source = {"type": "url", "url": url} if url else {"type": "base64", "media_type": media, "data": data}
    return {"type": "image", "source": source}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _messages(msgs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    system, rest = conversation(NAME, msgs)
    out: list[dict[str, Any]] = []
    for field, role, m in rest:
        if role == "user":
            content = m.get("content")
            out.append({"role": "user", "content": content if isinstance(content, str) else
                        user_parts(NAME, content, f"{field}.content", _text, _image)})
        elif role == "assistant":
            blocks: list[dict[str, Any]] = []
            text = text_of(m.get("content"), f"{field}.content")
            if text:
                blocks.append(_text(text))
            for k, tc in enumerate(m.get("tool_calls") or ()):
                cid, name, args = arguments(tc, f"{field}.tool_calls[{k}]")
                blocks.append({"type": "tool_use", "id": cid, "name": name, "input": args})
            out.append({"role": "assistant", "content": text if len(blocks) == 1 and text else blocks})
        else:  # tool
            result = {"type": "tool_result", "tool_use_id": str(m.get("tool_call_id") or ""),
                      "content": text_of(m.get("content"), f"{field}.content")}
            last = out[-1] if out else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list) and \
                    all(b.get("type") == "tool_result" for b in last["content"]):
                last["content"].append(result)  # the results of one turn's calls go back in one user turn
            else:
                out.append({"role": "user", "content": [result]})
    return system, out


def path(p: Provider, kind: str, stream: bool) -> str:
    check_kind(NAME, kind)
    return PATH


def headers(p: Provider) -> list[tuple[str, str]]:
    return [("anthropic-version", p.anthropic_version)]


def request(doc: dict[str, Any], p: Provider) -> bytes:
    """The Messages API body for the OpenAI request ``doc``."""
    reject_unsupported(NAME, doc, UNSUPPORTED)
    system, messages = _messages(doc.get("messages"))
    body: dict[str, Any] = {"model": p.model, "max_tokens": max_tokens(doc, p.max_tokens), "messages": messages}
    if system:
        body["system"] = system[0] if len(system) == 1 else [{"type": "text", "text": s} for s in system]
    for src, dst in (("temperature", "temperature"), ("top_p", "top_p")):
        if doc.get(src) is not None:
            body[dst] = doc[src]
    if stops(doc):
        body["stop_sequences"] = stops(doc)
    if doc.get("stream") is True:
        body["stream"] = True
    tools = functions(doc)
    if tools:
        body["tools"] = [{"name": f["name"], **({"description": f["description"]} if f.get("description") else {}),
                          "input_schema": f.get("parameters") or {"type": "object", "properties": {}}}
                         for f in tools]
    mode, name = tool_choice(doc)
    choice: dict[str, Any] | None = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"},
                                     "function": {"type": "tool", "name": name}}.get(mode)
    if doc.get("parallel_tool_calls") is False and tools:
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None and (tools or mode == "none"):
        body["tool_choice"] = choice
    if isinstance(doc.get("user"), str) and doc["user"]:
        body["metadata"] = {"user_id": doc["user"]}
    return encode(body)


# -- answers --


def _usage(u: Any) -> dict[str, Any]:
    u = u if isinstance(u, dict) else {}
    read, write = count(u.get("cache_read_input_tokens")), count(u.get("cache_creation_input_tokens"))
    prompt = count(u.get("input_tokens")) + read + write
    return usage(prompt, count(u.get("output_tokens")), cached=read)


def answer(body: bytes, created: int) -> bytes:
    """A Messages API answer -> a ``chat.completion``."""
    doc = json_of(body)
    if not isinstance(doc, dict) or doc.get("type") != "message":
        return error(502, "the provider's answer is not a message", "bad_upstream_answer")
    text, thinking, calls = [], [], []
    for block in doc.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            text.append(block.get("text") or "")
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
        elif kind == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""), "arguments": encode(block.get("input", {})).decode()}})
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if thinking:
        msg["reasoning_content"] = "".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    choice = {"index": 0, "message": msg, "logprobs": None,
              "finish_reason": FINISH.get(doc.get("stop_reason") or "", "stop")}
    return completion(doc.get("id", ""), created, doc.get("model", ""), [choice], _usage(doc.get("usage")))


def failure(status: int, body: bytes) -> bytes:
    """An Anthropic error answer -> OpenAI's error shape (``code``: Anthropic's error type)."""
    doc = json_of(body)
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return error(STATUS.get(status, status), f"the provider answered {status}", "upstream_error")
    return error(STATUS.get(status, status), str(err.get("message") or ""), str(err.get("type") or "upstream_error"))


class Stream(StreamTranslator):
    """Anthropic's event stream -> OpenAI chunks, event by event."""

    __slots__ = ("blocks", "finish", "use")

    def __init__(self, created: int, usage_wanted: bool) -> None:
        super().__init__(created, usage_wanted)
        self.blocks: dict[int, int] = {}  # content block index -> tool call index
        self.use: dict[str, Any] = {}
        self.finish: str | None = None

    def feed(self, chunk: bytes, end: bool) -> bytes:
        # One text token per chunk, nothing held: the whole chunk matched in C, copied into a chunk of ours
        m = _TOKEN.fullmatch(chunk) if not self.events.buf and not self.done else None
        if m is None:
            return super().feed(chunk, end)
        c = self.chunks
        if not c.head:
            c.member(b'"content":' + m[1])
            return c.take()
        return c.head + b'"content":' + m[1] + c.tail

    def fast(self, data: bytes) -> bool:
        # Anthropic's wire format for a text token, compact, in this member order; anything else: event()
        if data.startswith(_TEXT_DELTA) and data.endswith(b"}}"):
            k = data.find(_TEXT, len(_TEXT_DELTA))
            if k > 0:
                text = data[k + len(_TEXT) : -2]
                if json_string(text):
                    self.chunks.member(b'"content":' + text)
                    return True
        return False

    def event(self, ev: JsonObject) -> None:
        kind = ev.get("type")
        c = self.chunks
        if kind == "content_block_delta":  # nearly every event: its text goes into the chunk undecoded
            d = ev.object("delta")
            dk = d.get("type") if d is not None else None
            if dk == "text_delta":
                text = d.text("text")
                if text[:1] == b'"':
                    c.member(b'"content":' + text)
            elif dk == "input_json_delta":
                n = self.blocks.get(ev.get("index", -1))
                part = d.text("partial_json")
                if n is not None and part[:1] == b'"' and part != b'""':
                    c.member(b'"tool_calls":[{"index":%d,"function":{"arguments":%s}}]' % (n, part))
            elif dk == "thinking_delta":
                text = d.text("thinking")
                if text[:1] == b'"':
                    c.member(b'"reasoning_content":' + text)
            return
        ev = ev.full()
        if kind == "content_block_start":
            block = ev.get("content_block") or {}
            if block.get("type") == "tool_use":
                n = self.blocks[ev.get("index", -1)] = len(self.blocks)
                c.delta({"tool_calls": [{"index": n, "id": block.get("id", ""), "type": "function",
                                         "function": {"name": block.get("name", ""), "arguments": ""}}]})
        elif kind == "message_start":
            msg = ev.get("message") or {}
            c.id, c.model = str(msg.get("id", "")), str(msg.get("model", ""))
            self.use = dict(msg.get("usage") or {})
            c.delta({"role": "assistant", "content": ""})
        elif kind == "message_delta":
            self.use.update({k: v for k, v in (ev.get("usage") or {}).items() if v is not None})
            reason = (ev.get("delta") or {}).get("stop_reason")
            if reason:
                self.finish = FINISH.get(reason, "stop")
                c.delta({}, self.finish)
        elif kind == "message_stop":
            if self.finish is None:
                c.delta({}, "stop")
            c.usage(_usage(self.use))
            c.out.append(DONE)
            self.done = True
        elif kind == "error":
            err = ev.get("error") or {}
            etype = str(err.get("type") or "api_error")
            c.error(str(err.get("message") or ""), "server_error" if etype != "invalid_request_error" else etype,
                    etype)
            self.done = True
        # ping, content_block_stop and unknown events (Anthropic may add some): nothing to send
