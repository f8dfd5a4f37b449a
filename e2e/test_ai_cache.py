"""The response cache in a real Envoy, answers kept in a real redis-server (through webdis, stock Envoy's way to
Redis), seen by the official openai client: misses then hits, streamed and not (either way round), two consumers
apart, TTL expiry, Redis down (requests still served), content-based routing's choice in the headers, the intent
classifier (asked through a callout; a category, none, a timeout)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from e2e.ai_stack import GEMMA, MODEL_PORTS, QWEN, Mock
from e2e.envoy import Envoy
from e2e.test_ai_consumers import envoy_with_webdis
from tests.redis_server import Redis, redis_server, webdis

TTL_S = 6


@dataclass
class Gateway:
    url: str
    envoy: Envoy
    mocks: dict[str, Mock]
    redis: Redis
    keys: dict[str, str]
    log: Path

    def client(self, who: str = "team-a") -> OpenAI:
        return OpenAI(base_url=f"{self.url}/v1", api_key=self.keys[who], max_retries=0, timeout=15)

    def ai_log(self, test_id: str) -> dict[str, Any]:
        for _ in range(50):
            for line in self.log.read_text().splitlines() if self.log.exists() else ():
                tid, _, state = line.partition("\t")
                if tid == test_id and state != "-":
                    return json.loads(state)
            time.sleep(0.1)
        raise AssertionError(f"no AI log for {test_id}")


def gateway_config(keys: dict[str, str]) -> dict[str, Any]:
    return {
        "models": [{"name": QWEN, "cluster": QWEN}, {"name": GEMMA, "cluster": GEMMA}],
        "content_routing": [{"name": "auto", "default": QWEN,
                             "rules": [{"model": GEMMA, "keywords": ["translate"]}]},
                            {"name": "intent", "default": QWEN,  # the mock echoes the message: its words decide
                             "classifier": {"model": GEMMA, "categories": {"poem": GEMMA, "recipe": QWEN},
                                            "timeout_ms": 600}}],
        "consumers": [{"name": "team-a", "keys": [keys["team-a"]]}, {"name": "team-b", "keys": [keys["team-b"]]}],
        "cache": {"ttl_s": TTL_S, "max_entry_bytes": 16384,
                  "store": {"backend": "redis", "timeout_ms": 500,
                            "redis": {"transport": "webdis", "cluster": "webdis", "prefix": "e2e-cache:"}}},
    }


@pytest.fixture(scope="module")
def gw(ai_gateway_wasm: Path) -> Iterator[Gateway]:
    keys = {n: f"sk-{n}-{secrets.token_hex(12)}" for n in ("team-a", "team-b")}
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        webdis_port = stack.enter_context(webdis(redis.port))
        mocks = {m: Mock(m) for m in MODEL_PORTS}
        stack.callback(lambda: [m.stop() for m in mocks.values()])
        url, envoy = envoy_with_webdis(stack, gateway_config(keys), mocks, webdis_port, access_log=True)
        yield Gateway(url, envoy, mocks, redis, keys, envoy.dir / "ai_log.txt")


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the capital of France? ({uuid.uuid4().hex[:8]})"}]


def ask(gw: Gateway, messages: list[dict[str, str]], who: str = "team-a", stream: bool = False,
        model: str = QWEN, **kw: Any) -> tuple[Any, str, Any]:
    """(raw response, the answer's text, its usage)."""
    c = gw.client(who)
    raw = c.chat.completions.with_raw_response.create(model=model, messages=messages, temperature=0, stream=stream,
                                                      **kw)  # type: ignore[call-overload]
    if not stream:
        r = raw.parse()
        return raw, r.choices[0].message.content, r.usage
    chunks = list(raw.parse())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert sum(1 for ch in chunks if ch.choices) > 2  # several chunks, not one blob
    return raw, text, chunks[-1].usage if chunks and not chunks[-1].choices else None


def test_miss_then_hit_json_and_stream(gw: Gateway) -> None:
    q = question()
    calls = gw.mocks[QWEN].count()
    raw, text, usage = ask(gw, q, extra_headers={"x-test-id": "miss-1"})
    assert raw.headers["x-ai-cache"] == "miss" and text and usage.total_tokens > 0
    assert gw.mocks[QWEN].count() == calls + 1
    raw2, text2, usage2 = ask(gw, q, extra_headers={"x-test-id": "hit-1"})
    assert raw2.headers["x-ai-cache"] == "hit" and raw2.headers["x-ai-served-model"] == QWEN
    assert (text2, usage2) == (text, usage)
    raw3, text3, usage3 = ask(gw, q, stream=True, stream_options={"include_usage": True})
    assert raw3.headers["x-ai-cache"] == "hit" and raw3.headers["content-type"].startswith("text/event-stream")
    assert text3 == text and usage3 == usage
    assert gw.mocks[QWEN].count() == calls + 1  # only the miss went upstream
    log = gw.ai_log("hit-1")
    assert log["cache"] == "hit" and log["served_model"] == QWEN and log["tokens_saved"] == usage.total_tokens
    assert gw.ai_log("miss-1")["total_tokens"] == usage.total_tokens  # the miss counted as upstream usage
    stats = gw.envoy.stats("wasmcustom.aigw.cache.hit")
    assert sum(stats.values()) >= 2


def test_streamed_answer_replays_as_json(gw: Gateway) -> None:
    q = question()
    raw, text, _ = ask(gw, q, stream=True)
    assert raw.headers["x-ai-cache"] == "miss"
    raw2, text2, usage2 = ask(gw, q)
    assert raw2.headers["x-ai-cache"] == "hit" and text2 == text and usage2.total_tokens > 0


def test_consumers_and_header_tricks_do_not_share(gw: Gateway) -> None:
    q = question()
    ask(gw, q, "team-a")
    raw, _, _ = ask(gw, q, "team-b")
    assert raw.headers["x-ai-cache"] == "miss"
    # team-a claiming to be team-b, asking for a hit, or spelling the skip header otherwise: its own entry or none
    raw, _, _ = ask(gw, q, "team-b", extra_headers={"x-mse-consumer": "team-a", "x-ai-cache": "hit"})
    assert raw.headers["x-ai-cache"] == "hit"  # team-b's own entry from above
    raw, _, _ = ask(gw, q, "team-a", extra_headers={"Cache-Control": "No-Store"})
    assert raw.headers["x-ai-cache"] == "skip"
    c = gw.client()
    raw = c.chat.completions.with_raw_response.create(model=QWEN, messages=q, temperature=0.9)
    assert raw.headers["x-ai-cache"] == "skip"  # not deterministic


def test_ttl_expiry(gw: Gateway) -> None:
    q = question()
    ask(gw, q)
    assert ask(gw, q)[0].headers["x-ai-cache"] == "hit"
    keys = gw.redis.cli("--scan", "--pattern", "e2e-cache:v:*").split()
    assert keys and all(0 < int(gw.redis.cli("TTL", k)) <= TTL_S for k in keys)
    time.sleep(TTL_S + 0.5)
    assert ask(gw, q)[0].headers["x-ai-cache"] == "miss"


def test_content_routing_picks_the_model(gw: Gateway) -> None:
    raw, text, _ = ask(gw, [{"role": "user", "content": "Please translate 'bonjour'"}], model="auto")
    assert raw.headers["x-ai-served-model"] == GEMMA and text
    raw, _, _ = ask(gw, question(), model="auto")
    assert raw.headers["x-ai-served-model"] == QWEN


def test_intent_classifier_picks_the_model_or_the_default(gw: Gateway) -> None:
    """The classifier (mock vLLM GEMMA, which echoes the user message) is asked through the gateway's callout; the
    category its answer names picks the model; an answer naming none, or none within timeout_ms, the default."""
    for text, served in (("Write a poem about the sea", GEMMA), ("A recipe for bread?", QWEN),
                         ("Hello there", QWEN)):
        gw.mocks[GEMMA].reset()
        raw, answer, _ = ask(gw, [{"role": "user", "content": f"{text} ({uuid.uuid4().hex[:6]})"}], model="intent")
        assert raw.headers["x-ai-served-model"] == served and answer.startswith(f"[{served}] echo: {text}")
        (asked, *served_too) = gw.mocks[GEMMA].requests()
        assert asked["body"]["max_tokens"] == 16 and text in asked["body"]["messages"][-1]["content"]
        assert asked["headers"].get("accept-encoding") == "identity"  # the openai client sent gzip, deflate
        assert asked["headers"].get("x-api-key") is None and "authorization" not in asked["headers"]
        assert len(served_too) == (served == GEMMA)
    gw.mocks[GEMMA].fault(delay_ms=3000)  # the classifier too slow: the default, after timeout_ms
    try:
        t0 = time.monotonic()
        raw, _, _ = ask(gw, [{"role": "user", "content": f"Write a poem ({uuid.uuid4().hex[:6]})"}], model="intent")
        assert raw.headers["x-ai-served-model"] == QWEN and time.monotonic() - t0 < 2.5
    finally:
        gw.mocks[GEMMA].reset()
    assert sum(gw.envoy.stats("wasmcustom.aigw.content_routing.classifier.ok").values()) == 2  # poem, recipe
    assert sum(gw.envoy.stats("wasmcustom.aigw.content_routing.classifier.failed").values()) == 2  # none, slow


def test_redis_down_still_serves(gw: Gateway) -> None:
    q = question()
    gw.redis.stop()
    raw, text, _ = ask(gw, q)
    assert raw.http_response.status_code == 200 and text and raw.headers["x-ai-cache"] == "miss"
    assert ask(gw, q)[0].headers["x-ai-cache"] == "miss"
    assert sum(gw.envoy.stats("wasmcustom.aigw.cache.store_unavailable").values()) >= 2
