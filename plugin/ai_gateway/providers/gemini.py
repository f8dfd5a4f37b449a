"""OpenAI chat completions -> Gemini ``generateContent`` / ``streamGenerateContent?alt=sse``, and its answers back.

Request: system and developer messages -> ``systemInstruction``; user parts (text; images as ``inlineData`` from
data URLs, ``fileData`` from links); assistant text and tool calls -> ``model`` turns with ``functionCall`` parts;
tool messages -> ``functionResponse`` parts (named by the call they answer); sampling (temperature, top_p, n,
seed, presence/frequency penalties, max tokens, stop, JSON output) -> ``generationConfig``; tools ->
``functionDeclarations``; tool_choice -> ``toolConfig``. Answers: candidates -> choices (``thought`` parts ->
``reasoning_content``), ``finishReason`` -> finish_reason, ``usageMetadata`` -> usage (thoughts count as
completion tokens and as reasoning tokens; cached content as cached tokens). A stream has no end marker: the
OpenAI stream gets its usage chunk and ``[DONE]`` when the upstream body ends after every candidate finished.
"""

from __future__ import annotations

import re

from ..errors import GatewayError
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
    max_tokens,
    reject_unsupported,
    stops,
    text_of,
    tool_choice,
    untranslatable,
    usage,
    user_parts,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from proxywasm.jsonscan import JsonObject

    from .config import Provider

NAME = "gemini"
UNSUPPORTED = ("logprobs", "top_logprobs", "logit_bias", "audio", "modalities", "prediction", "reasoning_effort")
STATUS: dict[int, int] = {}
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
          "IMAGE_SAFETY": "content_filter"}
# one text part of candidate 0 and the usage so far, as Gemini streams a token or a few (", " or ","; ": " or ":")
_TEXT_CHUNK = re.compile(
    rb'data: ?\{"candidates": ?\[\{"content": ?\{"parts": ?\[\{"text": ?("(?:[^"\\\x00-\x1f]++|\\.)*+")\}\], ?'
    rb'"role": ?"model"\}, ?"index": ?0\}\], ?"usageMetadata": ?(\{(?:[^{}]++|\{[^{}]*+\})*+\})'
    rb'(?:, ?"modelVersion": ?"[^"\\]*")?(?:, ?"responseId": ?"[^"\\]*")?\}\r?\n\r?\n')
_CONFIG = (("temperature", "temperature"), ("top_p", "topP"), ("n", "candidateCount"), ("seed", "seed"),
           ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))


def path(p: Provider, kind: str, stream: bool) -> str:
    check_kind(NAME, kind)
    return f"/v1beta/models/{p.model}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")


def headers(p: Provider) -> list[tuple[str, str]]:
    return []


def _image(media: str, data: str, url: str) -> dict[str, Any]:
    return {"fileData": {"fileUri": url}} if url else {"inlineData": {"mimeType": media, "data": data}}


def _text(text: str) -> dict[str, Any]:
    return {"text": text}


def _response(content: str) -> dict[str, Any]:
    doc = json_of(content.encode())
    return doc if isinstance(doc, dict) else {"content": content}


