"""Bounded memory: 100,000+ mixed requests through the compiled AI gateway under wasmtime, and the VM's linear memory
does not grow once warmed up.

The mix, in a fixed cycle: plain chat and completions, embeddings, streaming (SSE split across chunks, usage injected
and stripped), the client's own usage request, weighted and sticky aliases, key-pool models, fallback through HTTP
callouts (503, then the fallback answers; a failed callout; all fallbacks failing), a mirror callout, a client that
goes away mid-stream, upstream 4xx/5xx without fallback, and the gateway's own answers (400 bad JSON, 404 unknown
model, 413, GET /v1/models, pass-through). Metric label cardinality is bounded (a fixed set of consumers), as a
deployment must keep it: names are interned for the VM's life by design, so unbounded labels grow memory on purpose.

Linear memory is a high-water mark (wasm memory never shrinks): it grows when CPython's heap inside the VM needs
more. Growth after warm-up therefore means memory kept per request (a leak) or unbounded fragmentation.

Warm-up: each request kind alone reaches its high-water mark within 5,000 requests; the whole mix takes longer to
settle (measured on 200,000 requests: 8.62 MiB at start, 9.06 MiB after 5k, 9.31 after 20k, 9.38 after 30k and
unchanged to 170k, one page more by 180k, unchanged to 200k). Since the JSON index (jsonscan.index) the peak is
lower but reached later: 8.94 MiB at start, 9.19 after 30k, 9.31 after 50k and unchanged to 100k. So the first
50,000 requests are the warm-up and the remaining 50,000 may add at most one 64 KiB page; the reading after 5k is
reported too.

Speed: the run uses ``proxywasm.testing.wasm_fast.FastWasmHost`` (wasmtime's raw calls, same module, HostState and
marshalling); ``test_fast_host_matches_wasm_host`` checks that both hosts agree on a mixed run.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from proxywasm.abi import LogLevel
from proxywasm.testing import Host, Stream
from proxywasm.testing.wasm import WasmHost
from proxywasm.testing.wasm_fast import FastWasmHost

from .conftest import wasm_path

PAGE = 65536
REQUESTS = 100_000
WARMUP = 50_000  # see the module docstring
EARLY = 5_000  # reported: the high-water mark is not reached yet

# ------------------------------------------------------------------------------------------------ the workload

KEYS = ["sk-mem-0001", "sk-mem-0002", "sk-mem-0003"]
GATEWAY_CONFIG: dict[str, Any] = {
    "models": [
        {"name": "qwen2-1-5b", "cluster": "qwen", "fallback": {"models": ["gemma-2-2b", "llama-3"]}},
        {"name": "gemma-2-2b", "cluster": "gemma", "upstream_model": "google/gemma-2-2b-it"},
        {"name": "llama-3", "cluster": "llama", "mirror": {"model": "gemma-2-2b", "percent": 100}},
        {"name": "gpt", "cluster": "provider", "api_keys": {"keys": KEYS, "consecutive_5xx": 0}},
    ],
    "aliases": [
        {"name": "canary", "targets": [{"model": "qwen2-1-5b", "weight": 50}, {"model": "gemma-2-2b", "weight": 50}]},
        {"name": "sticky", "sticky_header": "x-user-id",
         "targets": [{"model": "qwen2-1-5b", "weight": 1}, {"model": "llama-3", "weight": 1}]},
    ],
    "max_body_bytes": 4096,
    "consumer_header": "x-mse-consumer",
}


def _body(model: str, stream: bool = False, **extra: Any) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hello there"}], "stream": stream,
                       **extra}).encode()


def _headers(path: str = "/v1/chat/completions", **extra: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":path", path), (":authority", "gw"), ("content-type", "application/json"),
            ("authorization", "Bearer client"), *extra.items()]


CONSUMERS = ["team-a", "team-b", "team-c", "none-set"]
USAGE = b'{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"content":"hi"}}],' \
        b'"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}'
OK = [(":status", "200"), ("content-type", "application/json")]
SSE = [(":status", "200"), ("content-type", "text/event-stream")]
EVENT = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"tok"}}],' \
        b'"usage":null}\n\n'
SSE_BODY = EVENT * 6 + b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":6,' \
                       b'"total_tokens":11}}\n\ndata: [DONE]\n\n'
SSE_PARTS = [SSE_BODY[:50], SSE_BODY[50:333], SSE_BODY[333:]]  # cuts inside events
SSE_STRIPPED = EVENT * 6 + b"data: [DONE]\n\n"
PLAIN, STREAM = _body("qwen2-1-5b"), _body("qwen2-1-5b", stream=True)
ASKED = _body("gemma-2-2b", stream=True, stream_options={"include_usage": True})
BIG = _body("qwen2-1-5b", padding="x" * 5000)


def _routed(s: Stream, cluster: str) -> None:
    assert s.local_response is None and s.request_header("x-ai-upstream") == cluster, (cluster, s.local_response)


def _answer(s: Stream, headers: list[tuple[str, str]] = OK, body: bytes = USAGE) -> None:
    s.send_response_headers(headers)
    s.send_response_body(body, True)


def _answer_callouts(h: Host, status: int = 200) -> None:
    for c in h.callouts:
        h.respond_callout(c.token, status, OK[1:], USAGE)


def one_request(h: Host, i: int) -> str:
    """Request ``i`` of the fixed cycle; returns its kind. Every stream is completed as Envoy does."""
    kind = KINDS[i % len(KINDS)]
    consumer = ("x-mse-consumer", CONSUMERS[i % len(CONSUMERS)])
    s = h.http_stream()
    if kind == "models":
        s.send_request_headers([(":method", "GET"), (":path", "/v1/models"), (":authority", "gw")], True)
        assert s.local_response is not None and s.local_response.status == 200
    elif kind == "passthrough":
        s.send_request_headers(_headers("/healthz"))
        s.send_request_body(b"{", True)
        s.send_response_headers(OK)
        s.send_response_body(b"ok", True)
    else:
        path = "/v1/embeddings" if kind == "embeddings" else "/v1/completions" if kind == "completions" \
            else "/v1/chat/completions"
        extra = [consumer, ("x-user-id", f"user-{i % 97}")] if kind == "sticky" else [consumer]
        s.send_request_headers(_headers(path) + extra)
        body = BODIES[kind]
        s.send_request_body(body[: len(body) // 2], False)
        s.send_request_body(body[len(body) // 2 :], True)
        DRIVE[kind](h, s)
    s.complete()
    return kind


def _plain(h: Host, s: Stream) -> None:
    _routed(s, "qwen")
    _answer(s)


def _stream(h: Host, s: Stream) -> None:
    _routed(s, "qwen")
    s.send_response_headers(SSE)
    for i, part in enumerate(SSE_PARTS):
        s.send_response_body(part, i == len(SSE_PARTS) - 1)
    assert s.response_body == SSE_STRIPPED  # the usage chunk the gateway asked for is gone


def _asked(h: Host, s: Stream) -> None:
    _routed(s, "gemma")
    s.send_response_headers(SSE)
    for i, part in enumerate(SSE_PARTS):
        s.send_response_body(part, i == len(SSE_PARTS) - 1)
    assert s.response_body == SSE_BODY


def _fallback(h: Host, s: Stream) -> None:
    _routed(s, "qwen")
    s.send_response_headers([(":status", "503")])
    (call,) = h.callouts
    h.respond_callout(call.token, 200, OK[1:], USAGE)
    assert s.local_response is not None and s.local_response.status == 200


def _fallback_exhausted(h: Host, s: Stream) -> None:
    _routed(s, "qwen")
    s.send_response_headers([(":status", "502")])
    h.fail_callout(h.callouts[0].token)  # the first fallback: no answer at all
    h.respond_callout(h.callouts[0].token, 503, OK[1:], b"{}")  # the second: 503 too
    s.send_response_body(b'{"error":"bad gateway"}', True)
    assert s.response_header("x-ai-fallback-exhausted") == "2"


def _mirror(h: Host, s: Stream) -> None:
    _routed(s, "llama")
    (shadow,) = h.callouts
    assert shadow.cluster == "gemma"
    _answer(s)
    h.respond_callout(shadow.token, 200, OK[1:], USAGE)


def _alias(h: Host, s: Stream) -> None:
    assert s.local_response is None and s.request_header("x-ai-upstream") in ("qwen", "gemma", "llama")
    _answer(s)
    _answer_callouts(h)  # a sticky user on llama-3 is mirrored


def _keys(h: Host, s: Stream) -> None:
    _routed(s, "provider")
    assert s.request_header("authorization") in {f"Bearer {k}" for k in KEYS}
    _answer(s)


def _key_retry(h: Host, s: Stream) -> None:
    _routed(s, "provider")
    s.send_response_headers([(":status", "429"), ("retry-after", "1")])
    (call,) = h.callouts
    h.respond_callout(call.token, 200, OK[1:], USAGE)
    h.advance(1500)  # the key's Retry-After ends: it rejoins the rotation


def _upstream_error(h: Host, s: Stream) -> None:
    _routed(s, "gemma")
    _answer(s, [(":status", "500"), ("content-type", "application/json")], b'{"error":"boom"}')


def _client_gone(h: Host, s: Stream) -> None:
    _routed(s, "qwen")
    s.send_response_headers(SSE)
    s.send_response_body(SSE_PARTS[0], False)  # then the client resets: on_log without the end


def _gateway_error(h: Host, s: Stream) -> None:
    assert s.local_response is not None and s.local_response.status in (400, 404, 413)


DRIVE = {"plain": _plain, "completions": _plain, "embeddings": _plain, "stream": _stream, "asked": _asked,
         "fallback": _fallback, "exhausted": _fallback_exhausted, "mirror": _mirror, "canary": _alias,
         "sticky": _alias, "keys": _keys, "key_retry": _key_retry, "upstream_500": _upstream_error,
         "client_gone": _client_gone, "bad_json": _gateway_error, "unknown": _gateway_error, "too_large": _gateway_error}
BODIES = {"plain": PLAIN, "completions": json.dumps({"model": "qwen2-1-5b", "prompt": "hi"}).encode(),
          "embeddings": json.dumps({"model": "qwen2-1-5b", "input": ["a", "b"]}).encode(), "stream": STREAM,
          "asked": ASKED, "fallback": PLAIN, "exhausted": PLAIN, "mirror": _body("llama-3"), "canary": _body("canary"),
          "sticky": _body("sticky"), "keys": _body("gpt"), "key_retry": _body("gpt"),
          "upstream_500": _body("gemma-2-2b"), "client_gone": STREAM, "bad_json": b'{"model": "qwen2-1-5b",',
          "unknown": _body("gpt-9"), "too_large": BIG}
# the cycle: mostly ordinary traffic, every other kind regularly
KINDS = ["plain", "stream", "plain", "canary", "stream", "fallback", "plain", "keys", "completions", "asked",
         "mirror", "stream", "sticky", "bad_json", "plain", "embeddings", "upstream_500", "key_retry", "unknown",
         "stream", "client_gone", "exhausted", "models", "too_large", "passthrough"]


def start(host: Host) -> Host:
    host.state.shared.clock_ns = 1_800_000_000 * 10**9  # the emulator's clock is manual: same start, same run
    assert host.start(GATEWAY_CONFIG), host.logs
    host.state.log_level = int(LogLevel.WARN)
    return host


# ------------------------------------------------------------------------------------------------ tests


def test_fast_host_matches_wasm_host() -> None:
    """The fast host is the same VM: on one pass of the mix both hosts leave the same requests, replies, callouts,
    metrics and logs (random choices aside: aliases are left out)."""
    hosts = [start(WasmHost(wasm_path("ai_gateway"))), start(FastWasmHost(wasm_path("ai_gateway")))]
    seen: list[list[Any]] = [[], []]
    for n, h in enumerate(hosts):
        for i in range(len(KINDS) * 2):
            if KINDS[i % len(KINDS)] in ("canary", "sticky"):
                continue
            one_request(h, i)
        seen[n] = [sorted((m.name, m.value, m.samples) for m in h.state.shared.metrics.values()),
                   [(lv, m) for lv, m in h.logs if "ready in" not in m], sorted(h.state.shared.data.items())]
    assert seen[0] == seen[1]


def report(config: pytest.Config, line: str) -> None:
    """Show ``line`` in the run's output, with or without -s."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print("\n" + line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write("\n" + line + "\n")


