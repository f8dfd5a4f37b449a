"""Anthropic's Messages API as documented: request checks, ``message`` answers, SSE events, error bodies."""

from __future__ import annotations

import json
import uuid
from typing import Any

from .server import Fault, ProviderMock, Reply, Request, answer_tokens, input_tokens, words

FIELDS = {"model", "max_tokens", "messages", "system", "metadata", "stop_sequences", "stream", "temperature",
          "top_k", "top_p", "tools", "tool_choice", "thinking", "service_tier", "container", "mcp_servers"}
BLOCKS = {"text", "image", "tool_use", "tool_result", "document", "thinking", "redacted_thinking"}
ERRORS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
MESSAGES = {429: "This request would exceed the rate limit for your organization.", 529: "Overloaded",
            500: "Internal server error"}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": ERRORS.get(status, "api_error"), "message": message},
                          "request_id": "req_" + uuid.uuid4().hex[:24]}, headers=headers)


def error(status: int, retry_after: str = "") -> Reply:
    headers = {"retry-after": retry_after or "1"} if status == 429 else {}
    return _error(status, MESSAGES.get(status, "error"), headers)


def _check(body: Any) -> str:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    for k in body:
        if k not in FIELDS:
            return f"{k}: Extra inputs are not permitted"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    if type(body.get("max_tokens")) is not int:
        return "max_tokens: Field required"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        return "messages: Field required"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        c = m.get("content")
        if isinstance(c, list):
            for j, b in enumerate(c):
                if not isinstance(b, dict) or b.get("type") not in BLOCKS:
                    return f"messages.{i}.content.{j}.type: Input tag does not match any of the expected tags"
        elif not isinstance(c, str):
            return f"messages.{i}.content: Input should be a valid string or list"
    system = body.get("system")
    if system is not None and not isinstance(system, (str, list)):
        return "system: Input should be a valid string or list"
    return ""


def _last_text(msgs: list[dict[str, Any]]) -> str:
    c = msgs[-1].get("content")
    if isinstance(c, str):
        return c
    return " ".join(b.get("text", "") for b in c if b.get("type") == "text") or "a tool result"


def _tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
    """A tool_use block when tools are offered and the last turn is not a tool result."""
    tools = body.get("tools") or []
    last = body["messages"][-1].get("content")
    if not tools or (isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)):
        return None
    schema = tools[0].get("input_schema") or {}
    args = {k: "Paris" for k in schema.get("required", [])}
    return {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": tools[0]["name"], "input": args}


def handle(mock: ProviderMock, req: Request, fault: Fault | None) -> Reply:
    if req.path != "/v1/messages":
        return _error(404, "Not found")
    if req.method != "POST":
        return _error(405 if req.method else 404, "Method not allowed")
    if mock.keys and req.headers.get("x-api-key") not in mock.keys:
        return _error(401, "invalid x-api-key")
    if not req.headers.get("anthropic-version"):
        return _error(400, "anthropic-version: header is required")
    problem = _check(req.body)
    if problem:
        return _error(400, problem)
    body = req.body
    if mock.models and body["model"] not in mock.models:
        return _error(404, f"model: {body['model']}")
    call = _tool_call(body)
    text = words(_last_text(body["messages"]), answer_tokens(fault, body["max_tokens"]))
    stop = "tool_use" if call else "max_tokens" if len(text) >= body["max_tokens"] else "end_turn"
    usage = {"input_tokens": input_tokens(req.raw), "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    mid = "msg_" + uuid.uuid4().hex[:24]
    if not body.get("stream"):
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(text)}]
        if call:
            content = [{"type": "text", "text": "Let me check."}, call]
        return Reply(200, {"id": mid, "type": "message", "role": "assistant", "model": body["model"],
                           "content": content, "stop_reason": stop, "stop_sequence": None,
                           "usage": {**usage, "output_tokens": len(text) if not call else 8}},
                     headers={"request-id": "req_" + mid[4:]})
    ev = []

    def emit(name: str, data: dict[str, Any]) -> None:
        ev.append(f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode())  # compact, as sent

    emit("message_start", {"type": "message_start", "message": {
        "id": mid, "type": "message", "role": "assistant", "model": body["model"], "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}})
    if call:
        emit("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {**call, "input": {}}})
        emit("ping", {"type": "ping"})
        args = json.dumps(call["input"])
        for k in range(0, len(args), 7):
            emit("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "input_json_delta", "partial_json": args[k : k + 7]}})
        out = 8
    else:
        emit("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}})
        emit("ping", {"type": "ping"})
        for i, w in enumerate(text):
            emit("content_block_delta", {"type": "content_block_delta", "index": 0,
                                         "delta": {"type": "text_delta", "text": w}})
            if i == 0 and fault is not None and fault.stream_error:
                emit("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
                return Reply(200, events=ev)
        out = len(text)
    emit("content_block_stop", {"type": "content_block_stop", "index": 0})
    emit("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                           "usage": {"output_tokens": out}})
    emit("message_stop", {"type": "message_stop"})
    return Reply(200, events=ev, headers={"request-id": "req_" + mid[4:]})
