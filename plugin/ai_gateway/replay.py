"""Cached answers in both shapes: a streamed answer folded into the JSON answer it stands for, and a JSON answer
played back as an OpenAI-style SSE stream (several chunks, the usage chunk when asked for, ``data: [DONE]``).

Only the response cache (cache.py) uses this, on a cacheable miss's end and on a hit: never on the usual path.
"""

from __future__ import annotations

import json

from .request import encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PIECE = 24  # characters of text per replayed chunk (cut at a space when there is one)


def _events(raw: bytes) -> tuple[list[dict[str, Any]], bool]:
    """The JSON objects of an SSE body's data lines, and whether it reached ``data: [DONE]``."""
    out, done = [], False
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:"))
        if not data:
            continue
        if data.strip() == b"[DONE]":
            done = True
            continue
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the interpreter allows
            return [], False
        if isinstance(obj, dict):
            out.append(obj)
    return out, done


MAX_TOOL_CALLS = 128  # per choice: an index past this (or not next in line) is a malformed stream
MAX_CHOICES = 128  # choice indexes (OpenAI's n is at most 128)


class Malformed(Exception):
    """A stream no server sends (wrong types, tool-call indexes out of line): not cached."""


def _str(v: Any) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Malformed
    return v


def _obj(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise Malformed
    return v


def _merge_tool_calls(have: list[dict[str, Any]], deltas: Any) -> None:
    if not isinstance(deltas, list):
        raise Malformed
    for d in deltas:
        d = _obj(d)
        idx = d.get("index", len(have))
        if type(idx) is not int or not 0 <= idx <= min(len(have), MAX_TOOL_CALLS - 1):
            raise Malformed  # a new call comes next in line; 10**9 must not build a list that long
        if idx == len(have):
            have.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        tc = have[idx]
        if d.get("id"):
            tc["id"] = _str(d["id"])
        if d.get("type"):
            tc["type"] = _str(d["type"])
        fn = _obj(d.get("function"))
        tc["function"]["name"] += _str(fn.get("name"))
        tc["function"]["arguments"] += _str(fn.get("arguments"))


def from_sse(raw: bytes) -> dict[str, Any] | None:
    """The answer a whole stream stands for (``chat.completion`` or ``text_completion``); None when the stream
    was cut off (no ``[DONE]``, or a choice without its finish_reason), holds an error or is malformed."""
    events, done = _events(raw)
    if not done or not events:
        return None
    try:
        return _fold(events)
    except Malformed:
        return None


def _fold(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    first = events[0]
    text = first.get("object") == "text_completion"
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for ev in events:
        if "error" in ev:
            return None
        if isinstance(ev.get("usage"), dict):
            usage = ev["usage"]
        chs = ev.get("choices") or ()
        if not isinstance(chs, list | tuple):
            raise Malformed
        for ch in chs:
            ch = _obj(ch)
            i = ch.get("index", 0)
            if type(i) is not int or not 0 <= i < MAX_CHOICES:
                raise Malformed
            c = choices.setdefault(i, {"index": i, "parts": [], "reasoning": [], "tools": [], "finish": None,
                                       "role": "assistant", "reasoning_key": "reasoning_content"})
            if text:
                c["parts"].append(_str(ch.get("text")))
            else:
                delta = _obj(ch.get("delta"))
                if delta.get("role"):
                    c["role"] = _str(delta["role"])
                c["parts"].append(_str(delta.get("content")))
                for k in ("reasoning_content", "reasoning"):
                    if delta.get(k):
                        c["reasoning"].append(_str(delta[k]))
                        c["reasoning_key"] = k
                if delta.get("tool_calls"):
                    _merge_tool_calls(c["tools"], delta["tool_calls"])
            if ch.get("finish_reason"):
                c["finish"] = _str(ch["finish_reason"])
    if not choices or any(c["finish"] is None for c in choices.values()):
        return None
    out_choices = []
    for i in sorted(choices):
        c = choices[i]
        if text:
            out_choices.append({"index": i, "text": "".join(c["parts"]), "logprobs": None,
                                "finish_reason": c["finish"]})
            continue
        msg: dict[str, Any] = {"role": c["role"], "content": "".join(c["parts"]) or None}
        if c["reasoning"]:
            msg[c["reasoning_key"]] = "".join(c["reasoning"])
        if c["tools"]:
            msg["tool_calls"] = c["tools"]
        out_choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": c["finish"]})
    answer = {"id": first.get("id", ""), "object": "text_completion" if text else "chat.completion",
              "created": first.get("created", 0), "model": first.get("model", ""), "choices": out_choices}
    if first.get("system_fingerprint"):
        answer["system_fingerprint"] = first["system_fingerprint"]
    if usage is not None:
        answer["usage"] = usage
    return answer


def to_json(answer: dict[str, Any]) -> bytes:
    return encode_json(answer)


def pieces(s: str) -> list[str]:
    """Text cut in chunks of about PIECE characters, each ending after a space where it can."""
    out, i = [], 0
    while i < len(s):
        j = min(len(s), i + PIECE)
        if j < len(s):
            sp = s.rfind(" ", i + 1, j)
            j = sp + 1 if sp > i else j
        out.append(s[i:j])
        i = j
    return out


def to_sse(answer: dict[str, Any], include_usage: bool) -> bytes:
    """The answer as the stream an OpenAI-compatible server would send for it."""
    text = answer.get("object") == "text_completion"
    head = {"id": answer.get("id", ""), "object": "text_completion" if text else "chat.completion.chunk",
            "created": answer.get("created", 0), "model": answer.get("model", "")}
    if answer.get("system_fingerprint"):
        head["system_fingerprint"] = answer["system_fingerprint"]
    out: list[bytes] = []

    def emit(choice: dict[str, Any] | None, usage: Any = None) -> None:
        chunk = {**head, "choices": [choice] if choice is not None else []}
        if include_usage:
            chunk["usage"] = usage
        out.append(b"data: " + encode_json(chunk) + b"\n\n")

    for ch in answer.get("choices") or ():
        i = ch.get("index", 0)
        if text:
            for p in pieces(ch.get("text") or ""):
                emit({"index": i, "text": p, "logprobs": None, "finish_reason": None})
            emit({"index": i, "text": "", "logprobs": None, "finish_reason": ch.get("finish_reason")})
            continue
        msg = ch.get("message") or {}
        emit({"index": i, "delta": {"role": msg.get("role", "assistant"), "content": ""}, "logprobs": None,
              "finish_reason": None})
        for k in ("reasoning_content", "reasoning"):
            for p in pieces(msg.get(k) or ""):
                emit({"index": i, "delta": {k: p}, "logprobs": None, "finish_reason": None})
        for p in pieces(msg.get("content") or ""):
            emit({"index": i, "delta": {"content": p}, "logprobs": None, "finish_reason": None})
        for n, tc in enumerate(msg.get("tool_calls") or ()):
            emit({"index": i, "delta": {"tool_calls": [{"index": n, **tc}]}, "logprobs": None, "finish_reason": None})
        emit({"index": i, "delta": {}, "logprobs": None, "finish_reason": ch.get("finish_reason")})
    if include_usage:
        emit(None, answer.get("usage"))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def has_tool_calls(answer: dict[str, Any]) -> bool:
    return any(isinstance(c, dict) and ((c.get("message") or {}).get("tool_calls") or
                                        c.get("finish_reason") == "tool_calls")
               for c in answer.get("choices") or ())
