"""The official ``anthropic`` client through a real Envoy to models on hosted providers' protocols
(wasm-config/envoy/ai-gateway-providers.yaml, the providers' mocks): both translations at once, the client's
request to chat completions to the provider's, the provider's answer to OpenAI's to the client's — JSON and
streamed, tool use, the provider's key in place of the client's, a vLLM model falling back to Anthropic's, and a
provider's error in the client's shape."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import pytest

from e2e import test_ai_providers as providers
from e2e.ai_stack import HELLO, QWEN
from e2e.test_ai_providers import AZURE, CLAUDE, EXPECTED, GEMINI, KEY_HEADER, KEYS, MOCK_OF, Stack

stack, gw = providers.stack, providers.gw  # the providers' stack and its per-test reset (fixtures)

WEATHER = {"name": "get_weather", "description": "The weather in a city",
           "input_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}


def client(gw: Stack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.ai.url, api_key="sk-client-own-key", max_retries=0, timeout=15)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI, AZURE])
def test_each_provider_json_and_streamed(gw: Stack, model: str) -> None:
    tid = f"anthropic-client-{model}"
    msg = client(gw).messages.create(model=model, max_tokens=100, messages=HELLO, extra_headers={"x-test-id": tid})
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == EXPECTED
    assert msg.stop_reason == "end_turn" and msg.usage.output_tokens == 12 and msg.usage.input_tokens > 0
    (req,) = gw.mock(model).requests
    kind = MOCK_OF[model]
    assert req.headers[KEY_HEADER[kind]] == KEYS[kind]  # the pool's key, never the client's
    assert "sk-client-own-key" not in json.dumps(dict(req.headers))
    with client(gw).messages.stream(model=model, max_tokens=100, messages=HELLO) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == EXPECTED and final.usage.output_tokens == 12 and final.stop_reason == "end_turn"
    log = json.loads(gw.ai.wait_ai_log({tid})[tid])
    assert (log["client"], log["served_model"], log["output_tokens"]) == ("anthropic", model, 12)


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_tool_use_through_a_provider(gw: Stack, model: str) -> None:
    msg = client(gw).messages.create(model=model, max_tokens=100, messages=HELLO, tools=[WEATHER])
    call = msg.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Paris"})
    assert msg.stop_reason == "tool_use"
    with client(gw).messages.stream(model=model, max_tokens=100, messages=HELLO, tools=[WEATHER]) as s:
        final = s.get_final_message()
    assert final.content[-1].input == {"city": "Paris"} and final.stop_reason == "tool_use"


def test_vllm_falls_back_to_anthropic_in_one_clean_stream(gw: Stack) -> None:
    gw.ai.qwen.fault(status=503)
    with client(gw).messages.with_streaming_response.create(model=QWEN, max_tokens=100, messages=HELLO,
                                                            stream=True, extra_headers={"x-test-id": "a-fb"}) as r:
        events: list[Any] = list(r.parse())
        headers = dict(r.headers)
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and kinds.count("message_start") == 1
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == EXPECTED
    assert headers["x-ai-fallback-from"] == QWEN and headers["x-ai-served-model"] == CLAUDE
    log = json.loads(gw.ai.wait_ai_log({"a-fb"})["a-fb"])
    assert (log["client"], log["attempts"], log["complete"]) == ("anthropic", [[QWEN, 503], [CLAUDE, 200]], True)


def test_a_providers_error_in_the_clients_shape(gw: Stack) -> None:
    gw.mock(CLAUDE).fault(status=429, retry_after="3")
    with pytest.raises(anthropic.RateLimitError) as e:
        client(gw).messages.create(model=CLAUDE, max_tokens=100, messages=HELLO)
    assert e.value.status_code == 429 and e.value.body["error"]["type"] == "rate_limit_error"
    assert e.value.response.headers.get("retry-after") == "3"
