"""Fallback as Envoy retries (wasm-config/envoy/ai-gateway-fallback.yaml) in a real Envoy, official openai client.

qwen2-1-5b falls back to gemma-2-2b then llama-3-8b through the aggregate cluster qwen2-1-5b-fallback and the
plugin's attempt filter; gemma streams one token every 20 ms. The fallback answer streams: its first content
chunk reaches the client about when gemma sends it, not after the whole generation.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.ai_stack import GEMMA, HELLO, QWEN, AiStack, running_ai_stack, send
from e2e.envoy import REPO, validate

LLAMA = "llama-3-8b"
CONFIG_PATH = "wasm-config/envoy/ai-gateway-fallback.yaml"
PORTS = {QWEN: 18101, GEMMA: 18102, LLAMA: 18103}
TOKEN_MS = 20
TOKENS = 30  # per answer: 0.6 s of generation
FIRST_BYTE_MS = 1000  # the per-attempt first-byte timeout in this test (10 s in the shipped config)
RUNS = 5  # TTFT: the median of this many requests
# Headers that differ between a direct answer and a fallback answer of the same model (README-fallback.md)
PER_REQUEST = {"date", "x-envoy-upstream-service-time", "x-ai-fallback-from"}


@pytest.fixture(scope="module")
def stack(ai_gateway_wasm: Any) -> Iterator[AiStack]:
    replace = {'"first_byte_timeout_ms": 10000': f'"first_byte_timeout_ms": {FIRST_BYTE_MS}'}
    with running_ai_stack(replace=replace, config=REPO / CONFIG_PATH, model_ports=PORTS) as s:
        yield s


@pytest.fixture
def gw(stack: AiStack) -> AiStack:
    stack.reset()
    stack.gemma.fault(token_delay_ms=TOKEN_MS)
    return stack


def _stream(gw: AiStack, model: str, test_id: str = "", **kw: Any) -> tuple[float, float, bytes, dict[str, str]]:
    """(time to the first content chunk, total time, the raw SSE body, response headers) of one streamed chat."""
    t0 = time.monotonic()
    first = 0.0
    body = b""
    with gw.client.chat.completions.with_streaming_response.create(
            model=model, messages=HELLO, stream=True, extra_headers={"x-test-id": test_id} if test_id else None,
            max_tokens=TOKENS, extra_body={"ignore_eos": True, **kw}) as resp:
        headers = dict(resp.headers)
        for chunk in resp.iter_bytes():
            if not first and b'"content":"' in chunk.replace(b'"content":""', b""):
                first = time.monotonic() - t0
            body += chunk
    return first, time.monotonic() - t0, body, headers


def _normalized(body: bytes) -> bytes:
    """The SSE body without what differs per request anyway (the completion id and creation time)."""
    return re.sub(rb'"created":\d+', b'"created":0', re.sub(rb'"id":"[^"]*"', b'"id":""', body))


def _failure_s(gw: AiStack, how: str) -> float:
    """How long the primary takes to fail, asked directly (connection refused: at once)."""
    if how == "refused":
        return 0.0
    if how == "timeout":
        return FIRST_BYTE_MS / 1000
    gw.qwen.fault(status=503)
    t0 = time.monotonic()
    r = send(f"{gw.qwen.url}/v1/chat/completions", "POST", {"model": QWEN, "messages": HELLO, "stream": True})
    assert r.status == 503
    return time.monotonic() - t0


def _fail_primary(gw: AiStack, how: str) -> None:
    if how == "503":
        gw.qwen.fault(status=503)
    elif how == "refused":
        gw.qwen.stop()
    else:  # no first byte within the per-attempt timeout
        gw.qwen.fault(delay_ms=FIRST_BYTE_MS * 3)


@pytest.mark.parametrize("how", ["503", "refused", "timeout"])
def test_fallback_streams(gw: AiStack, how: str) -> None:
    direct = [_stream(gw, GEMMA) for _ in range(RUNS)]
    failure_s = _failure_s(gw, how)
    _fail_primary(gw, how)
    try:
        fallback = [_stream(gw, QWEN, f"fb-{how}-{i}") for i in range(RUNS)]
    finally:
        if how == "refused":
            gw.qwen.restart()
    d_first, d_total = statistics.median(r[0] for r in direct), statistics.median(r[1] for r in direct)
    f_first, f_total = statistics.median(r[0] for r in fallback), statistics.median(r[1] for r in fallback)
    print(f"\n{how}: TTFT direct {d_first * 1000:.1f} ms, through fallback {f_first * 1000:.1f} ms "
          f"(ratio {f_first / d_first:.2f}; primary failure {failure_s * 1000:.1f} ms); "
          f"total direct {d_total * 1000:.0f} ms, fallback {f_total * 1000:.0f} ms")
    # The first content chunk comes while gemma is still generating (a buffered fallback: only at the end) ...
    assert f_first < f_total - 10 * TOKEN_MS / 1000
    # ... within gemma's own TTFT + the primary's failure + a margin for this shared 2-core machine.
    assert f_first <= d_first + failure_s + 0.02, (f_first, d_first, failure_s)
    _, _, d_body, d_headers = direct[0]
    _, _, f_body, f_headers = fallback[0]
    assert _normalized(f_body) == _normalized(d_body), "the fallback's answer is the direct answer, byte for byte"
    assert f_headers["x-ai-fallback-from"] == QWEN and f_headers["x-ai-served-model"] == GEMMA
    assert {k: v for k, v in f_headers.items() if k not in PER_REQUEST} == \
        {k: v for k, v in d_headers.items() if k not in PER_REQUEST}
    log = json.loads(gw.wait_ai_log({f"fb-{how}-0"})[f"fb-{how}-0"])
    # status 0: no response (refused; or cut by the per-attempt timeout, whose 504 is Envoy's own)
    assert log["attempts"] == [[QWEN, 503 if how == "503" else 0], [GEMMA, 200]]
    assert (log["served_model"], log["fallback_from"], log["model"]) == (GEMMA, QWEN, QWEN)
    assert log["output_tokens"] == TOKENS and log["complete"] is True  # gemma's tokens, counted once


def test_fallback_stream_outlives_every_budget(gw: AiStack) -> None:
    """1,000 tokens, 10 ms apart (10 s): far beyond the 1 s first-byte timeout; the stream is never cut."""
    gw.gemma.fault(token_delay_ms=10)
    gw.qwen.fault(status=503)
    text, n = "", 0
    stream = gw.client.with_options(timeout=60).chat.completions.create(
        model=QWEN, messages=HELLO, stream=True, max_tokens=1000, extra_body={"ignore_eos": True},
        extra_headers={"x-test-id": "long"})
    finish = None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            n += bool(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert (n, finish) == (1000, "length")
    assert text.startswith(f"[{GEMMA}] echo: hello there [{GEMMA}]")
    log = json.loads(gw.wait_ai_log({"long"})["long"])
    assert (log["output_tokens"], log["served_model"], log["complete"]) == (1000, GEMMA, True)


def test_every_attempt_fails(gw: AiStack) -> None:
    """The client gets the last attempt's error; the AI log and headers show each attempt."""
    for m, mock in gw.mocks.items():
        mock.fault(status=503, message=f"{m} is down")
    r = gw.post("/v1/chat/completions", {"model": QWEN, "messages": HELLO}, {"x-test-id": "exhausted"})
    assert r.status == 503
    assert r.headers["x-ai-fallback-exhausted"] == "2" and "x-ai-fallback-from" not in r.headers
    assert r.json()["error"]["message"] == f"{LLAMA} is down"
    assert [s["body"]["model"] for m in (QWEN, GEMMA) for s in gw.mocks[m].requests()] == [QWEN, GEMMA]
    assert [s["body"]["model"] for s in gw.mocks[LLAMA].requests()] == ["meta-llama/Meta-Llama-3-8B-Instruct"]
    log = json.loads(gw.wait_ai_log({"exhausted"})["exhausted"])
    assert log["attempts"] == [[QWEN, 503], [GEMMA, 503], [LLAMA, 503]]
    assert (log["served_model"], log["fallback_from"], log["status"]) == (QWEN, None, 503)


