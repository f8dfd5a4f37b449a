"""Helpers for AI gateway tests: a demo-like config and request builders."""

from __future__ import annotations

import json
from typing import Any

from proxywasm.testing import Host, Stream

CHAT = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", "content-type": "application/json"}

CONFIG: dict[str, Any] = {
    "models": [
        {"name": "qwen2-1-5b", "cluster": "qwen", "fallback": {"models": ["gemma-2-2b", "llama-3"]}},
        {"name": "gemma-2-2b", "cluster": "gemma", "upstream_model": "google/gemma-2-2b-it"},
        {"name": "llama-3", "cluster": "llama"},
    ],
    "aliases": [
        {"name": "canary", "targets": [{"model": "qwen2-1-5b", "weight": 50}, {"model": "gemma-2-2b", "weight": 50}]},
        {"name": "sticky", "sticky_header": "x-user-id",
         "targets": [{"model": "qwen2-1-5b", "weight": 1}, {"model": "llama-3", "weight": 1}]},
    ],
}


def chat_body(model: Any = "qwen2-1-5b", stream: bool = False, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream,
                       **extra}).encode()


def chat(host: Host, body: bytes, headers: dict[str, str] | None = None, chunks: int = 1) -> Stream:
    """Send one chat request through the plugin; ``chunks`` splits the body."""
    s = host.http_stream()
    s.send_request_headers({**CHAT, **(headers or {})})
    step = max(1, -(-len(body) // chunks))
    parts = [body[i : i + step] for i in range(0, len(body), step)] or [b""]
    for i, part in enumerate(parts):
        s.send_request_body(part, end_of_stream=i == len(parts) - 1)
    return s


def error_of(s: Stream) -> dict[str, Any]:
    assert s.local_response is not None, "expected the gateway to answer"
    assert ("content-type", "application/json") in s.local_response.headers
    return json.loads(s.local_response.body)["error"]