def _contents(msgs: Any) -> tuple[list[str], list[dict[str, Any]]]:
    system, rest = conversation(NAME, msgs)
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name (a functionResponse names its function)
    for field, role, m in rest:
        if role == "user":
            out.append({"role": "user", "parts": user_parts(NAME, m.get("content"), f"{field}.content", _text, _image)})
        elif role == "assistant":
            parts: list[dict[str, Any]] = []
            text = text_of(m.get("content"), f"{field}.content")
            if text:
                parts.append(_text(text))
            for k, tc in enumerate(m.get("tool_calls") or ()):
                cid, name, args = arguments(tc, f"{field}.tool_calls[{k}]")
                names[cid] = name
                parts.append({"functionCall": {"name": name, "args": args}})
            out.append({"role": "model", "parts": parts or [_text("")]})
        else:  # tool
            name = names.get(str(m.get("tool_call_id") or ""))
            if name is None:
                raise GatewayError(400, f"`{field}.tool_call_id` names no earlier tool call", "invalid_value",
                                   f"{field}.tool_call_id")
            part = {"functionResponse": {"name": name,
                                         "response": _response(text_of(m.get("content"), f"{field}.content"))}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "user" and all("functionResponse" in x for x in last["parts"]):
                last["parts"].append(part)  # one turn's results go back together
            else:
                out.append({"role": "user", "parts": [part]})
    return system, out


def request(doc: dict[str, Any], p: Provider) -> bytes:
    """The generateContent body for the OpenAI request ``doc``."""
    reject_unsupported(NAME, doc, UNSUPPORTED)
    system, contents = _contents(doc.get("messages"))
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": s} for s in system]}
    gen: dict[str, Any] = {dst: doc[src] for src, dst in _CONFIG if doc.get(src) is not None}
    if doc.get("max_completion_tokens") is not None or doc.get("max_tokens") is not None:
        gen["maxOutputTokens"] = max_tokens(doc, 0)
    if stops(doc):
        gen["stopSequences"] = stops(doc)
    fmt = doc.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        gen["responseMimeType"] = "application/json"
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt["type"] == "json_schema" else None
        if schema is not None:
            gen["responseJsonSchema"] = schema
    elif fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise untranslatable(NAME, "response_format", "must be text, json_object or json_schema")
    if gen:
        body["generationConfig"] = gen
    tools = functions(doc)
    if tools:
        body["tools"] = [{"functionDeclarations": [
            {"name": f["name"], **({"description": f["description"]} if f.get("description") else {}),
             **({"parametersJsonSchema": f["parameters"]} if f.get("parameters") else {})} for f in tools]}]
    mode, name = tool_choice(doc)
    if mode:
        fcc: dict[str, Any] = {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}[mode]}
        if name:
            fcc["allowedFunctionNames"] = [name]
        body["toolConfig"] = {"functionCallingConfig": fcc}
    return encode(body)


# -- answers --


def _usage(u: Any) -> dict[str, Any] | None:
    if not isinstance(u, dict):
        return None
    thoughts = count(u.get("thoughtsTokenCount"))
    prompt, out = count(u.get("promptTokenCount")), count(u.get("candidatesTokenCount")) + thoughts
    cached = u.get("cachedContentTokenCount")
    return usage(prompt, out, count(u.get("totalTokenCount")) or prompt + out,
                 cached=count(cached) if cached is not None else None, reasoning=thoughts if thoughts else None)


def _call(fc: dict[str, Any], n: int) -> dict[str, Any]:
    return {"id": str(fc.get("id") or f"call_{n}"), "type": "function",
            "function": {"name": str(fc.get("name", "")), "arguments": encode(fc.get("args") or {}).decode()}}


def _finish(reason: Any, calls: bool) -> str:
    f = FINISH.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if calls and f == "stop" else f


def answer(body: bytes, created: int) -> bytes:
    """A GenerateContentResponse -> a ``chat.completion``."""
    doc = json_of(body)
    if not isinstance(doc, dict):
        return error(502, "the provider's answer is not JSON", "bad_upstream_answer")
    choices = []
    for n, cand in enumerate(doc.get("candidates") or ()):
        text, thought, calls = [], [], []
        for part in (cand.get("content") or {}).get("parts") or ():
            if "functionCall" in part:
                calls.append(_call(part["functionCall"], len(calls)))
            elif isinstance(part.get("text"), str):
                (thought if part.get("thought") else text).append(part["text"])
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
        if thought:
            msg["reasoning_content"] = "".join(thought)
        if calls:
            msg["tool_calls"] = calls
        choices.append({"index": cand.get("index", n), "message": msg, "logprobs": None,
                        "finish_reason": _finish(cand.get("finishReason"), bool(calls))})
    if not choices:  # the prompt was blocked (promptFeedback.blockReason): nothing generated
        choices.append({"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": "content_filter"})
    return completion(str(doc.get("responseId", "")), created, str(doc.get("modelVersion", "")), choices,
                      _usage(doc.get("usageMetadata")))


