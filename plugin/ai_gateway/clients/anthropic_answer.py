"""OpenAI chat-completions answers as Anthropic Messages API answers: a whole JSON answer, an error, and the
pieces the streaming translator (anthropic_stream.py) shares with it (stop reasons, usage, ids)."""

from __future__ import annotations

import json

from ..request import encode_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
         "content_filter": "refusal"}
# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); other 4xx: invalid_request_error
_ERROR_TYPES = {401: "authentication_error", 402: "billing_error", 403: "permission_error", 404: "not_found_error",
                413: "request_too_large", 429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}


def message_id(openai_id: Any) -> str:
    return "msg_" + (openai_id if isinstance(openai_id, str) and openai_id else "gateway")


def stop_reason(choice: dict[str, Any], stops: tuple[str, ...], called: bool = False) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) for an OpenAI choice's ``finish_reason`` (vLLM's ``stop_reason`` names the stop
    string that ended the answer); ``called``: the answer calls tools (vLLM says "stop" for a forced call)."""
    reason = _STOP.get(choice.get("finish_reason") or "stop", "end_turn")
    if called and reason == "end_turn":
        return "tool_use", None
    matched = choice.get("stop_reason")
    if reason == "end_turn" and isinstance(matched, str) and matched in stops:
        return "stop_sequence", matched
    return reason, None


def usage(u: Any) -> dict[str, int]:
    """Anthropic usage from OpenAI's: ``input_tokens`` excludes the prompt tokens read from a prefix cache
    (``cache_read_input_tokens``), as Anthropic counts them."""
    if not isinstance(u, dict):
        return {"input_tokens": 0, "output_tokens": 0}
    prompt = _n(u.get("prompt_tokens"))
    details = u.get("prompt_tokens_details")
    cached = _n(details.get("cached_tokens")) if isinstance(details, dict) else 0
    out = {"input_tokens": max(0, prompt - cached), "output_tokens": _n(u.get("completion_tokens"))}
    if cached:
        out["cache_read_input_tokens"] = cached
    return out


def _n(v: Any) -> int:
    return v if type(v) is int and v >= 0 else 0


def tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's ``arguments`` (a JSON string) as the object Anthropic's ``input`` is; text that is not a
    JSON object is kept under ``_raw_arguments``."""
    if not arguments:
        return {}
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"_raw_arguments": arguments}


def to_message(answer: dict[str, Any], stops: tuple[str, ...] = ()) -> dict[str, Any]:
    """The Anthropic message for an OpenAI ``chat.completion`` (its first choice)."""
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    msg = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    thinking = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(thinking, str) and thinking:
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    text = msg.get("content")
    if isinstance(text, str) and text:
        content.append({"type": "text", "text": text})
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") if isinstance(tc, dict) else None
        if isinstance(fn, dict):
            content.append({"type": "tool_use", "id": tc.get("id") or "", "name": fn.get("name") or "",
                            "input": tool_input(fn.get("arguments"))})
    reason, seq = stop_reason(choice, stops, content[-1]["type"] == "tool_use" if content else False)
    return {"id": message_id(answer.get("id")), "type": "message", "role": "assistant",
            "model": answer.get("model", ""), "content": content, "stop_reason": reason, "stop_sequence": seq,
            "usage": usage(answer.get("usage"))}


def error_type(status: int) -> str:
    t = _ERROR_TYPES.get(status)
    return t if t is not None else "invalid_request_error" if status < 500 else "api_error"


def error_doc(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_message(body: bytes) -> str:
    """The message of an error body: OpenAI's ``{"error": {"message"}}``, vLLM's ``{"message"}``, or the text."""
    try:
        doc = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(err, str):
            return err
        if isinstance(doc.get("message"), str):
            return doc["message"]
        if isinstance(doc.get("detail"), str):
            return doc["detail"]
    text = body.decode("utf-8", "replace").strip()
    return text[:1024] or "upstream error"


def error_body(status: int, body: bytes) -> bytes:
    """An error answer (the gateway's own, or an upstream's) in Anthropic's shape, with the same status."""
    return encode_json(error_doc(status, error_message(body)))


def message_body(body: bytes, stops: tuple[str, ...]) -> bytes:
    """A whole 200 JSON answer translated; a body that is not an OpenAI answer becomes an api_error."""
    try:
        answer = json.loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        return encode_json(error_doc(502, "the upstream answer is not a chat completion"))
    return encode_json(to_message(answer, stops))
