"""Models on other providers' protocols through the gateway (both test hosts): addressing, translated answers,
accounting, errors, callout fallback across providers, aliases, the cache."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ai_gateway.config import parse
from proxywasm import Action, ConfigError

from .conftest import REPO
from .gateway import chat, chat_body, error_of

GOLDEN = REPO / "tests" / "golden" / "providers"
MODELS: list[dict[str, Any]] = [
    {"name": "qwen", "cluster": "vllm", "fallback": {"models": ["claude"]}},
    {"name": "claude", "cluster": "anthropic", "provider": "anthropic", "upstream_model": "claude-sonnet-4-5",
     "api_keys": {"keys": ["sk-ant-test-1"]}, "fallback": {"models": ["qwen"]}},
    {"name": "gem", "cluster": "gemini", "provider": "gemini", "upstream_model": "gemini-2.5-flash",
     "api_keys": {"keys": ["AIza-test"]}},
    {"name": "az", "cluster": "azure", "provider": "azure-openai", "deployment": "gpt-4o-prod",
     "api_keys": {"keys": ["azure-key"]}},
]
CONFIG = {"models": MODELS, "aliases": [{"name": "any", "targets": [{"model": "qwen"}, {"model": "claude"}]}]}
CLAUDE_ANSWER = json.loads((GOLDEN / "anthropic/answer-text.json").read_text())


@pytest.fixture
def gw(make_host):
    h = make_host("ai_gateway")
    assert h.start(CONFIG), h.logs
    return h


def sse_events(raw: bytes) -> list[Any]:
    return [e[6:].decode() if e == b"data: [DONE]" else json.loads(e[6:])
            for e in raw.split(b"\n\n") if e.startswith(b"data: ")]


def log_of(s) -> dict[str, Any]:
    return json.loads(s.get_property("ai_log"))


def test_anthropic_request_is_addressed_and_translated(gw) -> None:
    s = chat(gw, chat_body("claude", max_tokens=50), {"authorization": "Bearer client-key"})
    assert s.local_response is None
    assert s.request_header(":path") == "/v1/messages"
    assert s.request_header("x-api-key") == "sk-ant-test-1" and s.request_header("authorization") is None
    assert s.request_header("anthropic-version") == "2023-06-01"
    assert s.request_header("accept-encoding") == "identity"
    body = json.loads(s.request_body)
    assert body == {"model": "claude-sonnet-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    assert s.request_header("content-length") == str(len(s.request_body))


def test_anthropic_json_answer_reaches_the_client_as_openai(gw) -> None:
    s = chat(gw, chat_body("claude"))
    s.send_response_headers({":status": "200", "content-type": "application/json", "content-length": "999"})
    body = json.dumps(CLAUDE_ANSWER["provider"]).encode()
    s.send_response_body(body[:40], end_of_stream=False)
    s.send_response_body(body[40:], end_of_stream=True)
    s.complete()
    assert s.response_header("content-length") is None and s.response_header("x-ai-served-model") == "claude"
    got = json.loads(s.response_body)
    assert got["choices"] == CLAUDE_ANSWER["openai"]["choices"] and got["usage"] == CLAUDE_ANSWER["openai"]["usage"]
    log = log_of(s)
    assert (log["input_tokens"], log["output_tokens"], log["usage_source"]) == (4195, 503, "server")
    assert gw.metric("route.none.upstream.anthropic.model.claude.consumer.none.metric.input_token") == 4195


@pytest.mark.parametrize("client_usage", [True, False])
def test_anthropic_stream_reaches_the_client_as_openai_chunks(gw, client_usage: bool) -> None:
    extra = {"stream_options": {"include_usage": True}} if client_usage else {}
    s = chat(gw, chat_body("claude", stream=True, **extra))
    raw = (GOLDEN / "anthropic/stream-tool-use.sse").read_bytes()
    s.send_response_headers({":status": "200", "content-type": "text/event-stream; charset=utf-8"})
    for i in range(0, len(raw), 97):
        s.send_response_body(raw[i : i + 97], end_of_stream=i + 97 >= len(raw))
    s.complete()
    assert s.response_header("content-type") == "text/event-stream"
    events = sse_events(s.response_body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    args = "".join(tc["function"].get("arguments", "") for c in chunks for ch in c["choices"]
                   for tc in ch["delta"].get("tool_calls", ()))
    assert json.loads(args) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert any(ch["finish_reason"] == "tool_calls" for c in chunks for ch in c["choices"])
    assert any("usage" in c for c in chunks) == client_usage  # the gateway's own usage request stays its own
    log = log_of(s)
    assert (log["input_tokens"], log["output_tokens"], log["complete"]) == (472, 89, True)


def test_gemini_stream_path_and_chunks(gw) -> None:
    s = chat(gw, chat_body("gem", stream=True))
    assert s.request_header(":path") == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert s.request_header("x-goog-api-key") == "AIza-test"
    raw = (GOLDEN / "gemini/stream-text.sse").read_bytes()
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body(raw[:100], end_of_stream=False)
    s.send_response_body(raw[100:], end_of_stream=True)
    s.complete()
    events = sse_events(s.response_body)
    text = "".join(ch["delta"].get("content") or "" for c in events[:-1] for ch in c["choices"])
    assert text == "The sky is blue because of Rayleigh scattering." and events[-1] == "[DONE]"
    log = log_of(s)
    assert (log["input_tokens"], log["output_tokens"], log["total_tokens"]) == (8, 44, 52)


def test_gemini_cut_off_stream_is_not_complete(gw) -> None:
    s = chat(gw, chat_body("gem", stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body((GOLDEN / "gemini/stream-cut-off.sse").read_bytes(), end_of_stream=True)
    s.complete()
    assert b"[DONE]" not in s.response_body
    assert log_of(s)["complete"] is False


def test_azure_is_addressed_by_deployment_and_answers_pass(gw) -> None:
    s = chat(gw, chat_body("az"), {"authorization": "Bearer client-key"})
    assert s.request_header(":path") == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert s.request_header("accept-encoding") == "identity"  # its answers are read too (usage)
    assert s.request_header("api-key") == "azure-key" and s.request_header("authorization") is None
    assert s.request_body == chat_body("az")  # as the client sent it: Azure serves the deployment in the path
    answer = b'{"id":"x","object":"chat.completion","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    s.send_response_body(answer, end_of_stream=True)
    s.complete()
    assert s.response_body == answer and log_of(s)["output_tokens"] == 4


def test_untranslatable_request_is_refused_before_any_upstream_call(gw) -> None:
    s = chat(gw, chat_body("claude", n=3))
    err = error_of(s)
    assert s.local_response.status == 400 and err["param"] == "n" and "`n`" in err["message"]
    assert not gw.callouts


def test_anthropic_overloaded_is_a_503_in_openai_shape_after_fallback_fails(gw) -> None:
    s = chat(gw, chat_body("claude"))
    assert s.send_response_headers({":status": "529", "content-type": "application/json"}) == Action.PAUSE
    (call,) = gw.callouts  # 529 is a 5xx: claude falls back to qwen, at the client's path, without Anthropic's headers
    assert call.cluster == "vllm" and call.header(":path") == "/v1/chat/completions"
    assert call.header("anthropic-version") is None and call.header("x-api-key") is None
    assert json.loads(call.body)["messages"] == [{"role": "user", "content": "hi"}]
    gw.respond_callout(call.token, 200, {"content-type": "application/json"}, b'{"choices":[],"usage":{}}')
    assert s.local_response.status == 200 and ("x-ai-fallback-from", "claude") in s.local_response.headers


def test_provider_error_maps_status_and_body(gw) -> None:
    s = chat(gw, chat_body("gem"))
    g = json.loads((GOLDEN / "gemini/error-quota.json").read_text())
    s.send_response_headers({":status": "429", "content-type": "application/json; charset=UTF-8"})
    s.send_response_body(json.dumps(g["provider"]).encode(), end_of_stream=True)
    s.complete()
    assert s.response_header(":status") == "429"
    assert json.loads(s.response_body) == g["openai"]


def test_callout_fallback_from_vllm_to_anthropic(gw) -> None:
    s = chat(gw, chat_body("qwen", stream=True), {"authorization": "Bearer client-key"})
    assert s.send_response_headers({":status": "503", "content-type": "application/json"}) == Action.PAUSE
    (call,) = gw.callouts
    assert call.cluster == "anthropic" and call.header(":path") == "/v1/messages"
    assert call.header("x-api-key") == "sk-ant-test-1" and call.header("authorization") is None
    assert call.header("anthropic-version") == "2023-06-01"
    assert json.loads(call.body)["stream"] is True
    raw = (GOLDEN / "anthropic/stream-text.sse").read_bytes()
    gw.respond_callout(call.token, 200, {"content-type": "text/event-stream"}, raw)
    lr = s.local_response
    assert lr.status == 200 and ("content-type", "text/event-stream") in lr.headers
    assert ("x-ai-fallback-from", "qwen") in lr.headers and ("x-ai-served-model", "claude") in lr.headers
    events = sse_events(lr.body)
    assert "".join(ch["delta"].get("content") or "" for c in events[:-1] for ch in c["choices"]) == "Hello!"
    assert events[-1] == "[DONE]" and not any("usage" in c for c in events[:-1])
    s.complete()
    log = log_of(s)
    assert (log["served_model"], log["input_tokens"], log["output_tokens"]) == ("claude", 25, 15)


def test_callout_fallback_answer_error_is_translated_and_counts_as_a_failure(gw) -> None:
    s = chat(gw, chat_body("qwen"))
    s.send_response_headers({":status": "500", "content-type": "application/json"})
    s.send_response_body(b'{"error": "down"}')
    (call,) = gw.callouts
    g = json.loads((GOLDEN / "anthropic/error-overloaded.json").read_text())
    gw.respond_callout(call.token, 529, {"content-type": "application/json"}, json.dumps(g["provider"]).encode())
    assert s.local_response is None and s.response_header("x-ai-fallback-exhausted") == "1"


def test_fallback_to_a_provider_that_cannot_carry_the_request_is_skipped(gw) -> None:
    s = chat(gw, chat_body("qwen", logprobs=True))
    s.send_response_headers({":status": "503", "content-type": "application/json"})
    assert not gw.callouts and s.response_header("x-ai-fallback-exhausted") == "1"


def test_alias_across_providers_addresses_each_target(gw) -> None:
    seen = {}
    for _ in range(40):
        s = chat(gw, chat_body("any"))
        seen[s.request_header("x-ai-model")] = (s.request_header(":path"), json.loads(s.request_body).get("model"))
    assert seen == {"qwen": ("/v1/chat/completions", "qwen"), "claude": ("/v1/messages", "claude-sonnet-4-5")}


def test_mirror_to_a_provider_is_translated(make_host) -> None:
    cfg = json.loads(json.dumps(CONFIG))
    cfg["models"][0] = {"name": "qwen", "cluster": "vllm", "mirror": {"model": "gem", "percent": 100}}
    h = make_host("ai_gateway")
    assert h.start(cfg), h.logs
    chat(h, chat_body("qwen"))
    (call,) = h.callouts
    assert call.cluster == "gemini" and call.header(":path") == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert json.loads(call.body)["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_cache_stores_the_openai_shaped_answer(make_host) -> None:
    h = make_host("ai_gateway")
    assert h.start({**CONFIG, "cache": {"ttl_s": 60}}), h.logs
    body = chat_body("claude", temperature=0)
    s = chat(h, body)
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    s.send_response_body(json.dumps(CLAUDE_ANSWER["provider"]).encode(), end_of_stream=True)
    s.complete()
    hit = chat(h, body).local_response
    assert hit is not None and ("x-ai-cache", "hit") in hit.headers
    assert json.loads(hit.body)["choices"] == CLAUDE_ANSWER["openai"]["choices"]
    streamed = chat(h, chat_body("claude", stream=True, temperature=0)).local_response
    assert streamed is not None and ("x-ai-cache", "hit") in streamed.headers
    events = sse_events(streamed.body)
    assert "".join(ch["delta"].get("content") or "" for c in events[:-1] for ch in c["choices"]) == \
        "Hi! My name is Claude."


@pytest.mark.parametrize(("model", "message"), [
    ({"provider": "bedrock"}, "models[0].provider: must be one of"),
    ({"provider": "openai", "max_tokens": 10}, "models[0].max_tokens: only for provider anthropic"),
    ({"provider": "anthropic", "deployment": "x"}, "models[0].deployment: only for provider azure-openai"),
    ({"provider": "azure-openai", "deployment": "a/b"}, "models[0].deployment: must be letters"),
    ({"provider": "azure-openai", "api_version": "1?x=2"}, "models[0].api_version: must be letters"),
    ({"provider": "gemini", "upstream_model": "models/x:y"}, "models[0].upstream_model: must be letters"),
    ({"provider": "anthropic", "max_tokens": 0}, "models[0].max_tokens: must be between"),
    ({"provider": "anthropic", "anthropic_version": "2023\n"}, "models[0].anthropic_version: must not contain"),
])
def test_provider_config_errors_name_the_field(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"models": [{"name": "m", "cluster": "c", **model}]})
    assert message in str(e.value)


@pytest.mark.parametrize(("provider", "header"), [("anthropic", "x-api-key"), ("gemini", "x-goog-api-key"),
                                                  ("azure-openai", "api-key"), ("openai", "authorization")])
def test_key_pool_uses_the_providers_header(provider: str, header: str) -> None:
    cfg = parse({"models": [{"name": "m", "cluster": "c", "provider": provider, "api_keys": {"keys": ["k"]}}]})
    pool = cfg.models["m"].keys
    assert pool.header == header and pool.prefix == ("Bearer " if header == "authorization" else "")


def test_callout_fallback_from_anthropic_to_vllm_keeps_the_gateways_usage_to_itself(gw) -> None:
    s = chat(gw, chat_body("claude", stream=True))  # the client asked for no usage; the gateway did
    assert s.send_response_headers({":status": "529", "content-type": "application/json"}) == Action.PAUSE
    (call,) = gw.callouts
    sent = json.loads(call.body)
    assert call.cluster == "vllm" and sent["stream_options"] == {"include_usage": True}
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "qwen"}
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in (
        {**chunk, "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})) + \
        b"data: [DONE]\n\n"
    gw.respond_callout(call.token, 200, {"content-type": "text/event-stream"}, raw)
    body = s.local_response.body
    assert b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")
    s.complete()
    log = log_of(s)
    assert (log["served_model"], log["input_tokens"], log["output_tokens"]) == ("qwen", 5, 1)


def test_stream_usage_counted_without_a_usage_chunk_for_the_client(gw) -> None:
    s = chat(gw, chat_body("claude", stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    raw = (GOLDEN / "anthropic/stream-text-compact.sse").read_bytes()
    events = [e + b"\n\n" for e in raw.split(b"\n\n") if e]
    for i, e in enumerate(events):  # one event per chunk, as Anthropic streams
        s.send_response_body(e, end_of_stream=i == len(events) - 1)
    s.complete()
    assert b'"usage"' not in s.response_body and s.response_body.endswith(b"data: [DONE]\n\n")
    assert s.response_body == (GOLDEN / "anthropic/stream-text.openai.sse").read_bytes().replace(
        b'data: {"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","object":"chat.completion.chunk","created":1700000000,'
        b'"model":"claude-sonnet-4-5","choices":[],"usage":{"prompt_tokens":25,"completion_tokens":15,'
        b'"total_tokens":40,"prompt_tokens_details":{"cached_tokens":0}}}\n\n', b"").replace(
        b'"created":1700000000', b'"created":%d' % json.loads(s.response_body[6:s.response_body.index(b"\n")])["created"])
    log = log_of(s)
    assert (log["input_tokens"], log["output_tokens"], log["usage_source"], log["complete"]) == (25, 15, "server", True)


def test_held_provider_error_is_translated_when_every_fallback_fails(gw) -> None:
    s = chat(gw, chat_body("claude"))
    assert s.send_response_headers({":status": "529", "content-type": "application/json"}) == Action.PAUSE
    g = json.loads((GOLDEN / "anthropic/error-overloaded.json").read_text())
    assert s.send_response_body(json.dumps(g["provider"]).encode()) == Action.PAUSE  # held while falling back
    gw.respond_callout(gw.callouts[0].token, 503)
    assert s.response_header(":status") == "503" and s.response_header("x-ai-fallback-exhausted") == "1"
    assert json.loads(s.response_body) == g["openai"]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
def test_held_error_reaches_each_client_protocol_in_its_shape(gw, client: str) -> None:
    """Every callout fallback failed: the primary's held error (Anthropic's) goes out as OpenAI's error to an
    OpenAI client, and as Anthropic's again to an Anthropic Messages client (translated twice, never raw)."""
    from tests.test_ai_anthropic_clients import messages_body, send

    s = chat(gw, chat_body("claude")) if client == "openai" else send(gw, messages_body("claude"))
    s.send_response_headers({":status": "529", "content-type": "application/json"})
    g = json.loads((GOLDEN / "anthropic/error-overloaded.json").read_text())
    s.send_response_body(json.dumps(g["provider"]).encode())
    gw.respond_callout(gw.callouts[0].token, 503)
    got = json.loads(s.response_body)
    assert s.response_header(":status") == "503"
    if client == "openai":
        assert got == g["openai"]
    else:
        assert got["type"] == "error" and got["error"]["message"] == "Overloaded"


def test_key_probe_speaks_the_providers_protocol(make_host) -> None:
    """A probe of an ejected Anthropic key carries the key in x-api-key and Anthropic's anthropic-version (its
    GET /v1/models refuses a request without it)."""
    h = make_host("ai_gateway")
    claude = {"name": "claude", "cluster": "anthropic", "provider": "anthropic", "upstream_model": "claude-sonnet-4-5",
              "api_keys": {"keys": ["sk-ant-one-1", "sk-ant-two-2"], "probe": {"interval_ms": 1000},
                           "cooldown_ms": 600_000}}
    assert h.start({"models": [claude]}), h.logs
    s = chat(h, chat_body("claude", max_tokens=5))
    bad = s.request_header("x-api-key")
    s.send_response_headers({":status": "401", "content-type": "application/json"})
    h.respond_callout(h.callouts[0].token, 200)  # the retry with the other key
    h.advance(1000)
    h.tick()
    (probe,) = h.callouts
    assert probe.header("x-api-key") == bad and probe.header("anthropic-version") == "2023-06-01"
    assert probe.header("authorization") is None