def test_higress_envoyfilter_patches_load_in_envoy(tmp_path: Any) -> None:
    """The EnvoyFilter's cluster, route and router patches of the Higress setup, in a stock Envoy bootstrap."""
    docs = list(yaml.safe_load_all((REPO / "wasm-config/higress/streaming-fallback.yaml").read_text()))
    (ef,) = [d for d in docs if d["kind"] == "EnvoyFilter"]
    patches = {p["applyTo"]: p for p in ef["spec"]["configPatches"]}
    aggregate = patches["CLUSTER"]["patch"]["value"]
    members = aggregate["cluster_type"]["typed_config"]["clusters"]
    router = patches["HTTP_FILTER"]["patch"]["value"]
    plugin_cluster = router["typed_config"]["upstream_http_filters"][0]["typed_config"]["config"]["vm_config"][
        "code"]["remote"]["http_uri"]["cluster"]
    route = {"match": {"prefix": "/"}, **patches["HTTP_ROUTE"]["patch"]["value"]}
    static = [{"name": n, "type": "STATIC", "connect_timeout": "1s", "load_assignment": {"cluster_name": n, "endpoints": [
        {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}}}}]}]}}
        for n in [*members, plugin_cluster]]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "t", "route_config": {"virtual_hosts": [{"name": "v", "domains": ["*"], "routes": [route]}]},
           "http_filters": [router]}
    bootstrap = {"static_resources": {
        "listeners": [{"name": "l", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 1}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [*static, aggregate]}}
    path = tmp_path / "envoyfilter.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    r = validate(path)
    assert r.returncode == 0, r.stdout + r.stderr


QWEN_KEYS, GEMMA_KEY = ("sk-qwen-one-7c1e", "sk-qwen-two-94ad"), "sk-gemma-only-5b20"


@pytest.fixture(scope="module")
def keyed(ai_gateway_wasm: Any) -> Iterator[AiStack]:
    """The same stack with key pools: two keys for qwen2-1-5b, one for gemma-2-2b."""
    replace = {'{"name": "qwen2-1-5b", "cluster": "qwen2-1-5b",':
               f'{{"name": "qwen2-1-5b", "cluster": "qwen2-1-5b", "api_keys": {{"keys": {json.dumps(QWEN_KEYS)}}},',
               '{"name": "gemma-2-2b", "cluster": "gemma-2-2b",':
               f'{{"name": "gemma-2-2b", "cluster": "gemma-2-2b", "api_keys": {{"keys": ["{GEMMA_KEY}"]}},'}
    with running_ai_stack(replace=replace, config=REPO / CONFIG_PATH, model_ports=PORTS) as s:
        yield s


def test_each_attempt_gets_its_models_key_and_accounts_it(keyed: AiStack) -> None:
    """A 401 on qwen's key is one more attempt, on gemma with gemma's key; qwen's key is ejected for what follows."""
    keyed.reset()
    keyed.qwen.fault(status=401, message="bad key")
    r = keyed.post("/v1/chat/completions", {"model": QWEN, "messages": HELLO}, {"x-test-id": "k401",
                                                                               "authorization": "Bearer client"})
    assert r.status == 200 and r.headers["x-ai-fallback-from"] == QWEN
    (q,) = keyed.qwen.requests()
    (g,) = keyed.gemma.requests()
    failed = q["headers"]["authorization"].removeprefix("Bearer ")
    assert failed in QWEN_KEYS
    assert g["headers"]["authorization"] == f"Bearer {GEMMA_KEY}", "gemma gets its own key, not qwen's or the client's"
    assert g["body"]["model"] == GEMMA
    log = json.loads(keyed.wait_ai_log({"k401"})["k401"])
    assert log["attempts"] == [[QWEN, 401], [GEMMA, 200]]
    keyed.reset()
    for _ in range(4):  # both workers: the ejected key is out of rotation for every request that follows
        assert keyed.post("/v1/chat/completions", {"model": QWEN, "messages": HELLO}).status == 200
    assert {s["headers"]["authorization"] for s in keyed.qwen.requests()} == {
        f"Bearer {k}" for k in QWEN_KEYS if k != failed}
    assert keyed.gemma.count() == 0


def test_a_model_without_a_usable_key_gets_no_one_elses(keyed: AiStack) -> None:
    """gemma's only key is out: its attempt goes without a credential, never with qwen's key or the client's."""
    keyed.reset()
    keyed.qwen.fault(status=503)
    keyed.gemma.fault(status=401, message="bad key")  # takes gemma's only key out (cooldown 30 s)
    first = keyed.post("/v1/chat/completions", {"model": QWEN, "messages": HELLO}, {"authorization": "Bearer client"})
    # llama answers (its mock does not know the upstream name meta-llama/...: 404, not a fallback status)
    assert (first.status, first.headers["x-ai-served-model"]) == (404, LLAMA)
    keyed.gemma.reset()
    r = keyed.post("/v1/chat/completions", {"model": QWEN, "messages": HELLO},
                   {"authorization": "Bearer client", "x-test-id": "nokey"})
    assert r.headers["x-ai-served-model"] == GEMMA  # the mock takes any credential, or none
    (g,) = keyed.gemma.requests()
    assert "authorization" not in g["headers"] and g["body"]["model"] == GEMMA
    assert json.loads(keyed.wait_ai_log({"nokey"})["nokey"])["attempts"] == [[QWEN, 503], [GEMMA, 200]]
