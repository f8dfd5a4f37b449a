"""AI gateway: fallback and mirroring — on both hosts."""

from __future__ import annotations

import json

import pytest

from proxywasm import Action, LogLevel, StreamType

from .gateway import CONFIG, chat, chat_body


@pytest.fixture
def gw(make_host):
    h = make_host("ai_gateway")
    assert h.start(CONFIG), h.logs
    return h


def fail_primary(gw, status: str = "503", stream: bool = False):
    s = chat(gw, chat_body("qwen2-1-5b", stream=stream), {"authorization": "Bearer client"})
    assert s.send_response_headers({":status": status, "content-type": "application/json"}) == Action.PAUSE
    assert s.send_response_body(b'{"error": "down"}') == Action.PAUSE  # held back from the client
    return s


def test_5xx_falls_back_to_next_model_transparently(gw) -> None:
    s = fail_primary(gw)
    (call,) = gw.callouts
    assert call.cluster == "gemma"
    doc = json.loads(call.body)
    assert doc["model"] == "google/gemma-2-2b-it" and doc["messages"] == [{"role": "user", "content": "hi"}]
    assert call.header(":path") == "/v1/chat/completions" and call.header(":method") == "POST"
    assert call.header("x-ai-upstream") == "gemma" and call.header("authorization") == "Bearer client"
    assert call.header("content-length") is None
    gw.respond_callout(call.token, 200, {"content-type": "application/json"}, b'{"model": "google/gemma-2-2b-it"}')
    lr = s.local_response
    assert lr.status == 200 and lr.body == b'{"model": "google/gemma-2-2b-it"}'
    assert ("x-ai-fallback-from", "qwen2-1-5b") in lr.headers
    assert ("x-ai-served-model", "gemma-2-2b") in lr.headers
    assert ("content-type", "application/json") in lr.headers


def test_fallback_tries_models_in_order(gw) -> None:
    s = fail_primary(gw, "500")
    gw.respond_callout(gw.callouts[0].token, 502)
    (second,) = gw.callouts
    assert second.cluster == "llama" and json.loads(second.body)["model"] == "llama-3"
    gw.respond_callout(second.token, 200, body=b"ok")
    assert s.local_response.status == 200 and ("x-ai-served-model", "llama-3") in s.local_response.headers


def test_failed_callout_counts_as_failure(gw) -> None:
    s = fail_primary(gw)
    gw.fail_callout(gw.callouts[0].token)  # reset / timeout: no status
    gw.respond_callout(gw.callouts[0].token, 200, body=b"ok")
    assert s.local_response.body == b"ok"


def test_all_fallbacks_failing_lets_the_original_error_through(gw) -> None:
    s = fail_primary(gw)
    gw.respond_callout(gw.callouts[0].token, 503)
    gw.respond_callout(gw.callouts[0].token, 500)
    assert not gw.callouts  # two fallback models, tried once each: never loops
    assert s.local_response is None
    assert s.continued == [StreamType.RESPONSE]
    assert s.response_header("x-ai-fallback-exhausted") == "2"
    assert s.response_header(":status") == "503"
    s.complete()
    log = json.loads(s.get_property("ai_log"))  # the primary's whole error answer: complete, an error, no usage
    assert (log["status"], log["complete"], log["cancelled"], log["input_tokens"]) == (503, True, False, None)


def test_non_trigger_status_passes_through(gw) -> None:
    s = chat(gw, chat_body("qwen2-1-5b"))
    assert s.send_response_headers({":status": "429"}) == Action.CONTINUE
    assert not gw.callouts and s.response_header("x-ai-served-model") == "qwen2-1-5b"


def test_streaming_request_falls_back_with_stream_kept(gw) -> None:
    s = fail_primary(gw, stream=True)
    call = gw.callouts[0]
    assert json.loads(call.body)["stream"] is True
    sse = b'data: {"choices": []}\n\ndata: [DONE]\n\n'
    gw.respond_callout(call.token, 200, {"content-type": "text/event-stream"}, sse)
    assert s.local_response.body == sse
    assert ("content-type", "text/event-stream") in s.local_response.headers