def failure(status: int, body: bytes) -> bytes:
    """A Google API error (``{"error": {"code", "message", "status"}}``) -> OpenAI's shape (``code``: its status,
    lower case)."""
    doc = json_of(body)
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, list) and err:  # some Google front ends answer a list of one error
        err = err[0].get("error") if isinstance(err[0], dict) else None
    if not isinstance(err, dict):
        return error(status, f"the provider answered {status}", "upstream_error")
    return error(status, str(err.get("message") or ""), str(err.get("status") or "upstream_error").lower())


class Stream(StreamTranslator):
    """Gemini's ``alt=sse`` stream (one GenerateContentResponse per event) -> OpenAI chunks."""

    __slots__ = ("calls", "finished", "use", "use_raw")

    def __init__(self, created: int, usage_wanted: bool) -> None:
        super().__init__(created, usage_wanted)
        self.calls: dict[int, int] = {}  # candidate index -> tool calls so far
        self.finished: dict[int, bool] = {}  # candidate index -> its finishReason came
        self.use: dict[str, Any] | None = None
        self.use_raw = b""  # the last usageMetadata a text chunk carried, not decoded (newer than ``use``)

    def feed(self, chunk: bytes, end: bool) -> bytes:
        # A chunk that is one text response of the one candidate, after its first: matched whole in C, its text
        # copied into a chunk of ours; its usage kept undecoded (the last one is read when the stream ends)
        c = self.chunks
        if c.head and not end and not self.events.buf and len(self.finished) == 1 and not self.finished.get(0, True):
            m = _TEXT_CHUNK.fullmatch(chunk)
            if m is not None and m[1] != b'""':
                self.use_raw = m[2]
                return c.head + b'"content":' + m[1] + c.tail
        return super().feed(chunk, end)

    def end(self) -> None:
        if self.finished and all(self.finished.values()):  # every candidate finished: a whole answer
            use = _usage(json_of(self.use_raw)) if self.use_raw else self.use
            if use is not None:
                self.chunks.usage(use)
            self.chunks.out.append(DONE)
            self.done = True

    def event(self, ev: JsonObject) -> None:
        doc = ev.full()
        c = self.chunks
        err = doc.get("error")
        if isinstance(err, dict):
            c.error(str(err.get("message") or ""), "server_error", str(err.get("status") or "upstream_error").lower())
            self.done = True
            return
        c.id, c.model = str(doc.get("responseId", c.id)), str(doc.get("modelVersion", c.model))
        if doc.get("usageMetadata") is not None:
            self.use, self.use_raw = _usage(doc["usageMetadata"]), b""
        cands = doc.get("candidates")
        if not cands and (doc.get("promptFeedback") or {}).get("blockReason"):
            c.delta({"role": "assistant", "content": ""})
            c.delta({}, "content_filter")
            self.finished[0] = True
            return
        for n, cand in enumerate(cands or ()):
            i = cand.get("index", n) if isinstance(cand.get("index", n), int) else n
            if i not in self.finished:
                self.finished[i] = False
                c.delta({"role": "assistant", "content": ""}, index=i)
            for part in (cand.get("content") or {}).get("parts") or ():
                if "functionCall" in part:
                    k = self.calls.get(i, 0)
                    self.calls[i] = k + 1
                    c.delta({"tool_calls": [{"index": k, **_call(part["functionCall"], k)}]}, index=i)
                elif isinstance(part.get("text"), str) and part["text"]:
                    key = "reasoning_content" if part.get("thought") else "content"
                    if i == 0:  # the hot path: one encode of the text into a chunk made once per answer
                        c.member(b'"%s":%s' % (key.encode(), encode(part["text"])))
                    else:
                        c.delta({key: part["text"]}, index=i)
            if cand.get("finishReason"):
                self.finished[i] = True
                c.delta({}, _finish(cand["finishReason"], bool(self.calls.get(i))), index=i)
