"""The response cache on both test hosts: keys (consumer, served model, normalised body), what is cached and what
never is, replays in both shapes, the shared store's bound and eviction, the Redis store against a real
redis-server (Higress's Redis host calls), charging hits, hostile inputs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxywasm.testing import Stream
from tests.conftest import HostFactory
from tests.gateway import chat, error_of
from tests.redis_server import Redis
from tests.test_ai_consumers import KEY_A, KEY_B, bearer, started

MODELS = [{"name": "qwen", "cluster": "qwen"}, {"name": "gemma", "cluster": "gemma"}]
MSGS = [{"role": "user", "content": "What is 2+2?"}]


def config(**cache: Any) -> dict[str, Any]:
    return {"models": MODELS, "aliases": [{"name": "both", "targets": [{"model": "qwen"}, {"model": "gemma"}]}],
            "cache": {"ttl_s": 60, **cache}}


def body(model: str = "qwen", stream: bool = False, **extra: Any) -> bytes:
    doc = {"model": model, "messages": MSGS, "temperature": 0, **extra}
    if stream:
        doc["stream"] = True
    return json.dumps(doc).encode()


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "qwen",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Two plus two is four, of course.",
                                               "reasoning_content": "Add the numbers."},
                       "logprobs": None, "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}}


def sse_of(answer: dict[str, Any], done: bool = True) -> bytes:
    from ai_gateway import replay
    raw = replay.to_sse(answer, include_usage=True)
    return raw if done else raw[: raw.rindex(b"data: [DONE]")]


def answer_json(s: Stream, answer: dict[str, Any] = ANSWER, status: int = 200) -> None:
    s.send_response_headers({":status": str(status), "content-type": "application/json"})
    s.send_response_body(json.dumps(answer).encode(), end_of_stream=True)
    s.complete()


def answer_sse(s: Stream, answer: dict[str, Any] = ANSWER, done: bool = True) -> None:
    raw = sse_of(answer, done)
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    half = len(raw) // 2
    s.send_response_body(raw[:half], end_of_stream=False)
    s.send_response_body(raw[half:], end_of_stream=True)
    s.complete()


def hit(s: Stream) -> bool:
    r = s.local_response
    return r is not None and r.status == 200 and ("x-ai-cache", "hit") in r.headers


def events(raw: bytes) -> list[Any]:
    out = []
    for ev in raw.decode().split("\n\n"):
        if ev.startswith("data: "):
            out.append(ev[6:] if ev[6:] == "[DONE]" else json.loads(ev[6:]))
    return out


def test_json_hit_replays_the_answer_as_it_was(make_host: HostFactory) -> None:
    host = started(make_host, config())
    s = chat(host, body())
    assert s.local_response is None
    answer_json(s)
    assert s.response_header("x-ai-cache") == "miss"
    assert host.metric("aigw.cache.stored") == 1
    again = chat(host, body())
    assert hit(again)
    assert json.loads(again.local_response.body) == ANSWER
    assert ("x-ai-served-model", "qwen") in again.local_response.headers
    assert host.metric("aigw.cache.hit") == 1 and host.metric("aigw.cache.tokens_saved") == 20
    assert host.metric("aigw.cache.model.qwen.hit") == 1


def test_stream_and_json_replay_each_other(make_host: HostFactory) -> None:
    host = started(make_host, config())
    answer_json(chat(host, body()))
    s = chat(host, body(stream=True, stream_options={"include_usage": True}))
    assert hit(s) and ("content-type", "text/event-stream") in s.local_response.headers
    evs = events(s.local_response.body)
    assert evs[-1] == "[DONE]" and evs[-2]["usage"] == ANSWER["usage"] and len(evs) > 4
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in evs[:-2] if e["choices"])
    reasoning = "".join(e["choices"][0]["delta"].get("reasoning_content") or "" for e in evs[:-2] if e["choices"])
    assert text == ANSWER["choices"][0]["message"]["content"] and reasoning == "Add the numbers."
    # a streamed answer, cached, replays as JSON to a non-streamed request (another question: another entry)
    q = body(messages=[{"role": "user", "content": "And 3+3?"}], stream=True)
    answer_sse(chat(host, q))
    s = chat(host, body(messages=[{"role": "user", "content": "And 3+3?"}]))
    assert hit(s)
    got = json.loads(s.local_response.body)
    assert got["choices"][0]["message"] == ANSWER["choices"][0]["message"] and got["usage"] == ANSWER["usage"]
    # without include_usage the replayed stream has no usage chunk
    s = chat(host, body(stream=True))
    assert hit(s) and all("usage" not in e for e in events(s.local_response.body)[:-1])


def test_tool_calls_survive_a_streamed_round_trip(make_host: HostFactory) -> None:
    tool = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'}}
    ans = {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [tool]},
                                  "logprobs": None, "finish_reason": "tool_calls"}]}
    host = started(make_host, config())
    answer_sse(chat(host, body(stream=True)), ans)
    assert not hit(chat(host, body()))  # tool calls are not cached unless configured
    host = started(make_host, config(tool_calls=True))
    answer_sse(chat(host, body(stream=True)), ans)
    s = chat(host, body())
    assert hit(s) and json.loads(s.local_response.body)["choices"][0]["message"]["tool_calls"] == [tool]


def test_key_separates_consumers_models_and_bodies(make_host: HostFactory) -> None:
    cfg = {**config(), "consumers": [{"name": "a", "keys": [KEY_A]}, {"name": "b", "keys": [KEY_B]}]}
    host = started(make_host, cfg)
    answer_json(chat(host, body(), bearer(KEY_A)))
    assert hit(chat(host, body(), bearer(KEY_A)))
    assert not hit(chat(host, body(), bearer(KEY_B)))  # another consumer
    assert not hit(chat(host, body("gemma"), bearer(KEY_A)))  # another model
    # near-identical bodies: one character, a field's type, an extra field
    for other in (body(messages=[{"role": "user", "content": "What is 2+2? "}]), body(temperature=0.0, seed=1),
                  body(max_tokens=5), body(messages=[{"role": "system", "content": "What is 2+2?"}])):
        assert not hit(chat(host, other, bearer(KEY_A)))
    # the same request with other transport fields and spacing between members, or through an alias: one entry
    same = b'{ "model" : "both",\n "messages":%s ,"stream":false,"stream_options":null, "temperature":0}' % (
        json.dumps(MSGS).encode())
    s = chat(host, same, bearer(KEY_A))
    assert hit(s) if s.local_response is not None else s.request_header("x-ai-upstream") == "gemma"
    # members in another order are another request (the key follows the body as sent, not a re-encoding)
    swapped = json.dumps({"temperature": 0, "messages": MSGS, "model": "qwen"}).encode()
    assert not hit(chat(host, swapped, bearer(KEY_A)))


def test_what_is_never_cached(make_host: HostFactory) -> None:
    host = started(make_host, config())
    answer_json(chat(host, body(temperature=0.7)))  # not deterministic
    assert not hit(chat(host, body(temperature=0.7)))
    s = chat(host, body(temperature=0.7), {"x-ai-cache": "allow"})  # opted in: stored, then replayed
    answer_json(s)
    assert hit(chat(host, body(temperature=0.7), {"x-ai-cache": "allow"}))
    answer_json(chat(host, body(n=2)), {"error": {"message": "boom"}}, status=500)  # errors
    answer_json(chat(host, body(n=3)), {"error": {"message": "boom"}}, status=200)  # an error body with 200
    answer_sse(chat(host, body(n=4, stream=True)), done=False)  # cut off
    for n in (2, 3, 4):
        assert not hit(chat(host, body(n=n)))
    assert host.metric("aigw.cache.stored") == 1


def test_cache_control_and_skip_header(make_host: HostFactory) -> None:
    host = started(make_host, config())
    answer_json(chat(host, body(), {"cache-control": "no-store"}))
    assert not hit(chat(host, body(), {"x-ai-cache": "skip"}))
    s = chat(host, body(), {"cache-control": "no-cache"})  # not read
    assert s.local_response is None
    answer_json(s)  # but stored
    assert hit(chat(host, body()))
    assert not hit(chat(host, body(), {"cache-control": "no-store, max-age=0"}))


def test_ttl_expires(make_host: HostFactory) -> None:
    host = started(make_host, config(ttl_s=5))
    answer_json(chat(host, body()))
    assert hit(chat(host, body()))
    host.state.shared.clock_ns += 6 * 10**9
    assert not hit(chat(host, body()))


def test_shared_store_is_bounded_and_evicts(make_host: HostFactory) -> None:
    host = started(make_host, config(max_entries=8))
    for i in range(100):
        answer_json(chat(host, body(messages=[{"role": "user", "content": f"q{i}"}])))
    keys = [k for k in host.state.shared.data if k.startswith("aigw.v.")]
    assert 0 < len(keys) <= 8
    assert hit(chat(host, body(messages=[{"role": "user", "content": "q99"}])))  # the newest is there
    hits = sum(hit(chat(host, body(messages=[{"role": "user", "content": f"q{i}"}]))) for i in range(100))
    assert hits <= 8


def test_entry_size_limit_and_huge_bodies(make_host: HostFactory) -> None:
    host = started(make_host, config(max_entry_bytes=2048))
    big = {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 5000},
                                  "finish_reason": "stop"}]}
    answer_json(chat(host, body()), big)
    answer_sse(chat(host, body(stream=True)), big)
    assert not hit(chat(host, body()))
    huge = body(messages=[{"role": "user", "content": "y" * 500_000}])
    s = chat(host, huge, chunks=7)
    answer_json(s)
    assert hit(chat(host, huge, chunks=3))


@pytest.mark.parametrize("bad, field", [
    ({}, "cache.ttl_s"), ({"ttl_s": 5, "colour": 1}, "cache.colour"), ({"ttl_s": 0}, "cache.ttl_s"),
    ({"ttl_s": 5, "store": {"backend": "redis"}}, "store.redis"), ({"ttl_s": 5, "max_entry_bytes": 10}, "max_entry"),
])
def test_config_mistakes_name_the_field(make_host: HostFactory, bad: dict[str, Any], field: str) -> None:
    host = make_host("ai_gateway")
    assert not host.start({"models": MODELS, "cache": bad})
    assert any(field in m for m in host.logs_at(5)), host.logs


@pytest.mark.parametrize("charge", [False, True])
def test_hits_charged_only_when_configured(make_host: HostFactory, charge: bool) -> None:
    cfg = {**config(charge_hits=charge),
           "consumers": [{"name": "a", "keys": [KEY_A], "limits": [{"tokens": 30, "per": "minute"}]}]}
    host = started(make_host, cfg)
    answer_json(chat(host, body(), bearer(KEY_A)))  # 20 tokens charged
    assert hit(chat(host, body(), bearer(KEY_A)))  # 20 more when charged: 40 >= 30
    s = chat(host, body(), bearer(KEY_A))
    if charge:
        assert s.local_response.status == 429 and error_of(s)["code"] == "rate_limit_exceeded"
    else:
        assert hit(s)


def test_redis_store_through_higress_calls(make_host: HostFactory, redis: Redis) -> None:
    store = {"backend": "redis", "redis": {"transport": "higress", "cluster": "redis", "prefix": "cache1:"}}
    host = started(make_host, config(store=store), None, "higress", redis)
    answer_json(chat(host, body()))
    stored = redis.cli("--scan", "--pattern", "cache1:v:*").split()
    assert len(stored) == 1 and 0 < int(redis.cli("TTL", stored[0])) <= 60
    other = started(make_host, config(store=store), None, "higress", redis)  # another replica
    s = chat(other, body(stream=True))
    assert hit(s) and events(s.local_response.body)[-1] == "[DONE]"


def test_redis_down_goes_upstream_and_is_counted(make_host: HostFactory) -> None:
    with __import__("tests.redis_server", fromlist=["redis_server"]).redis_server() as dead:
        port = dead.port
    host = make_host("ai_gateway", None, "higress")
    host.use_redis("redis", port)
    store = {"backend": "redis", "redis": {"transport": "higress", "cluster": "redis"}, "timeout_ms": 200}
    assert host.start(config(store=store))
    s = chat(host, body())
    assert s.local_response is None and s.continued
    answer_json(s)
    assert host.metric("aigw.cache.store_unavailable") == 2  # the lookup and the write


def test_text_completions_round_trip(make_host: HostFactory) -> None:
    host = started(make_host, config())
    legacy = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "qwen",
              "choices": [{"index": 0, "text": "Paris is the capital of France.", "logprobs": None,
                           "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}}
    req = json.dumps({"model": "qwen", "prompt": "The capital of France", "temperature": 0}).encode()
    path = {":path": "/v1/completions"}
    s = chat(host, req, path)
    answer_json(s, legacy)
    got = chat(host, json.dumps({"model": "qwen", "prompt": "The capital of France", "temperature": 0,
                                 "stream": True}).encode(), path)
    assert hit(got)
    evs = events(got.local_response.body)
    assert evs[-1] == "[DONE]" and all(e["object"] == "text_completion" for e in evs[:-1])
    assert "".join(e["choices"][0]["text"] for e in evs[:-1] if e["choices"]) == legacy["choices"][0]["text"]
