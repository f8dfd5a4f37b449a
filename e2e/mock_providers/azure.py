"""Azure OpenAI's deployment paths as documented: ``api-version``, ``api-key``, OpenAI's answers with Azure's
content-filter members, Azure's error bodies."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from .server import Fault, ProviderMock, Reply, Request, answer_tokens, input_tokens, words

_PATH = re.compile(r"^/openai/deployments/([A-Za-z0-9._-]+)/(chat/completions|completions|embeddings)$")
FILTERS = {k: {"filtered": False, "severity": "safe"} for k in ("hate", "self_harm", "sexual", "violence")}
MESSAGES = {429: "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
                 "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second.",
            500: "The server had an error while processing your request. Sorry about that!"}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"code": code, "message": message}}, headers=headers)


def error(status: int, retry_after: str = "") -> Reply:
    headers = {"retry-after": retry_after or "1"} if status == 429 else None
    return _error(status, str(status), MESSAGES.get(status, "error"), headers)


def handle(mock: ProviderMock, req: Request, fault: Fault | None) -> Reply:
    m = _PATH.match(req.path)
    if m is None or "api-version" not in req.query:
        return _error(404, "404", "Resource not found")
    if mock.keys and req.headers.get("api-key") not in mock.keys:
        return _error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure "
                                  "to provide a valid key for an active subscription and use a correct regional API "
                                  "endpoint for your resource.")
    deployment = m[1]
    if mock.models and deployment not in mock.models:
        return _error(404, "DeploymentNotFound", "The API deployment for this resource does not exist. If you "
                                                 "created the deployment within the last 5 minutes, please wait a "
                                                 "moment and try again.")
    body = req.body
    if m[2] != "chat/completions" or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return _error(400, "BadRequest", "'messages' is a required property")
    last = body["messages"][-1].get("content")
    text = words(last if isinstance(last, str) else "parts", answer_tokens(fault, body.get("max_tokens") or 4096))
    cid, created = "chatcmpl-" + uuid.uuid4().hex[:24], int(time.time())
    usage = {"prompt_tokens": input_tokens(req.raw), "completion_tokens": len(text),
             "total_tokens": input_tokens(req.raw) + len(text)}
    model = "gpt-4o-2024-11-20"
    prompt_filter = [{"prompt_index": 0, "content_filter_results": FILTERS}]
    if not body.get("stream"):
        return Reply(200, {"id": cid, "object": "chat.completion", "created": created, "model": model,
                           "prompt_filter_results": prompt_filter,
                           "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                        "content_filter_results": FILTERS,
                                        "message": {"role": "assistant", "content": "".join(text)}}],
                           "usage": usage})

    def event(doc: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(doc).encode() + b"\n\n"

    head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
    ev = [event({"id": "", "object": "", "created": 0, "model": "", "choices": [],
                 "prompt_filter_results": prompt_filter})]  # Azure's first chunk: no choices
    ev.append(event({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "finish_reason": None}]}))
    ev += [event({**head, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None,
                                       "content_filter_results": FILTERS}]}) for w in text]
    ev.append(event({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
    if (body.get("stream_options") or {}).get("include_usage"):
        ev.append(event({**head, "choices": [], "usage": usage}))
    ev.append(b"data: [DONE]\n\n")
    return Reply(200, events=ev)
