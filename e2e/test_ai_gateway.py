"""Traffic control by the AI gateway in a real Envoy (2 workers) in front of two mock vLLM processes.

Routing by model, aliases, fallback (503, backend down, timeout, streaming, exhausted), mirroring, the gateway's own
error replies, pass-through of what it does not handle, and plugin configuration handling.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest

from e2e.ai_stack import CANARY, GEMMA, HELLO, QWEN, AiStack, chat, plugin_config, send, streamed_text, wait_for
from e2e.demo import busy_ports
from e2e.envoy import REPO

Launch = Callable[..., AbstractContextManager[AiStack]]


@pytest.fixture(scope="module")
def stack(ai_launch: Launch) -> Iterator[AiStack]:
    # The by_model route times out after 1 s (instead of 120 s) for the timeout fallback test.
    with ai_launch(route_timeout="1s") as s:
        yield s


@pytest.fixture
def gw(stack: AiStack) -> AiStack:
    stack.reset()
    return stack


# ------------------------------------------------------------------------------------------------- routing


@pytest.mark.parametrize("model", [QWEN, GEMMA])
def test_chat_routed_by_model(gw: AiStack, model: str) -> None:
    raw = chat(gw, model)
    r = raw.parse()
    assert raw.headers["x-ai-served-model"] == model
    assert r.model == model
    assert r.choices[0].message.content == f"[{model}] echo: hello there"
    other = gw.gemma if model == QWEN else gw.qwen
    seen = gw.mocks[model].requests()
    assert [s["body"]["model"] for s in seen] == [model]
    assert seen[0]["headers"]["x-ai-upstream"] == model
    assert seen[0]["headers"]["accept-encoding"] == "identity"  # the openai client asked for gzip, deflate
    assert other.count() == 0


def test_completions_routed_by_model(gw: AiStack) -> None:
    raw = gw.client.completions.with_raw_response.create(model=GEMMA, prompt="say hi please", max_tokens=3)
    r = raw.parse()
    assert raw.headers["x-ai-served-model"] == GEMMA
    assert (r.model, r.choices[0].text, r.choices[0].finish_reason) == (GEMMA, "[gemma-2-2b] echo: say", "length")
    assert [s["body"]["prompt"] for s in gw.gemma.requests("/v1/completions")] == ["say hi please"]
    assert gw.qwen.count() == 0


def test_streaming_chat_routed_by_model(gw: AiStack) -> None:
    raw = chat(gw, GEMMA, stream=True)
    text, chunks = streamed_text(raw)
    assert raw.headers["x-ai-served-model"] == GEMMA
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert text == "[gemma-2-2b] echo: hello there"
    assert {c.model for c in chunks} == {GEMMA}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [s["body"]["stream"] for s in gw.gemma.requests()] == [True]
    assert gw.qwen.count() == 0


def test_models_list_answered_from_config(gw: AiStack) -> None:
    ids = [m.id for m in gw.client.models.list()]
    assert ids == [QWEN, GEMMA, CANARY]
    assert gw.qwen.count() == gw.gemma.count() == 0


def test_alias_splits_traffic(gw: AiStack) -> None:
    n = 60
    served: Counter[str] = Counter()
    for i in range(n):
        raw = chat(gw, CANARY, [{"role": "user", "content": f"canary {i}"}])
        r = raw.parse()
        target = raw.headers["x-ai-served-model"]
        assert r.model == target, "the response's model shows the alias target"
        assert r.choices[0].message.content == f"[{target}] echo: canary {i}"
        served[target] += 1
    print(f"chat-canary over {n} requests: {dict(served)}")
    assert set(served) == {QWEN, GEMMA}
    assert min(served.values()) >= 15, served
    assert (gw.qwen.count(), gw.gemma.count()) == (served[QWEN], served[GEMMA])
    assert all(s["body"]["model"] == GEMMA for s in gw.gemma.requests())  # alias name rewritten upstream


def test_forged_routing_headers_are_ignored(gw: AiStack) -> None:
    forged = {"x-ai-upstream": GEMMA, "x-ai-model": GEMMA}
    raw = chat(gw, QWEN, extra_headers=forged)
    assert raw.headers["x-ai-served-model"] == QWEN
    assert raw.parse().model == QWEN
    seen = gw.qwen.requests()
    assert len(seen) == 1
    assert (seen[0]["headers"]["x-ai-upstream"], seen[0]["headers"]["x-ai-model"]) == (QWEN, QWEN)
    # also on a path the gateway does not handle: the forged header is dropped, so the default route is taken
    r = gw.get("/v1/other", forged)
    assert r.status == 404 and r.json() == {"detail": "Not Found"}
    assert gw.gemma.count() == 0
    assert [s["headers"].get("x-ai-upstream") for s in gw.qwen.requests("/v1/other")] == [None]


# ------------------------------------------------------------------------------------------------ fallback


def _assert_served_by_fallback(gw: AiStack, raw: Any) -> None:
    assert raw.headers["x-ai-fallback-from"] == QWEN
    assert raw.headers["x-ai-served-model"] == GEMMA
    seen = gw.gemma.requests()
    assert [s["body"]["model"] for s in seen] == [GEMMA], "the fallback request names the fallback model"
    assert seen[0]["body"]["messages"] == HELLO


def test_fallback_on_503(gw: AiStack) -> None:
    gw.qwen.fault(status=503)
    t0 = time.monotonic()
    raw = chat(gw, QWEN)
    elapsed = time.monotonic() - t0
    r = raw.parse()
    print(f"fallback after 503: {elapsed * 1000:.1f} ms")
    assert raw.http_response.status_code == 200
    assert (r.model, r.choices[0].message.content) == (GEMMA, "[gemma-2-2b] echo: hello there")
    _assert_served_by_fallback(gw, raw)
    assert [s["body"]["model"] for s in gw.qwen.requests()] == [QWEN]  # the primary was tried first


def test_fallback_when_primary_is_down(gw: AiStack) -> None:
    gw.qwen.stop()
    try:
        t0 = time.monotonic()
        raw = chat(gw, QWEN)
        print(f"fallback after connection refused (Envoy 503): {(time.monotonic() - t0) * 1000:.1f} ms")
        assert raw.parse().choices[0].message.content == "[gemma-2-2b] echo: hello there"
        _assert_served_by_fallback(gw, raw)
    finally:
        gw.qwen.restart()
    raw = chat(gw, QWEN)  # back to normal once it is up again
    assert raw.headers["x-ai-served-model"] == QWEN and "x-ai-fallback-from" not in raw.headers


def test_fallback_on_upstream_timeout(gw: AiStack) -> None:
    timeouts = "cluster.qwen2-1-5b.upstream_rq_timeout"
    before = gw.envoy.stats(timeouts).get(timeouts, 0)
    gw.qwen.fault(delay_ms=3000)
    t0 = time.monotonic()
    raw = chat(gw, QWEN)
    elapsed = time.monotonic() - t0
    print(f"fallback after the 1 s route timeout: {elapsed * 1000:.0f} ms")
    assert raw.parse().model == GEMMA
    _assert_served_by_fallback(gw, raw)
    assert 0.9 <= elapsed < 2.5, "after the route timeout, not after the 3 s backend delay"
    assert gw.envoy.stats(timeouts)[timeouts] == before + 1  # Envoy answered 504 itself


def test_streaming_fallback(gw: AiStack) -> None:
    gw.qwen.fault(status=503)
    raw = chat(gw, QWEN, stream=True)
    text, chunks = streamed_text(raw)
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert text == "[gemma-2-2b] echo: hello there"
    assert {c.model for c in chunks} == {GEMMA}
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.choices and c.usage is None for c in chunks), "no usage chunk the client did not ask for"
    _assert_served_by_fallback(gw, raw)


def test_all_fallbacks_fail(gw: AiStack) -> None:
    gw.qwen.fault(status=503, message="qwen is down")
    gw.gemma.fault(status=503, message="gemma is down")
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw, QWEN)
    resp = err.value.response
    assert resp.status_code == 503
    assert resp.headers["x-ai-fallback-exhausted"] == "1"
    assert "x-ai-fallback-from" not in resp.headers
    assert resp.json()["error"]["message"] == "qwen is down", "the primary's own error reaches the client"
    assert [s["body"]["model"] for s in gw.gemma.requests()] == [GEMMA]  # the fallback was tried


def test_dropped_connection_falls_back_but_broken_stream_does_not(gw: AiStack) -> None:
    gw.qwen.fault(drop=True)  # closed without an answer: Envoy's own 503, before the first byte
    _assert_served_by_fallback(gw, chat(gw, QWEN))
    gw.reset()
    gw.qwen.fault(drop_after_chunks=3)  # breaks after its first bytes: cannot be retried transparently
    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=15)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps({"model": QWEN, "messages": HELLO, "stream": True}),
                     {"content-type": "application/json"})
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("x-ai-served-model")) == (200, QWEN)
        with pytest.raises(http.client.IncompleteRead):
            resp.read()
    finally:
        conn.close()
    assert gw.gemma.count() == 0


# ------------------------------------------------------------------------------------------------- mirror


@pytest.fixture(scope="module")
def mirror_stack(ai_launch: Launch) -> Iterator[AiStack]:
    qwen = '{"name": "qwen2-1-5b", "cluster": "qwen2-1-5b",'
    with ai_launch(replace={qwen: qwen + ' "mirror": {"model": "gemma-2-2b", "percent": 100},'}) as s:
        yield s


@pytest.fixture
def mirrored(mirror_stack: AiStack) -> AiStack:
    mirror_stack.reset()
    return mirror_stack


def test_mirror_copies_request_to_shadow(mirrored: AiStack) -> None:
    raw = chat(mirrored, QWEN)
    assert raw.headers["x-ai-served-model"] == QWEN
    assert raw.parse().choices[0].message.content == "[qwen2-1-5b] echo: hello there"
    assert wait_for(lambda: len(mirrored.gemma.requests()) == 1), "the shadow never got its copy"
    copy = mirrored.gemma.requests()[0]
    assert copy["headers"]["x-ai-mirror-of"] == QWEN
    assert (copy["body"]["model"], copy["body"]["messages"]) == (GEMMA, HELLO)
    assert "x-ai-mirror-of" not in mirrored.qwen.requests()[0]["headers"]


def test_slow_shadow_does_not_delay_client(mirrored: AiStack) -> None:
    mirrored.gemma.fault(delay_ms=2000)
    latencies = []
    for i in range(3):
        t0 = time.monotonic()
        raw = chat(mirrored, QWEN, [{"role": "user", "content": f"fast {i}"}])
        latencies.append(time.monotonic() - t0)
        assert raw.parse().model == QWEN
    print(f"client latency with a 2 s shadow: {[round(x * 1000, 1) for x in latencies]} ms")
    assert max(latencies) < 0.5
    assert wait_for(lambda: len(mirrored.gemma.requests()) == 3)
    assert all(c["headers"]["x-ai-mirror-of"] == QWEN for c in mirrored.gemma.requests())


def test_shadow_completes_after_client_is_done(mirrored: AiStack) -> None:
    # The shadow's request runs to completion long after the client's stream ended (it is not aborted).
    mirrored.gemma.fault(ttft_ms=1000)
    before = mirrored.gemma.finished()
    t0 = time.monotonic()
    text, _ = streamed_text(chat(mirrored, QWEN, stream=True))
    elapsed = time.monotonic() - t0
    assert text == "[qwen2-1-5b] echo: hello there"
    assert elapsed < 0.5, f"the client waited {elapsed:.2f} s for the shadow"
    assert wait_for(lambda: mirrored.gemma.finished().total() > before.total(), timeout=5)
    after = mirrored.gemma.finished()
    assert (after["stop"] - before["stop"], after["abort"] - before["abort"]) == (1, 0), after


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("body", "status", "code"), [
    (b'{"model": "qwen2-1-5b", "messages": [', 400, "invalid_json"),
    (b'[{"model": "qwen2-1-5b"}]', 400, "invalid_json"),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', 400, "missing_model"),
    (b'{"model": 42, "messages": []}', 400, "invalid_model"),
    (b'{"model": "", "messages": []}', 400, "invalid_model"),
    (b'{"model": "gpt-5", "messages": []}', 404, "model_not_found"),
    (b"", 400, "missing_body"),
])
def test_bad_input_gets_openai_error(gw: AiStack, body: bytes, status: int, code: str) -> None:
    r = gw.post("/v1/chat/completions", body, {"content-type": "application/json"})
    assert r.status == status, r
    assert r.headers["content-type"] == "application/json"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["type"]) == (code, "invalid_request_error")
    assert gw.qwen.count() == gw.gemma.count() == 0


def test_unknown_model_via_openai_client(gw: AiStack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(gw, "gpt-5")
    assert err.value.code == "model_not_found"
    assert "gpt-5" in err.value.message


@pytest.fixture(scope="module")
def small_body_stack(ai_launch: Launch) -> Iterator[AiStack]:
    # Envoy's own buffer limit (per_connection_buffer_limit_bytes) stays above the plugin's max_body_bytes.
    with ai_launch(replace={'"aliases": [': '"max_body_bytes": 4096, "aliases": ['}, buffer_limit=65536) as s:
        yield s


def _body(size: int) -> bytes:
    head = b'{"model": "qwen2-1-5b", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    return head + b"x " * ((size - len(head) - len(tail)) // 2) + tail


def test_body_over_limit_is_413(small_body_stack: AiStack) -> None:
    s = small_body_stack
    s.reset()
    fits, big = _body(4000), _body(5000)
    ok = s.post("/v1/chat/completions", fits, {"content-type": "application/json"})
    assert ok.status == 200 and ok.headers["x-ai-served-model"] == QWEN
    by_length = s.post("/v1/chat/completions", big, {"content-type": "application/json"})
    conn = http.client.HTTPConnection("127.0.0.1", int(s.url.rsplit(":", 1)[1]), timeout=15)
    try:  # no content-length: the plugin finds out while the body arrives
        conn.request("POST", "/v1/chat/completions", body=iter([big[:3000], big[3000:]]),
                     headers={"content-type": "application/json"}, encode_chunked=True)
        chunked = conn.getresponse()
        chunked_status, chunked_body = chunked.status, json.loads(chunked.read())
    finally:
        conn.close()
    assert by_length.status == chunked_status == 413
    assert by_length.json()["error"]["code"] == chunked_body["error"]["code"] == "request_too_large"
    assert s.qwen.count() == 1 and s.gemma.count() == 0


# ------------------------------------------------------------------------------------------- pass-through


def test_other_paths_and_methods_pass_through(gw: AiStack) -> None:
    get = gw.get("/v1/other?x=1")
    post = gw.post("/v1/other", {"model": GEMMA})
    put = send(gw.url + "/v1/chat/completions", "PUT", {"model": GEMMA, "messages": HELLO})
    assert (get.status, get.json()) == (404, {"detail": "Not Found"})  # the mock's own answers
    assert (post.status, post.json()) == (404, {"detail": "Not Found"})
    assert (put.status, put.json()) == (405, {"detail": "Method Not Allowed"})
    assert not any("x-ai-served-model" in r.headers for r in (get, post, put))
    seen = gw.qwen.requests("/v1/other") + gw.qwen.requests()
    assert [(s["method"], s["query"], s["body"]) for s in seen] == [
        ("GET", "x=1", ""), ("POST", "", {"model": GEMMA}), ("PUT", "", {"model": GEMMA, "messages": HELLO})]
    assert gw.gemma.count() == 0


# ------------------------------------------------------------------------------------------ configuration


def test_empty_config_passes_everything_through(ai_launch: Launch) -> None:
    with ai_launch(replace=plugin_config({})) as s:
        doc = {"model": QWEN, "messages": HELLO, "stream": True}
        r = s.post("/v1/chat/completions", doc)
        assert r.status == 200 and "x-ai-served-model" not in r.headers
        assert b'"usage"' not in r.body, "no usage was injected"
        assert [x["body"] for x in s.qwen.requests()] == [doc], "the body reached the default route unchanged"
        unknown = s.post("/v1/chat/completions", {"model": "gpt-5", "messages": HELLO})
        assert unknown.json()["error"]["type"] == "NotFoundError"  # the mock's 404, not the gateway's
        models = s.get("/v1/models").json()
        assert [m["owned_by"] for m in models["data"]] == ["vllm"]
        assert s.gemma.count() == 0


def test_invalid_config_fails_startup(ai_launch: Launch) -> None:
    bad = {'{"model": "gemma-2-2b", "weight": 50}': '{"model": "gemma2", "weight": 50}'}
    with pytest.raises(RuntimeError) as err, ai_launch(replace=bad):
        pass
    assert "invalid plugin configuration: aliases[0].targets[1].model: unknown model 'gemma2'" in str(err.value)


def test_demo_check(ai_gateway_wasm: object) -> None:
    if busy := busy_ports():
        pytest.fail(f"cannot run `python -m e2e.demo --check`: 127.0.0.1 port(s) {busy} in use "
                    "(a running demo or Envoy?); stop it and rerun", pytrace=False)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / p) for p in ("plugin", "build", ".")))
    r = subprocess.run([sys.executable, "-m", "e2e.demo", "--check"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    print(r.stdout)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
