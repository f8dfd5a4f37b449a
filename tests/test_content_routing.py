"""Content-based routing: ``auto`` picks the model by rules over the request (regex, keywords, length, tools,
images), on both test hosts; the chosen model goes upstream, in x-ai-served-model, metrics and the AI log."""

from __future__ import annotations

import json
import time
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


def test_classifier_call_asks_for_an_uncompressed_answer(make_host: HostFactory) -> None:
    host = make_host("ai_gateway")
    assert host.start(CLASSIFIED), host.logs
    s = chat(host, req("Write me a sorting routine"), {"accept-encoding": "gzip, deflate"})  # the openai client's
    (call,) = host.callouts
    assert call.header("accept-encoding") == "identity"
    host.respond_callout(call.token, 200, [(":status", "200")], classifier_answer("code"))
    assert s.request_header("x-ai-upstream") == "coder"
    assert s.request_header("accept-encoding") == "identity"  # its own answer is read too (usage, limits)


@pytest.mark.parametrize("answer", [
    b'{"choices":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nested deeper than any parser's recursion
    classifier_answer([{"type": "text", "text": "code"}]),  # content parts, not a string
    classifier_answer(None),
    b'{"choices":[{"message":{"content":"code"}}]}' * 1000,  # trailing data
])
def test_hostile_classifier_answers_fall_back_to_the_default(make_host: HostFactory, answer: bytes) -> None:
    host = make_host("ai_gateway")
    assert host.start(CLASSIFIED), host.logs
    s = chat(host, req("Write me a sorting routine"))
    (call,) = host.callouts
    host.respond_callout(call.token, 200, [(":status", "200")], answer)
    assert s.continued and s.request_header("x-ai-upstream") == "small"
    assert host.metric("aigw.content_routing.classifier.failed") == 1


@pytest.mark.parametrize("content", [
    [{"type": "text", "text": 5}, {"type": "text", "text": "rust please"}],  # a number where text belongs
    [{"type": "text", "text": None}, {"type": "text", "text": ["rust"]}, "rust", {"type": "text"}],
])
def test_odd_text_parts_are_skipped_not_fatal(make_host: HostFactory, content: Any) -> None:
    host = make_host("ai_gateway")
    assert host.start(CONFIG), host.logs
    s = chat(host, req(content))
    assert s.local_response is None
    assert s.request_header("x-ai-upstream") == ("coder" if content[-1] == {"type": "text", "text": "rust please"}
                                                 else "small")


def test_a_consumer_over_its_limit_is_refused_before_the_classifier_is_asked(make_host: HostFactory) -> None:
    from tests.test_ai_consumers import KEY_A, bearer, started
    cfg = {**CLASSIFIED, "consumers": [{"name": "team-a", "keys": [KEY_A],
                                        "limits": [{"requests": 1, "per": "minute"}]}]}
    host = started(make_host, cfg)
    s = chat(host, req("Write me a sorting routine"), bearer(KEY_A))
    (call,) = host.callouts  # within its limit: the classifier is asked; nothing counted yet
    host.respond_callout(call.token, 200, [(":status", "200")], classifier_answer("code"))
    assert s.continued and s.request_header("x-ai-upstream") == "coder"
    s2 = chat(host, req("Write me a sorting routine"), bearer(KEY_A))
    assert s2.local_response is not None and s2.local_response.status == 429
    assert not host.callouts  # the second request cost no classifier call
    assert host.metric("aigw.consumer.team-a.reason.rate_limit_exceeded.rejected") == 1


def test_a_classifier_behind_an_endpoint_picker_gets_a_pod(make_host: HostFactory) -> None:
    models = [{**m, "endpoint_picker": {"endpoints": ["10.0.0.1:8000", "10.0.0.2:8000"]}} if m["name"] == "small"
              else m for m in MODELS]
    host = make_host("ai_gateway")
    assert host.start({**CLASSIFIED, "models": models}), host.logs
    chat(host, req("Write me a sorting routine"))
    (call,) = host.callouts
    assert call.header("x-gateway-destination-endpoint") in ("10.0.0.1:8000", "10.0.0.2:8000")


def test_the_precheck_reads_redis_without_counting(make_host: HostFactory, redis: Any) -> None:
    """Through Higress's Redis host calls against a real redis-server: the request is held while Redis answers,
    the classifier is asked, and the request counter moves once (by admit), not twice."""
    from tests.test_ai_consumers import KEY_A, bearer, started
    prefix = f"precheck{time.time_ns()}:"  # the session's redis-server serves both hosts' runs
    store = {"backend": "redis", "redis": {"transport": "higress", "cluster": "redis", "prefix": prefix}}
    cfg = {**CLASSIFIED, "store": store, "consumers": [{"name": "team-a", "keys": [KEY_A],
                                                        "limits": [{"requests": 2, "per": "minute"}]}]}
    host = started(make_host, cfg, None, "higress", redis)
    for n in (1, 2):
        s = chat(host, req("Write me a sorting routine"), bearer(KEY_A))
        assert not s.continued and s.local_response is None
        for _ in range(50):  # Redis answers the precheck, then the classifier is called
            if host.callouts:
                break
            time.sleep(0.02)
        (call,) = host.callouts
        host.respond_callout(call.token, 200, [(":status", "200")], classifier_answer("code"))
        for _ in range(50):  # then admit's own Redis call, and the request goes on
            if s.continued:
                break
            time.sleep(0.02)
        assert s.continued and s.request_header("x-ai-upstream") == "coder"
        (counter,) = redis.cli("--scan", "--pattern", prefix + "*").split()
        assert redis.cli("GET", counter).strip() == str(n)
