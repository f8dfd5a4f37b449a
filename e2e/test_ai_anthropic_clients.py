"""Anthropic Messages API clients in a real Envoy, with the official ``anthropic`` client: JSON and streamed
answers, tool use, an alias whose first target fails (the streaming fallback of Envoy retries), consumers' keys
sent as ``x-api-key``, a cache hit replayed as Anthropic events, and errors in Anthropic's shape.

The stack is wasm-config/envoy/ai-gateway-fallback.yaml (three mock vLLM servers; qwen2-1-5b falls back to
gemma-2-2b then llama-3-8b through Envoy retries and the attempt filter) with its plugin configuration swapped for
one with an alias, a consumer and a response cache.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from e2e.ai_stack import GEMMA, QWEN, AiStack, running_ai_stack, send
from e2e.envoy import REPO

LLAMA = "llama-3-8b"
CONFIG = REPO / "wasm-config/envoy/ai-gateway-fallback.yaml"
PORTS = {QWEN: 18101, GEMMA: 18102, LLAMA: 18103}
KEY = "sk-team-a-" + "0" * 24
ALIAS = "claude-sonnet-5-5"  # what Claude Code asks for, served by the gateway's own models
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = {"name": "get_weather", "description": "Get the current weather in a given location",
           "input_schema": {"type": "object", "properties": {"location": {"type": "string"}},
                            "required": ["location"]}}
PLUGIN = {
    "fallback": {"on_status": ["5xx", 429], "first_byte_timeout_ms": 10000},
    "models": [
        {"name": QWEN, "cluster": QWEN,
         "fallback": {"models": [GEMMA, LLAMA], "cluster": "qwen2-1-5b-fallback", "max_attempts": 3}},
        {"name": GEMMA, "cluster": GEMMA},
        {"name": LLAMA, "cluster": LLAMA, "upstream_model": "meta-llama/Meta-Llama-3-8B-Instruct"},
    ],
    "aliases": [{"name": ALIAS, "targets": [{"model": QWEN, "weight": 1}]}],
    "consumers": [{"name": "team-a", "keys": [KEY]}],
    "cache": {"ttl_s": 60, "store": {"backend": "shared"}},
}


def _plugin_block() -> dict[str, str]:
    """A ``replace`` that swaps the router-level plugin configuration of CONFIG for PLUGIN."""
    m = re.search(r"(                  value: \|\n)((?:                    .*\n)+)", CONFIG.read_text())
    assert m, "plugin configuration block not found in " + str(CONFIG)
    return {m[0]: f"                  value: {json.dumps(json.dumps(PLUGIN))}\n"}


@pytest.fixture(scope="module")
def stack(ai_gateway_wasm: Any) -> Iterator[AiStack]:
    with running_ai_stack(replace=_plugin_block(), config=CONFIG, model_ports=PORTS) as s:
        yield s


@pytest.fixture
def gw(stack: AiStack) -> AiStack:
    stack.reset()
    return stack


def client(gw: AiStack, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0, timeout=15)


def test_json_message(gw: AiStack) -> None:
    tid = uuid.uuid4().hex
    raw = client(gw).messages.with_raw_response.create(model=QWEN, max_tokens=64, messages=HELLO,
                                                       system="Be brief.", extra_headers={"x-test-id": tid})
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "[qwen2-1-5b] echo: hello there"
    assert msg.stop_reason == "end_turn"
    # the mock's counts: (1 + 2 words) per message, system included; one token per word of the reply
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (6, 4)
    assert raw.headers["x-ai-served-model"] == QWEN
    (up,) = gw.qwen.requests()
    assert up["path"] == "/v1/chat/completions"
    assert "x-api-key" not in up["headers"] and "authorization" not in up["headers"]  # the gateway's key stays
    assert up["body"]["messages"] == [{"role": "system", "content": "Be brief."}, *HELLO]
    assert up["body"]["max_tokens"] == 64
    log = json.loads(gw.wait_ai_log({tid})[tid])
    assert (log["client"], log["consumer"], log["input_tokens"], log["output_tokens"]) == ("anthropic", "team-a",
                                                                                          6, 4)


def test_streamed_message(gw: AiStack) -> None:
    with client(gw).messages.stream(model=QWEN, max_tokens=64, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "[qwen2-1-5b] echo: hello there" == final.content[0].text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)  # message_delta's usage
    (up,) = gw.qwen.requests()
    assert up["body"]["stream"] is True and up["body"]["stream_options"] == {"include_usage": True}


def test_max_tokens_cuts_the_answer(gw: AiStack) -> None:
    msg = client(gw).messages.create(model=QWEN, max_tokens=2, messages=HELLO)
    assert msg.stop_reason == "max_tokens" and msg.content[0].text == "[qwen2-1-5b] echo:"


def test_tool_use(gw: AiStack) -> None:
    c = client(gw)
    msg = c.messages.create(model=GEMMA, max_tokens=64, messages=[{"role": "user", "content": "Weather in Paris?"}],
                            tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"})
    (call,) = msg.content
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"location": "mock"})
    assert msg.stop_reason == "tool_use"
    sent = gw.gemma.requests()[-1]["body"]
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["input_schema"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    # the answer to the call goes back as a tool message; the streamed call arrives as input_json_delta events
    with c.messages.stream(model=GEMMA, max_tokens=64, tools=[WEATHER], tool_choice={"type": "any"}, messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name,
                                               "input": call.input}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "15 degrees"}]},
    ]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds
    assert final.content[-1].type == "tool_use" and final.content[-1].input == {"location": "mock"}
    assert final.stop_reason == "tool_use"
    sent = gw.gemma.requests()[-1]["body"]["messages"]
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"location":"mock"}'}
    assert sent[2] == {"role": "tool", "tool_call_id": call.id, "content": "15 degrees"}


def _events(gw: AiStack, **kw: Any) -> tuple[list[Any], dict[str, str]]:
    with client(gw).messages.with_streaming_response.create(stream=True, **kw) as resp:
        headers = dict(resp.headers)
        events = list(resp.parse())
    return events, headers


def test_alias_falls_back_in_one_clean_stream(gw: AiStack) -> None:
    gw.qwen.fault(status=503)
    events, headers = _events(gw, model=ALIAS, max_tokens=64, messages=HELLO)
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("message_start") == 1 and "error" not in kinds
    assert events[0].message.usage.input_tokens > 0  # the gateway's estimate, before any output (as Anthropic's)
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == "[gemma-2-2b] echo: hello there"
    assert headers["x-ai-fallback-from"] == QWEN and headers["x-ai-served-model"] == GEMMA
    assert gw.qwen.count() == 1 and gw.gemma.requests()[0]["body"]["model"] == GEMMA


def test_consumer_key_as_x_api_key(gw: AiStack) -> None:
    with pytest.raises(anthropic.AuthenticationError) as e:
        client(gw, "sk-not-a-consumer-0000000000").messages.create(model=QWEN, max_tokens=8, messages=HELLO)
    assert e.value.status_code == 401
    assert e.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                      "message": "Incorrect API key provided."}}
    assert gw.qwen.count() == 0
    # Claude Code's other way: ANTHROPIC_AUTH_TOKEN is sent as authorization: Bearer
    token_client = anthropic.Anthropic(base_url=gw.url, auth_token=KEY, max_retries=0, timeout=15)
    assert token_client.messages.create(model=QWEN, max_tokens=8, messages=HELLO).content[0].text


def test_cache_hit_replayed_as_anthropic_events(gw: AiStack) -> None:
    # anthropic 2.x sends no temperature (its typed API has none): the answer is cached on the client's say-so
    ask = {"model": GEMMA, "max_tokens": 64, "extra_headers": {"x-ai-cache": "allow"},
           "messages": [{"role": "user", "content": f"cache me {uuid.uuid4().hex}"}]}
    first = client(gw).messages.with_raw_response.create(**ask)
    assert first.headers["x-ai-cache"] == "miss"
    events, headers = _events(gw, **ask)  # the same question, streamed this time: a hit
    assert headers["x-ai-cache"] == "hit" and gw.gemma.count() == 1
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text == first.parse().content[0].text
    again = client(gw).messages.with_raw_response.create(**ask)
    assert again.headers["x-ai-cache"] == "hit" and again.parse().content == first.parse().content


def test_count_tokens(gw: AiStack) -> None:
    n = client(gw).messages.count_tokens(model=ALIAS, messages=HELLO, system="Be brief.").input_tokens
    assert 0 < n < 20 and gw.qwen.count() == 0  # an estimate, by the gateway alone


def test_errors_in_anthropics_shape(gw: AiStack) -> None:
    c = client(gw)
    with pytest.raises(anthropic.NotFoundError) as nf:
        c.messages.create(model="no-such-model", max_tokens=8, messages=HELLO)
    assert nf.value.body["error"]["type"] == "not_found_error"
    gw.gemma.fault(status=400, message="This model's maximum context length is 4096 tokens.")
    with pytest.raises(anthropic.BadRequestError) as bad:
        c.messages.create(model=GEMMA, max_tokens=8, messages=HELLO)
    assert bad.value.body == {"type": "error", "error": {
        "type": "invalid_request_error", "message": "This model's maximum context length is 4096 tokens."}}
    gw.gemma.fault(drop=True)  # no answer at all: Envoy's own 503 (local_reply_config), in Anthropic's shape
    with pytest.raises(anthropic.InternalServerError) as down:
        c.messages.create(model=GEMMA, max_tokens=8, messages=HELLO)
    assert down.value.status_code == 503 and down.value.body["type"] == "error"
    assert down.value.body["error"]["type"] == "api_error" and down.value.body["error"]["message"]
    r = send(gw.url + "/v1/messages", "POST", {"model": QWEN, "messages": HELLO},
             {"x-api-key": KEY, "anthropic-version": "2023-06-01"})
    assert r.status == 400 and r.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                                       "message": "max_tokens: Field required"}}


def test_upstream_cut_mid_stream_is_an_error_not_a_clean_end(gw: AiStack) -> None:
    """The upstream closes after three events: Envoy cuts the client's stream too (no ``event: error`` can follow a
    reset), so the client sees a broken stream, never a clean message_stop."""
    gw.gemma.fault(drop_after_chunks=3)
    lines: list[str] = []
    with pytest.raises(Exception) as e:
        with client(gw).messages.with_streaming_response.create(model=GEMMA, max_tokens=64, messages=HELLO,
                                                                stream=True) as resp:
            lines.extend(resp.iter_lines())
    assert type(e.value).__name__ == "RemoteProtocolError", e.value
    assert "event: message_start" in lines and "event: message_stop" not in lines
