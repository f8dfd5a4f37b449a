"""Anthropic Messages API requests (``POST /v1/messages``) as OpenAI chat-completions requests.

A pure function of the client's body: the gateway routes, limits, caches and forwards what it returns exactly as
an OpenAI client's request. What has no counterpart in chat completions is dropped (``thinking``, ``cache_control``,
``service_tier``, earlier turns' thinking blocks) or refused with a 400 (server tools, documents, other block types
an OpenAI-compatible server cannot take).
"""

from __future__ import annotations

import json

from ..errors import GatewayError, shown
from ..request import encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# What the gateway asks for a streamed answer: its usage (message_delta's usage), always.
_USAGE = {"include_usage": True}
_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _bad(message: str) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error")


def _shown(value: Any) -> str:
    """Client input in an error message: quoted, at most errors.MAX_ECHO characters."""
    return repr(shown(value)) if isinstance(value, str) else shown(json.dumps(value))


def _text_of(blocks: Any, where: str) -> str:
    """``system`` or a tool result: a string, or text blocks joined by newlines."""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise _bad(f"{where}: Input should be a valid string or list of text blocks")
    parts = []
    for i, b in enumerate(blocks):
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            raise _bad(f"{where}.{i}: only text blocks are supported here")
        parts.append(b["text"])
    return "\n".join(parts)


def _image(block: dict[str, Any], where: str) -> dict[str, Any]:
    src = block.get("source")
    if isinstance(src, dict) and src.get("type") == "base64" and isinstance(src.get("data"), str):
        url = f"data:{src.get('media_type', 'image/png')};base64,{src['data']}"
    elif isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise _bad(f"{where}.source: an image needs a base64 or url source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: dict[str, Any], where: str, images: list[dict[str, Any]]) -> dict[str, Any]:
    """A ``tool`` message; images in the result go to ``images`` (a user message after it: tool messages carry
    text only)."""
    tid = block.get("tool_use_id")
    if not isinstance(tid, str):
        raise _bad(f"{where}.tool_use_id: Field required")
    content = block.get("content", "")
    if isinstance(content, list):
        texts = []
        for i, b in enumerate(content):
            kind = b.get("type") if isinstance(b, dict) else None
            if kind == "text" and isinstance(b.get("text"), str):
                texts.append(b["text"])
            elif kind == "image":
                images.append(_image(b, f"{where}.content.{i}"))
            else:
                raise _bad(f"{where}.content.{i}: only text and image blocks are supported in a tool result")
        content = "\n".join(texts)
    elif not isinstance(content, str):
        raise _bad(f"{where}.content: Input should be a valid string or list")
    return {"role": "tool", "tool_call_id": tid, "content": content}


def _user(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "user", "content": content})
        return
    parts: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for i, b in enumerate(content):
        at = f"{where}.{i}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            parts.append({"type": "text", "text": b["text"]})
        elif kind == "image":
            parts.append(_image(b, at))
        elif kind == "tool_result":  # answers to the assistant's tool calls come first, as OpenAI requires
            out.append(_tool_result(b, at, images))
        else:
            raise _bad(f"{at}: content block type {_shown(kind)} is not supported by this gateway")
    parts = images + parts
    if not parts:
        return
    if len(parts) == 1 and parts[0]["type"] == "text":
        out.append({"role": "user", "content": parts[0]["text"]})
    else:
        out.append({"role": "user", "content": parts})


def _assistant(content: Any, where: str, out: list[dict[str, Any]]) -> None:
    if isinstance(content, str):
        out.append({"role": "assistant", "content": content})
        return
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, b in enumerate(content):
        at = f"{where}.{i}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            texts.append(b["text"])
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(f"{at}: a tool_use block needs id and name")
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": encode_json(b.get("input", {})).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue  # earlier reasoning: an OpenAI-compatible server takes none back
        else:
            raise _bad(f"{at}: content block type {_shown(kind)} is not supported by this gateway")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        msg["tool_calls"] = calls
    out.append(msg)


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("tools: Input should be a valid list")
    out = []
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise _bad(f"tools.{i}.name: Field required")
        if t.get("type", "custom") != "custom":
            raise _bad(f"tools.{i}: server tool {_shown(t.get('type'))} is not supported by this gateway")
        fn: dict[str, Any] = {"name": t["name"]}
        if isinstance(t.get("description"), str):
            fn["description"] = t["description"]
        fn["parameters"] = t.get("input_schema") or {"type": "object", "properties": {}}
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(tc: Any, doc: dict[str, Any]) -> None:
    if not isinstance(tc, dict) or not isinstance(tc.get("type"), str):
        raise _bad("tool_choice: Input should be an object with a type")
    kind = tc["type"]
    if kind == "tool":
        if not isinstance(tc.get("name"), str):
            raise _bad("tool_choice.name: Field required")
        doc["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
    elif kind in _TOOL_CHOICE:
        doc["tool_choice"] = _TOOL_CHOICE[kind]
    else:
        raise _bad(f"tool_choice.type: unknown type {_shown(kind)}")
    if tc.get("disable_parallel_tool_use") is True and kind != "none":
        doc["parallel_tool_calls"] = False


def to_openai(body: bytes, counting: bool = False) -> dict[str, Any]:
    """The chat-completions request for an Anthropic Messages request body; GatewayError 400 says what is wrong.
    ``counting``: a ``count_tokens`` request (no ``max_tokens``)."""
    try:
        req = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):
        raise GatewayError(400, "request body is not valid JSON", "invalid_json") from None
    if not isinstance(req, dict):
        raise GatewayError(400, "request body must be a JSON object", "invalid_json")
    max_tokens = req.get("max_tokens", 1 if counting else None)
    if max_tokens is None:
        raise _bad("max_tokens: Field required")
    if type(max_tokens) is not int or max_tokens < 1:
        raise _bad("max_tokens: Input should be a positive integer")
    messages = req.get("messages")
    if not isinstance(messages, list):
        raise _bad("messages: Field required" if messages is None else "messages: Input should be a valid list")
    out: list[dict[str, Any]] = []
    system = req.get("system")
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    for i, m in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(m, dict):
            raise _bad(f"{where}: Input should be an object")
        content = m.get("content")
        if not isinstance(content, (str, list)):
            raise _bad(f"{where}.content: Field required")
        role = m.get("role")
        if role == "user":
            _user(content, where + ".content", out)
        elif role == "assistant":
            _assistant(content, where + ".content", out)
        else:
            raise _bad(f"{where}.role: Input should be 'user' or 'assistant'")
    doc: dict[str, Any] = {"model": req.get("model"), "messages": out, "max_tokens": max_tokens}
    if "model" not in req:
        del doc["model"]  # the gateway's own 400 names it
    for k in ("temperature", "top_p", "top_k"):
        if req.get(k) is not None:
            doc[k] = req[k]
    stop = req.get("stop_sequences")
    if stop:
        doc["stop"] = stop
    if req.get("stream") is True:
        doc["stream"] = True
        doc["stream_options"] = _USAGE
    meta = req.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("user_id"), str):
        doc["user"] = meta["user_id"]
    if req.get("tools"):
        doc["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None:
        _tool_choice(req["tool_choice"], doc)
    return doc
