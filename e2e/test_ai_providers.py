"""Models on hosted providers' protocols (wasm-config/envoy/ai-gateway-providers.yaml) in a real Envoy, driven by
the official openai client: Anthropic, Gemini and Azure OpenAI (their mocks, e2e/mock_providers), JSON and
streamed, tool calls, usage in metrics and the AI log, fallback vLLM -> Anthropic (Envoy retries and callouts),
an alias across providers, provider errors mapped to OpenAI's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from e2e import mock_providers
from e2e.ai_stack import HELLO, QWEN, AiStack, running_ai_stack
from e2e.envoy import REPO

CONFIG = REPO / "wasm-config/envoy/ai-gateway-providers.yaml"
CLAUDE, GEMINI, AZURE, CALLOUT = "claude-sonnet", "gemini-flash", "gpt-4o", "qwen-callout"
PROVIDER_PORTS = {"anthropic": 18111, "gemini": 18112, "azure": 18113}
MOCK_OF = {CLAUDE: "anthropic", GEMINI: "gemini", AZURE: "azure"}
KEYS = {"anthropic": "sk-ant-mock-1", "gemini": "AIza-mock-1", "azure": "azure-mock-1"}
KEY_HEADER = {"anthropic": "x-api-key", "gemini": "x-goog-api-key", "azure": "api-key"}
PATHS = {CLAUDE: "/v1/messages", GEMINI: "/v1beta/models/gemini-2.5-flash:", AZURE: "/openai/deployments/gpt-4o-prod/"}
EXPECTED = "Hello! You said: hello there. This answer comes from a mock of"  # 12 words: 12 tokens
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "required": ["city"],
                                                          "properties": {"city": {"type": "string"}}}}}]


class Stack:
    def __init__(self, ai: AiStack, mocks: dict[str, mock_providers.ProviderMock]) -> None:
        self.ai, self.mocks = ai, mocks
        self.client = ai.client

    def mock(self, model: str) -> mock_providers.ProviderMock:
        return self.mocks[MOCK_OF[model]]


@pytest.fixture(scope="module")
def stack(ai_gateway_wasm: Any) -> Iterator[Stack]:
    models = {"anthropic": ["claude-sonnet-4-5"], "gemini": ["gemini-2.5-flash"], "azure": ["gpt-4o-prod"]}
    mocks = {k: mock_providers.serve(k, keys=[KEYS[k]], models=models[k]) for k in PROVIDER_PORTS}
    ports = {f"port_value: {p}}}": f"port_value: {mocks[k].port}}}" for k, p in PROVIDER_PORTS.items()}
    try:
        with running_ai_stack(replace=ports, config=CONFIG, model_ports={QWEN: 18101}) as ai:
            yield Stack(ai, mocks)
    finally:
        for m in mocks.values():
            m.shutdown()


@pytest.fixture
def gw(stack: Stack) -> Stack:
    stack.ai.reset()
    for m in stack.mocks.values():
        m.reset()
    return stack


def stream(gw: Stack, model: str, test_id: str = "", **kw: Any) -> tuple[str, list[Any]]:
    chunks = list(gw.client.chat.completions.create(
        model=model, messages=HELLO, stream=True, extra_headers={"x-test-id": test_id} if test_id else None, **kw))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


@pytest.mark.parametrize("model", [CLAUDE, GEMINI, AZURE])
def test_json_answer_from_each_provider(gw: Stack, model: str) -> None:
    raw = gw.client.chat.completions.with_raw_response.create(
        model=model, messages=HELLO, max_tokens=100, extra_headers={"x-test-id": f"json-{model}"})
    r = raw.parse()
    assert r.choices[0].message.content == EXPECTED and r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens == 12
    assert raw.headers["x-ai-served-model"] == model
    (req,) = gw.mock(model).requests
    kind = MOCK_OF[model]
    assert req.path.startswith(PATHS[model]) and req.headers[KEY_HEADER[kind]] == KEYS[kind]
    assert "authorization" not in req.headers  # the client's key stays at the gateway
    log = json.loads(gw.ai.wait_ai_log({f"json-{model}"})[f"json-{model}"])
    assert (log["served_model"], log["output_tokens"], log["usage_source"]) == (model, 12, "server")


@pytest.mark.parametrize("model", [CLAUDE, GEMINI, AZURE])
def test_streamed_answer_from_each_provider(gw: Stack, model: str) -> None:
    text, chunks = stream(gw, model, f"sse-{model}", stream_options={"include_usage": True})
    assert text == EXPECTED
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    text, chunks = stream(gw, model, f"sse2-{model}")  # no usage asked: none comes, yet it is counted
    assert text == EXPECTED and all(c.usage is None for c in chunks)
    logs = gw.ai.wait_ai_log({f"sse-{model}", f"sse2-{model}"})
    for tid in (f"sse-{model}", f"sse2-{model}"):
        log = json.loads(logs[tid])
        assert (log["output_tokens"], log["complete"], log["stream"]) == (12, True, True)
        assert log["ttft_ms"] is not None
    metrics = gw.ai.metrics()
    assert sum(v for (_, _, m, _), v in metrics["output_token"].items() if m == model) >= 24


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_tool_calls_json_and_streamed(gw: Stack, model: str) -> None:
    r = gw.client.chat.completions.create(model=model, messages=HELLO, tools=TOOLS)
    (call,) = r.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.choices[0].finish_reason == "tool_calls"
    _, chunks = stream(gw, model, tools=TOOLS)
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].function.name == "get_weather" and deltas[0].id
    assert json.loads("".join(d.function.arguments or "" for d in deltas)) == {"city": "Paris"}
    # the result goes back: the provider gets it in its own shape and answers with text
    messages = [*HELLO, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'}]
    r = gw.client.chat.completions.create(model=model, messages=messages, tools=TOOLS)
    assert r.choices[0].message.content.startswith("Hello!") and r.choices[0].finish_reason == "stop"
    sent = gw.mock(model).requests[-1].body
    if model == CLAUDE:
        assert sent["messages"][-1]["content"][0]["type"] == "tool_result"
    else:
        assert sent["contents"][-1]["parts"][0]["functionResponse"]["name"] == "get_weather"


@pytest.mark.parametrize("streamed", [False, True])
def test_fallback_as_envoy_retries_from_vllm_to_anthropic(gw: Stack, streamed: bool) -> None:
    gw.ai.qwen.fault(status=503)
    tid = f"retry-{streamed}"
    if streamed:
        text, chunks = stream(gw, QWEN, tid)
        assert all(c.object == "chat.completion.chunk" for c in chunks)
    else:
        r = gw.client.chat.completions.create(model=QWEN, messages=HELLO, extra_headers={"x-test-id": tid})
        text = r.choices[0].message.content
    assert text == EXPECTED
    (req,) = gw.mock(CLAUDE).requests
    assert req.path == "/v1/messages" and req.body["model"] == "claude-sonnet-4-5"
    log = json.loads(gw.ai.wait_ai_log({tid})[tid])
    assert log["attempts"] == [[QWEN, 503], [CLAUDE, 200]]
    assert (log["served_model"], log["fallback_from"], log["output_tokens"], log["complete"]) == \
        (CLAUDE, QWEN, 12, True)


def test_fallback_through_callouts_streams_openai_chunks(gw: Stack) -> None:
    gw.ai.qwen.fault(status=503)
    raw = gw.client.chat.completions.with_raw_response.create(model=CALLOUT, messages=HELLO, stream=True,
                                                             extra_headers={"x-test-id": "callout"})
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == EXPECTED
    assert raw.headers["x-ai-fallback-from"] == CALLOUT and raw.headers["x-ai-served-model"] == CLAUDE
    log = json.loads(gw.ai.wait_ai_log({"callout"})["callout"])
    assert (log["served_model"], log["output_tokens"]) == (CLAUDE, 12)


def test_alias_across_providers(gw: Stack) -> None:
    served = {}
    for _ in range(30):
        raw = gw.client.chat.completions.with_raw_response.create(model="chat", messages=HELLO)
        served[raw.headers["x-ai-served-model"]] = raw.parse().choices[0].message.content
    assert set(served) == {QWEN, CLAUDE, GEMINI}
    assert served[CLAUDE] == served[GEMINI] == EXPECTED


@pytest.mark.parametrize(("model", "status", "error", "code"), [
    (CLAUDE, 529, openai.InternalServerError, 503), (CLAUDE, 429, openai.RateLimitError, 429),
    (GEMINI, 429, openai.RateLimitError, 429), (GEMINI, 503, openai.InternalServerError, 503),
    (AZURE, 429, openai.RateLimitError, 429), (AZURE, 500, openai.InternalServerError, 500)])
def test_provider_errors_reach_the_client_as_openai_errors(gw: Stack, model: str, status: int, error: type,
                                                           code: int) -> None:
    gw.mock(model).fault(status=status)
    with pytest.raises(error) as e:
        gw.client.chat.completions.create(model=model, messages=HELLO)
    assert e.value.status_code == code and e.value.message
    if model != AZURE:  # Azure's errors are OpenAI's already; the others are translated
        assert isinstance(e.value.body, dict) and e.value.body.get("type") in ("server_error", "requests")


def test_untranslatable_request_never_reaches_the_provider(gw: Stack) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        gw.client.chat.completions.create(model=CLAUDE, messages=HELLO, n=2)
    assert e.value.body["param"] == "n" and not gw.mock(CLAUDE).requests


@pytest.mark.parametrize("model", [CLAUDE, GEMINI])
def test_cut_off_stream_is_never_whole(gw: Stack, model: str) -> None:
    gw.mock(model).fault(cut_after=3)
    text = ""
    with pytest.raises((openai.APIError, httpx2.TransportError)):
        for c in gw.client.chat.completions.create(model=model, messages=HELLO, stream=True,
                                                    extra_headers={"x-test-id": f"cut-{model}"}):
            text += c.choices[0].delta.content or "" if c.choices else ""
    assert text != EXPECTED
    log = json.loads(gw.ai.wait_ai_log({f"cut-{model}"})[f"cut-{model}"])
    assert log["complete"] is False


def test_anthropic_error_event_mid_stream_raises_in_the_client(gw: Stack) -> None:
    gw.mock(CLAUDE).fault(stream_error=True)
    with pytest.raises(openai.APIError) as e:
        for _ in gw.client.chat.completions.create(model=CLAUDE, messages=HELLO, stream=True):
            pass
    assert "Overloaded" in str(e.value)


def test_fallback_as_envoy_retries_from_anthropic_back_to_vllm(gw: Stack) -> None:
    """The retry attempts share one header map: the vLLM attempt gets OpenAI's path back and neither Anthropic's
    version header nor its key; the body is OpenAI's again."""
    gw.mock(CLAUDE).fault(status=529)
    text, chunks = stream(gw, "claude-first", "back-to-vllm")
    assert text and all(c.object == "chat.completion.chunk" for c in chunks)
    assert len(gw.mock(CLAUDE).requests) == 1  # the Anthropic attempt, answered 529
    (sent,) = gw.ai.qwen.requests()  # those to /v1/chat/completions: the path is OpenAI's again
    assert gw.ai.qwen.count() == 1
    assert "anthropic-version" not in sent["headers"] and "x-api-key" not in sent["headers"]
    assert sent["body"]["model"] == QWEN and sent["body"]["messages"] == HELLO
    log = json.loads(gw.ai.wait_ai_log({"back-to-vllm"})["back-to-vllm"])
    assert log["attempts"] == [["claude-first", 529], [QWEN, 200]] and log["served_model"] == QWEN