def test_linear_memory_flat_over_100k_requests(record_property: Any, pytestconfig: pytest.Config) -> None:
    h = start(FastWasmHost(wasm_path("ai_gateway")))
    t0 = time.monotonic()
    checkpoints: list[tuple[int, int]] = [(0, h.memory_size())]
    warm = 0
    for i in range(REQUESTS):
        one_request(h, i)
        if i + 1 == EARLY:
            checkpoints.append((EARLY, h.memory_size()))
        if i + 1 == WARMUP:
            warm = h.memory_size()
        if (i + 1) % 10_000 == 0:
            checkpoints.append((i + 1, h.memory_size()))
            errors = [m for lv, m in h.logs if lv >= LogLevel.ERROR]
            assert not errors, errors[0]
            h.state.logs.clear()  # the emulator's list, on the host side (fallback and key logs add up)
    end = h.memory_size()
    elapsed = time.monotonic() - t0
    assert h.trap is None
    assert not h.state.streams and not h.callouts, "every stream ended, every callout answered"
    total = h.metric("route.none.upstream.qwen.model.qwen2-1-5b.consumer.team-a.metric.request_total")
    assert total > REQUESTS // len(KINDS) // len(CONSUMERS)
    line = " ".join(f"{n // 1000}k={m / 2**20:.2f}MiB" for n, m in checkpoints)
    early = checkpoints[1][1]
    summary = (f"linear memory over {REQUESTS} requests: start {checkpoints[0][1]} B, after {EARLY} {early} B, "
               f"after {WARMUP} (warm-up) {warm} B, end {end} B: growth over the last {REQUESTS - WARMUP} requests "
               f"{end - warm} B (since {EARLY}: {end - early} B); {elapsed:.1f} s, "
               f"{elapsed / REQUESTS * 1e6:.0f} us/request; {line}")
    report(pytestconfig, summary)
    for key, value in (("requests", REQUESTS), ("memory_start", checkpoints[0][1]), ("memory_5k", early),
                       ("memory_warm", warm), ("memory_end", end), ("seconds", round(elapsed, 1))):
        record_property(key, value)
    assert end - warm <= PAGE, summary
