"""AI gateway: model routing, aliases, /v1/models and bad input — on both hosts."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from proxywasm import Action

from .gateway import CHAT, CONFIG, chat, chat_body, error_of


@pytest.fixture
def gw(make_host):
    h = make_host("ai_gateway")
    assert h.start(CONFIG), h.logs
    return h


def test_empty_config_passes_everything_through(make_host) -> None:
    h = make_host("ai_gateway")
    assert h.start({})
    body = b'{"model": "anything", "messages": []}'
    s = h.http_stream()
    assert s.send_request_headers(CHAT) == Action.CONTINUE
    assert s.send_request_body(body) == Action.CONTINUE
    assert s.request_body == body
    assert s.request_headers == [(k, v) for k, v in CHAT.items()]
    assert s.send_response_headers({":status": "200"}) == Action.CONTINUE
    assert s.response_headers == [(":status", "200")]


def test_routes_by_model_and_keeps_body_bytes(gw) -> None:
    body = chat_body("qwen2-1-5b") + b"  "  # odd whitespace must survive: no rewrite needed
    s = chat(gw, body, chunks=3)
    assert s.local_response is None
    assert s.request_header("x-ai-upstream") == "qwen"
    assert s.request_header("x-ai-model") == "qwen2-1-5b"
    assert s.request_body == body
    s.send_response_headers({":status": "200"})
    assert s.response_header("x-ai-served-model") == "qwen2-1-5b"


def test_rewrites_upstream_model_name(gw) -> None:
    s = chat(gw, chat_body("gemma-2-2b"), {"content-length": "80"})
    doc = json.loads(s.request_body)
    assert doc["model"] == "google/gemma-2-2b-it"
    assert doc["messages"] == [{"role": "user", "content": "hi"}]
    assert s.request_header("content-length") == str(len(s.request_body))
    assert s.request_header("x-ai-upstream") == "gemma"


def test_models_endpoint_lists_models_and_aliases(gw) -> None:
    s = gw.http_stream()
    assert s.send_request_headers({":method": "GET", ":path": "/v1/models", ":authority": "gw"}, True) == Action.PAUSE
    doc = json.loads(s.local_response.body)
    assert s.local_response.status == 200 and doc["object"] == "list"
    assert [m["id"] for m in doc["data"]] == ["qwen2-1-5b", "gemma-2-2b", "llama-3", "canary", "sticky"]


def test_unknown_model_is_404(gw) -> None:
    s = chat(gw, chat_body("gpt-9"))
    assert s.local_response.status == 404
    err = error_of(s)
    assert err["code"] == "model_not_found" and err["param"] == "model" and "gpt-9" in err["message"]


@pytest.mark.parametrize(("body", "code"), [
    (b"{not json", "invalid_json"),
    (b"\xff\xfe{}", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"messages": []}', "missing_model"),
    (b'{"model": 42}', "invalid_model"),
    (b'{"model": ""}', "invalid_model"),
    (b"[" * 100_000 + b"]" * 100_000, "invalid_json"),
    (b"", "missing_body"),
    (b"  \n", "missing_body"),
])
def test_bad_bodies_get_400(gw, body: bytes, code: str) -> None:
    s = chat(gw, body)
    assert s.local_response.status == 400
    assert error_of(s)["code"] == code
    # the VM survives and serves the next request
    assert chat(gw, chat_body()).request_header("x-ai-upstream") == "qwen"


def test_missing_body_is_400(gw) -> None:
    s = gw.http_stream()
    assert s.send_request_headers(CHAT, end_of_stream=True) == Action.PAUSE
    assert error_of(s)["code"] == "missing_body"


def test_body_over_limit_is_413(make_host) -> None:
    h = make_host("ai_gateway")
    assert h.start({**CONFIG, "max_body_bytes": 2048})
    big = chat_body(padding="x" * 4000)
    s = h.http_stream()  # declared length over the limit: rejected before the body
    assert s.send_request_headers({**CHAT, "content-length": str(len(big))}) == Action.PAUSE
    assert s.local_response.status == 413
    s = chat(h, big, chunks=4)  # no length: rejected once the buffered body passes the limit
    assert s.local_response.status == 413 and error_of(s)["code"] == "request_too_large"


@pytest.mark.parametrize("headers", [
    {**CHAT, ":method": "GET"},
    {**CHAT, ":path": "/v1/other"},
    {**CHAT, ":path": "/healthz"},
])
def test_requests_not_for_the_gateway_pass_untouched(gw, headers: dict[str, str]) -> None:
    s = gw.http_stream()
    assert s.send_request_headers(headers) == Action.CONTINUE
    assert s.send_request_body(b"{not json") == Action.CONTINUE
    assert s.local_response is None and s.request_body == b"{not json"
    assert s.request_header("x-ai-upstream") is None


def test_query_string_does_not_hide_the_path(gw) -> None:
    s = chat(gw, chat_body(), {":path": "/v1/chat/completions?x=1"})
    assert s.request_header("x-ai-upstream") == "qwen"


def test_weighted_alias_splits_and_shows_target(gw) -> None:
    seen = Counter()
    for _ in range(400):
        s = chat(gw, chat_body("canary"))
        seen[s.request_header("x-ai-model")] += 1
        assert json.loads(s.request_body)["model"] in ("qwen2-1-5b", "google/gemma-2-2b-it")
    assert set(seen) == {"qwen2-1-5b", "gemma-2-2b"}
    assert 140 <= seen["qwen2-1-5b"] <= 260  # 50/50 within ~6 sigma


def test_zero_weight_target_never_chosen(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = {**CONFIG, "aliases": [{"name": "a", "targets": [{"model": "qwen2-1-5b", "weight": 0},
                                                           {"model": "llama-3", "weight": 5}]}]}
    assert h.start(cfg)
    assert {chat(h, chat_body("a")).request_header("x-ai-model") for _ in range(50)} == {"llama-3"}


def test_sticky_alias_keeps_a_user_on_one_target(gw) -> None:
    by_user = {}
    for user in [f"user-{i}" for i in range(40)]:
        targets = {chat(gw, chat_body("sticky"), {"x-user-id": user}).request_header("x-ai-model") for _ in range(5)}
        assert len(targets) == 1
        by_user[user] = targets.pop()
    assert set(by_user.values()) == {"qwen2-1-5b", "llama-3"}


def test_rules_override_per_route(make_host) -> None:
    h = make_host("ai_gateway")
    assert h.start({**CONFIG, "_rules_": [{"_match_route_": ["special"],
                                           "models": [{"name": "qwen2-1-5b", "cluster": "special-qwen"}]}]})
    s = h.http_stream(properties={"route_name": "special"})
    s.send_request_headers(CHAT)
    s.send_request_body(chat_body())
    assert s.request_header("x-ai-upstream") == "special-qwen"
    assert chat(h, chat_body()).request_header("x-ai-upstream") == "qwen"


def test_client_cannot_pick_the_upstream_by_header(gw) -> None:
    s = gw.http_stream()  # a pass-through path with forged routing headers
    s.send_request_headers({**CHAT, ":path": "/v1/other", "x-ai-upstream": "internal-admin", "x-ai-model": "x"})
    assert s.request_header("x-ai-upstream") is None and s.request_header("x-ai-model") is None
    s = chat(gw, chat_body("qwen2-1-5b"), {"x-ai-upstream": "internal-admin"})
    assert s.request_header("x-ai-upstream") == "qwen"
