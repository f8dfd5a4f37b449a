"""Gemini's generateContent / streamGenerateContent as documented: request checks, answers, Google API errors."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from .server import Fault, ProviderMock, Reply, Request, answer_tokens, input_tokens, words

FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig", "safetySettings",
          "cachedContent", "labels"}
CONFIG = {"temperature", "topP", "topK", "candidateCount", "maxOutputTokens", "stopSequences", "seed",
          "presencePenalty", "frequencyPenalty", "responseMimeType", "responseSchema", "responseJsonSchema",
          "thinkingConfig", "responseLogprobs", "logprobs"}
STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
          500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
MESSAGES = {429: "Resource has been exhausted (e.g. check quota).",
            503: "The model is overloaded. Please try again later.", 500: "An internal error has occurred."}
_PATH = re.compile(r"^/v1beta/models/([A-Za-z0-9._-]+):(generateContent|streamGenerateContent)$")


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": {"code": status, "message": message, "status": STATUS.get(status, "UNKNOWN")}},
                 content_type="application/json; charset=UTF-8")


def error(status: int, retry_after: str = "") -> Reply:
    return _error(status, MESSAGES.get(status, "error"))


def _check(body: Any) -> str:
    if not isinstance(body, dict):
        return "Invalid JSON payload received."
    for k in body:
        if k not in FIELDS:
            return f'Invalid JSON payload received. Unknown name "{k}": Cannot find field.'
    for k in body.get("generationConfig") or {}:
        if k not in CONFIG:
            return f'Invalid JSON payload received. Unknown name "{k}" at \'generation_config\': Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, c in enumerate(contents):
        if c.get("role") not in ("user", "model") or not c.get("parts"):
            return f"* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty."
    return ""


def handle(mock: ProviderMock, req: Request, fault: Fault | None) -> Reply:
    m = _PATH.match(req.path)
    if m is None or req.method != "POST":
        return _error(404, "Not Found")
    key = req.headers.get("x-goog-api-key") or req.query.get("key")
    if mock.keys and not key:
        return _error(403, "Method doesn't allow unregistered callers (callers without established identity). "
                           "Please use API Key or other form of API consumer identity to call this API.")
    if mock.keys and key not in mock.keys:
        return _error(400, "API key not valid. Please pass a valid API key.")
    model, method = m[1], m[2]
    if mock.models and model not in mock.models:
        return _error(404, f"models/{model} is not found for API version v1beta, or is not supported for "
                           f"{method}.")
    problem = _check(req.body)
    if problem:
        return _error(400, problem)
    body = req.body
    last = body["contents"][-1]["parts"]
    said = " ".join(p.get("text", "") for p in last if "text" in p) or "a function result"
    tools = [f for t in body.get("tools") or [] for f in t.get("functionDeclarations") or []]
    call = None
    if tools and not any("functionResponse" in p for p in last):
        schema = tools[0].get("parametersJsonSchema") or tools[0].get("parameters") or {}
        call = {"name": tools[0]["name"], "args": {k: "Paris" for k in schema.get("required", [])}}
    limit = (body.get("generationConfig") or {}).get("maxOutputTokens") or 8192
    text = words(said, answer_tokens(fault, limit))
    prompt = input_tokens(req.raw)
    rid = uuid.uuid4().hex[:22]
    version = model

    def response(parts: list[dict[str, Any]], done: bool, n: int) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if done:
            cand["finishReason"] = "MAX_TOKENS" if len(text) >= limit and not call else "STOP"
        usage = {"promptTokenCount": prompt, "totalTokenCount": prompt + n}
        if n:
            usage["candidatesTokenCount"] = n
        return {"candidates": [cand], "usageMetadata": usage, "modelVersion": version, "responseId": rid}

    if method == "generateContent":
        parts = [{"functionCall": call}] if call else [{"text": "".join(text)}]
        return Reply(200, response(parts, True, 3 if call else len(text)),
                     content_type="application/json; charset=UTF-8")
    if call:
        docs = [response([{"functionCall": call}], True, 3)]
    else:  # a few words per chunk, as Gemini streams
        docs = [response([{"text": "".join(text[i : i + 3])}], i + 3 >= len(text), min(i + 3, len(text)))
                for i in range(0, len(text), 3)]
    if req.query.get("alt") != "sse":  # the default: one JSON array, streamed
        raw = json.dumps(docs).encode()
        return Reply(200, events=[raw], content_type="application/json; charset=UTF-8")
    return Reply(200, events=[b"data: " + json.dumps(d).encode() + b"\r\n\r\n" for d in docs])
