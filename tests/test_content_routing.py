"""Content-based routing: ``auto`` picks the model by rules over the request (regex, keywords, length, tools,
images), on both test hosts; the chosen model goes upstream, in x-ai-served-model, metrics and the AI log."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import HostFactory
from tests.gateway import chat

MODELS = [{"name": n, "cluster": n} for n in ("small", "coder", "vision", "tooler", "big")]
ROUTE = {"name": "auto", "default": "small", "rules": [
    {"model": "vision", "images": True},
    {"model": "tooler", "tools": True},
    {"model": "coder", "regex": r"(?i)\b(python|rust|function)\b"},
    {"model": "big", "keywords": ["Prove", "step by step"], "min_chars": 40},
    {"model": "big", "min_chars": 2000},
]}
CONFIG = {"models": MODELS, "content_routing": [ROUTE], "ai_log": "log"}


def req(content: Any, **extra: Any) -> bytes:
    return json.dumps({"model": "auto", "messages": [{"role": "system", "content": "python"},
                                                     {"role": "user", "content": content}], **extra}).encode()


IMAGE = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {}}}]


@pytest.mark.parametrize("body, model", [
    (req("hello"), "small"),  # the system message says python: only the last user message counts
    (req("Write a Python function"), "coder"),
    (req(IMAGE), "vision"),
    (req("Write a python function", tools=TOOLS), "tooler"),  # the first rule that matches wins
    (req("prove it"), "small"),  # a keyword, but shorter than min_chars
    (req("Please PROVE that there are infinitely many primes, in detail"), "big"),
    (req("x" * 2500), "big"),
    (req([{"type": "text", "text": "rust please"}]), "coder"),  # text parts
    (json.dumps({"model": "auto", "messages": "not a list"}).encode(), "small"),  # odd shapes: the default
])
def test_rules_pick_the_model(make_host: HostFactory, body: bytes, model: str) -> None:
    host = make_host("ai_gateway")
    assert host.start(CONFIG), host.logs
    s = chat(host, body)
    assert s.local_response is None
    assert s.request_header("x-ai-upstream") == model and json.loads(s.request_body)["model"] == model
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    s.send_response_body(b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')
    s.complete()
    assert s.response_header("x-ai-served-model") == model
    assert host.metric(f"route.none.upstream.{model}.model.{model}.consumer.none.metric.request_total") == 1
    log = json.loads(next(m for _, m in host.logs if m.startswith("ai_log "))[7:])
    assert log["model"] == "auto" and log["served_model"] == model


@pytest.mark.parametrize("bad, field", [
    ({"name": "small", "default": "small"}, "content_routing[0].name"),
    ({"name": "auto", "default": "nope"}, "content_routing[0].default"),
    ({"name": "auto", "default": "small", "rules": [{"model": "nope", "tools": True}]}, "rules[0].model"),
    ({"name": "auto", "default": "small", "rules": [{"model": "big", "regex": "("}]}, "rules[0].regex"),
    ({"name": "auto", "default": "small", "rules": [{"model": "big"}]}, "rules[0]"),
    ({"name": "auto", "default": "small", "classifier": {"model": "nope", "categories": {"a": "big"}}},
     "classifier.model"),
    ({"name": "auto", "default": "small", "classifier": {"model": "small", "categories": {"a": "nope"}}},
     "classifier.categories.a"),
    ({"name": "auto", "default": "small", "classifier": {"model": "small"}}, "classifier.categories"),
])
def test_config_mistakes_name_the_field(make_host: HostFactory, bad: dict[str, Any], field: str) -> None:
    host = make_host("ai_gateway")
    assert not host.start({"models": MODELS, "content_routing": [bad]})
    assert any(field in m for m in host.logs_at(5)), host.logs


CLASSIFIED = {"models": MODELS, "content_routing": [{
    "name": "auto", "default": "small", "rules": [{"model": "vision", "images": True}],
    "classifier": {"model": "small", "categories": {"code": "coder", "math": "big"}, "timeout_ms": 500}}]}


def classifier_answer(text: Any) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.mark.parametrize("status, answer, model", [
    (200, classifier_answer("Code"), "coder"),
    (200, classifier_answer(" category: math."), "big"),
    (200, classifier_answer("poetry"), "small"),  # no category named: the default
    (200, b"not json", "small"),
    (500, classifier_answer("code"), "small"),
    (0, b"", "small"),  # timeout / reset: Envoy answers the callout with no status
])
def test_classifier_picks_or_falls_back(make_host: HostFactory, status: int, answer: bytes, model: str) -> None:
    host = make_host("ai_gateway")
    assert host.start(CLASSIFIED), host.logs
    s = chat(host, req("Write me a sorting routine"))
    assert s.local_response is None and not s.continued  # waiting for the classifier
    (call,) = host.callouts
    assert call.cluster == "small" and call.header(":path") == "/v1/chat/completions"
    sent = json.loads(call.body)
    assert sent["messages"][-1]["content"] == "Write me a sorting routine" and "code, math" in \
        sent["messages"][0]["content"]
    host.respond_callout(call.token, status, [(":status", str(status))] if status else [], answer)
    assert s.continued and s.request_header("x-ai-upstream") == model
    assert json.loads(s.request_body)["model"] == model


def test_rules_before_the_classifier(make_host: HostFactory) -> None:
    host = make_host("ai_gateway")
    assert host.start(CLASSIFIED), host.logs
    s = chat(host, req(IMAGE))
    assert not host.callouts and s.request_header("x-ai-upstream") == "vision"