def test_max_attempts_bounds_fallback(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][0]["fallback"]["max_attempts"] = 2
    assert h.start(cfg)
    s = fail_primary(h)
    h.respond_callout(h.callouts[0].token, 500)
    assert not h.callouts and s.response_header("x-ai-fallback-exhausted") == "1"


def test_time_budget_bounds_fallback(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = json.loads(json.dumps(CONFIG))
    cfg["fallback"] = {"timeout_ms": 1000}
    assert h.start(cfg)
    s = fail_primary(h)
    assert h.callouts[0].timeout_ms <= 1000
    h.advance(1200)
    h.respond_callout(h.callouts[0].token, 500)
    assert not h.callouts and s.continued == [StreamType.RESPONSE]


def test_random_mode_uses_every_order(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][0]["fallback"]["mode"] = "RAND"
    assert h.start(cfg)
    firsts = set()
    for _ in range(40):
        fail_primary(h)
        call = h.callouts[0]
        firsts.add(call.cluster)
        h.respond_callout(call.token, 200)
    assert firsts == {"gemma", "llama"}


def test_unknown_fallback_cluster_skips_to_next(make_host) -> None:
    h = make_host("ai_gateway")
    h.state.clusters = {"qwen", "llama"}  # gemma's cluster does not exist in this Envoy
    assert h.start(CONFIG)
    fail_primary(h)
    assert [c.cluster for c in h.callouts] == ["llama"]
    assert any("fallback to gemma-2-2b" in m for _, m in h.logs)


def test_mirror_copies_without_touching_the_client(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][2]["mirror"] = {"model": "gemma-2-2b", "percent": 100}
    assert h.start(cfg)
    s = chat(h, chat_body("llama-3"))
    assert s.local_response is None and json.loads(s.request_body)["model"] == "llama-3"
    (call,) = h.callouts
    assert call.cluster == "gemma" and call.context_id == h.root_id  # owned by the root, not the stream
    assert json.loads(call.body)["model"] == "google/gemma-2-2b-it"
    assert call.header("x-ai-mirror-of") == "llama-3"
    assert s.send_response_headers({":status": "200"}) == Action.CONTINUE
    s.complete()
    h.respond_callout(call.token, 500)  # the shadow's answer is ignored
    assert s.local_response is None


def test_mirror_percentage(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][2]["mirror"] = {"model": "gemma-2-2b", "percent": 25}
    assert h.start(cfg)
    for _ in range(400):
        chat(h, chat_body("llama-3"))
    assert 50 <= len(h.callouts) <= 150  # 25% of 400 = 100, within ~6 sigma


def test_fallback_cluster_without_an_attempt_filter_falls_back_through_callouts(make_host) -> None:
    """No attempt filter in the VM (this host runs one plugin): Envoy retries would carry the primary's body and
    key to the fallback clusters, so the gateway keeps its route and falls back through a callout instead."""
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][0]["fallback"] = {"models": ["gemma-2-2b"], "cluster": "qwen-fallback"}
    h = make_host("ai_gateway")
    assert h.start(cfg), h.logs
    s = chat(h, chat_body("qwen2-1-5b"))
    assert s.request_header("x-ai-upstream") == "qwen" and s.request_header("x-ai-attempt-ticket") is None
    assert s.request_header("x-envoy-retry-on") is None
    assert s.send_response_headers({":status": "503", "content-type": "application/json"}) == Action.PAUSE
    (call,) = h.callouts
    assert call.cluster == "gemma" and json.loads(call.body)["model"] == "google/gemma-2-2b-it"
    assert any("no attempt filter runs in this VM" in m for m in h.logs_at(LogLevel.WARN))


def test_client_cannot_send_an_attempt_ticket(gw) -> None:
    s = chat(gw, chat_body("qwen2-1-5b"), {"x-ai-attempt-ticket": "0123456789abcdef"})
    assert s.request_header("x-ai-attempt-ticket") is None