def test_provider_error_held_during_a_failed_callout_fallback_reaches_the_client_translated(gw: Stack) -> None:
    gw.mock(CLAUDE).fault(status=529)
    gw.ai.qwen.fault(status=503)
    with pytest.raises(openai.InternalServerError) as e:
        gw.client.chat.completions.create(model="claude-callout", messages=HELLO)
    assert e.value.status_code == 503 and e.value.response.headers["x-ai-fallback-exhausted"] == "1"
    assert e.value.body == {"message": "Overloaded", "type": "server_error", "param": None, "code": "overloaded_error"}


def test_envoy_retry_to_a_provider_that_cannot_carry_the_request_answers_400(gw: Stack) -> None:
    """The attempt filter refuses the Anthropic attempt (n=2) with a local reply: the client learns why, and Envoy
    does not retry a local reply."""
    gw.ai.qwen.fault(status=503)
    with pytest.raises(openai.BadRequestError) as e:
        gw.client.chat.completions.create(model=QWEN, messages=HELLO, n=2, extra_headers={"x-test-id": "n2"})
    assert e.value.body["param"] == "n" and not gw.mock(CLAUDE).requests
    log = json.loads(gw.ai.wait_ai_log({"n2"})["n2"])
    assert log["attempts"] == [[QWEN, 503], [CLAUDE, 400]]
