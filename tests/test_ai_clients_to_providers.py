"""Both translations at once (both test hosts): a client speaking Anthropic's Messages API reaches a model on a
hosted provider's protocol. The provider's answer becomes OpenAI's (providers/), then the client's (clients/):
JSON and streamed (split anywhere), usage accounted once, errors in the client's shape."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.test_ai_anthropic_clients import events, messages_body, send
from tests.test_ai_providers import CONFIG, GOLDEN, log_of


@pytest.fixture
def gw(make_host):
    h = make_host("ai_gateway")
    assert h.start(CONFIG), h.logs
    return h


def text_of(evs: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"].get("text", "") for e, d in evs if e == "content_block_delta")


@pytest.mark.parametrize("model, path, golden", [
    ("claude", "/v1/messages", "anthropic/answer-text.json"),
    ("gem", "/v1beta/models/gemini-2.5-flash:generateContent", "gemini/answer-text.json"),
])
def test_json_answer_of_a_provider_reaches_an_anthropic_client(gw, model: str, path: str, golden: str) -> None:
    s = send(gw, messages_body(model))
    assert s.local_response is None and s.request_header(":path") == path
    key = s.request_header("x-api-key" if model == "claude" else "x-goog-api-key")
    assert key in ("sk-ant-test-1", "AIza-test")  # the provider's key header, from the pool
    case = json.loads((GOLDEN / golden).read_text())
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    body = json.dumps(case["provider"]).encode()
    s.send_response_body(body[:50], end_of_stream=False)
    s.send_response_body(body[50:], end_of_stream=True)
    s.complete()
    got = json.loads(s.response_body)
    want = case["openai"]["choices"][0]["message"]["content"]
    assert got["type"] == "message" and got["role"] == "assistant"
    assert "".join(b.get("text", "") for b in got["content"] if b["type"] == "text") == want
    usage = case["openai"]["usage"]
    u = got["usage"]  # Anthropic counts cached input apart from input_tokens
    assert u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0) \
        == usage["prompt_tokens"]
    assert got["usage"]["output_tokens"] == usage["completion_tokens"]
    log = log_of(s)
    assert (log["input_tokens"], log["output_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])


@pytest.mark.parametrize("model, golden", [("claude", "anthropic/stream-text"), ("gem", "gemini/stream-text")])
@pytest.mark.parametrize("step", [1, 7, 10_000])
def test_provider_stream_reaches_an_anthropic_client_as_its_events(gw, model: str, golden: str, step: int) -> None:
    s = send(gw, messages_body(model, stream=True))
    raw = (GOLDEN / f"{golden}.sse").read_bytes()
    openai = (GOLDEN / f"{golden}.openai.sse").read_bytes()
    want = "".join((c["choices"][0]["delta"].get("content") or "") for c in
                   (json.loads(e[6:]) for e in openai.split(b"\n\n") if e.startswith(b"data: {"))
                   if c.get("choices"))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    for i in range(0, len(raw), step):
        s.send_response_body(raw[i:i + step], end_of_stream=i + step >= len(raw))
    s.complete()
    evs = events(s.response_body)
    names = [e for e, _ in evs]
    assert names[0] == "message_start" and names[-1] == "message_stop" and "error" not in names
    assert text_of(evs) == want and want
    final = next(d for e, d in evs if e == "message_delta")
    assert final["delta"]["stop_reason"] == "end_turn" and final["usage"]["output_tokens"] > 0
    assert log_of(s)["output_tokens"] == final["usage"]["output_tokens"]


def test_provider_error_reaches_an_anthropic_client_in_its_shape(gw) -> None:
    s = send(gw, messages_body("gem"))
    case = json.loads((GOLDEN / "gemini/error-quota.json").read_text())
    s.send_response_headers({":status": str(case["status"]), "content-type": "application/json"})
    s.send_response_body(json.dumps(case["provider"]).encode(), end_of_stream=True)
    s.complete()
    got = json.loads(s.response_body)
    assert got["type"] == "error" and got["error"]["type"] == "rate_limit_error"
    assert "AIza" not in s.response_body.decode()
