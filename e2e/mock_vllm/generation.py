"""Validating a completion request the way vLLM does and deciding the deterministic reply (``plan``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

MAX_MODEL_LEN = 4096
DEFAULT_MAX_TOKENS = 16
ECHO_CHARS = 200
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
               404: "NotFoundError", 408: "RequestTimeoutError", 409: "ConflictError",
               422: "UnprocessableEntityError", 429: "RateLimitError", 500: "InternalServerError",
               501: "NotImplementedError", 503: "ServiceUnavailableError"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, err_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = err_type or ERROR_TYPES.get(status) or HTTPStatus(status).phrase.replace(" ", "")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}}


@dataclass(frozen=True)
class Generation:
    tokens: list[str]
    finish_reason: str
    prompt_tokens: int
    adapter: str | None = None  # the LoRA adapter the request named, if any
    prompt_text: str = ""  # all prompt text (chat: the messages' contents, one a line), for the prefix cache
    tool: str | None = None  # a forced tool call: the function's name (the tokens are its arguments)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    def usage(self, generated: int | None = None) -> dict[str, int]:
        n = len(self.tokens) if generated is None else generated
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": n, "total_tokens": self.prompt_tokens + n}


def count_words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p)
    return str(content)


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, list):
        return " ".join(_prompt_text(p) for p in prompt)
    return "" if prompt is None else str(prompt)


_SAMPLE = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}


def forced_tool(req: dict[str, Any]) -> tuple[str, str] | None:
    """The tool call vLLM's guided decoding forces (``tool_choice`` "required" or a named function): (name, arguments
    JSON with each required property of the schema filled). ``auto`` is the model's choice: this mock answers text."""
    tools = req.get("tools")
    choice = req.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice in (None, "auto", "none"):
        return None
    fns = [t.get("function") for t in tools if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        fns = [f for f in fns if f.get("name") == name]
        if not fns:
            raise ApiError(400, f"Tool '{name}' has not been passed in `tools`.", "tool_choice")
    elif choice != "required":
        raise ApiError(400, f"Invalid value for `tool_choice`: {choice!r}.", "tool_choice")
    if not fns:
        raise ApiError(400, "When using `tool_choice`, `tools` must be set.", "tools")
    fn = fns[0]
    schema = fn.get("parameters") or {}
    props = schema.get("properties") or {}
    args = {k: _SAMPLE.get((props.get(k) or {}).get("type"), "mock") for k in schema.get("required") or ()}
    return fn.get("name", ""), json.dumps(args)


def plan(served: str, kind: str, req: Any, max_model_len: int = MAX_MODEL_LEN,
         adapters: Collection[str] = ()) -> Generation:
    """Validate a completion request the way vLLM does and decide the reply (see the package docstring).

    ``model`` may be ``served`` or one of the LoRA ``adapters``; the reply then starts with ``[<adapter>]``."""
    if not isinstance(req, dict):
        raise ApiError(400, "Request body must be a JSON object.")
    model = req.get("model")
    if model is not None and model != served and model not in adapters:
        raise ApiError(404, f"The model `{model}` does not exist.")
    adapter = model if model is not None and model != served else None
    if kind == "chat":
        messages = req.get("messages")
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise ApiError(400, "Field 'messages' is required and must be a list of message objects.", "messages")
        texts = [_content_text(m.get("content")) for m in messages]
        prompt_tokens = sum(1 + count_words(t) for t in texts)
        users = [t for m, t in zip(messages, texts, strict=True) if m.get("role") == "user"]
        echo = users[-1] if users else (texts[-1] if texts else "")
        prompt_text = "\n".join(texts)
    else:
        if "prompt" not in req:
            raise ApiError(400, "Field 'prompt' is required.", "prompt")
        echo = prompt_text = _prompt_text(req["prompt"])
        prompt_tokens = count_words(echo)
    stream = req.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise ApiError(400, "Field 'stream' must be a boolean.", "stream")
    if req.get("stream_options") is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.", "stream_options")
    max_tokens = req.get("max_completion_tokens") if kind == "chat" else None
    if max_tokens is None:
        max_tokens = req.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise ApiError(400, f"max_tokens must be an integer, got {max_tokens!r}.", "max_tokens")
    if max_tokens < 1:
        raise ApiError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if prompt_tokens + max_tokens > max_model_len:
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in "
                            f"the completion). Please reduce the length of the messages or completion.")
    words = f"[{adapter or served}] echo: {echo[:ECHO_CHARS]}".split()
    if req.get("ignore_eos") is True:
        words = [words[i % len(words)] for i in range(max_tokens)]
    tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
    tool = forced_tool(req) if kind == "chat" else None
    if tool is not None:  # the arguments, a few characters a token; vLLM's finish_reason stays "stop" here
        tokens = [tool[1][i : i + 6] for i in range(0, len(tool[1]), 6)]
    finish = "length" if len(tokens) > max_tokens or req.get("ignore_eos") is True else "stop"
    return Generation(tokens[:max_tokens], finish, prompt_tokens, adapter, prompt_text,
                      tool[0] if tool is not None else None)
