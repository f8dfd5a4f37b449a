"""Bounded memory in a real Envoy: after a warm-up, 10,000 mixed requests through the AI gateway (Envoy with one
worker, so one plugin VM takes them all) leave Envoy's memory flat.

The mix: chat and completions on both mock vLLM models, streaming (usage injected and stripped, or asked for by the
client), the weighted alias, fallback through a callout (qwen's mock answers 503 in one window of every hundred
requests: the gateway retries on gemma), the gateway's own 400 and 404 and /v1/models, and a pass-through request.

What is measured: Envoy's resident set (``VmRSS`` in /proc/<pid>/status) and Envoy's own heap (admin ``/memory``,
``allocated``). The plugin's linear memory is V8 memory of the Envoy process: every page it touches counts in the
RSS, so linear-memory growth shows there page for page. Envoy offers no view of a wasm VM's linear memory size (the
plugin logs it once, at VM start: ``python: ready in … ms, linear memory N KiB``; there is no periodic report), so
this test relies on RSS; tests/test_memory.py measures the linear memory itself, under wasmtime, over 100,000
requests. Also checked: no plugin error was logged and no VM was restarted.
"""

from __future__ import annotations

import http.client
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from e2e.ai_stack import CANARY, GEMMA, HELLO, QWEN, AiStack

WARMUP = 500
REQUESTS = 10_000
MAX_RSS_GROWTH = 10 * 2**20
READY = re.compile(r"python: ready in [0-9.]+ ms, linear memory (\d+) KiB")


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert m, status
    return int(m[1]) * 1024


def envoy_heap(stack: AiStack) -> int:
    return int(json.loads(stack.envoy.admin("/memory"))["allocated"])


class Client:
    """One keep-alive connection to the gateway (reopened if Envoy closes it)."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=15)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


def chat(model: str, **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": HELLO, "max_tokens": 8, **kw}


# (method, path, body, expected status, expected served model or None); the fallback window is handled in one_request
MIX: list[tuple[str, str, Any, int, str | None]] = [
    ("POST", "/v1/chat/completions", chat(QWEN), 200, QWEN),
    ("POST", "/v1/chat/completions", chat(GEMMA, stream=True), 200, GEMMA),
    ("POST", "/v1/chat/completions", chat(CANARY), 200, None),
    ("POST", "/v1/completions", {"model": QWEN, "prompt": "once upon a time", "max_tokens": 8}, 200, QWEN),
    ("POST", "/v1/chat/completions", chat(QWEN, stream=True, stream_options={"include_usage": True}), 200, QWEN),
    ("POST", "/v1/chat/completions", b'{"model": "qwen2-1-5b", "messages": [', 400, None),
    ("POST", "/v1/chat/completions", chat("gpt-9"), 404, None),
    ("GET", "/v1/models", None, 200, None),
    ("POST", "/v1/chat/completions", chat(GEMMA), 200, GEMMA),
    ("GET", "/health", None, 200, None),  # not the gateway's: passed through to the default route
]
FALLBACK_WINDOW = (80, 100)  # requests 80..99 of every hundred: qwen's mock answers 503


def one_request(stack: AiStack, client: Client, i: int, seen: Counter[str]) -> None:
    in_window = FALLBACK_WINDOW[0] <= i % 100 < FALLBACK_WINDOW[1]
    if i % 100 == FALLBACK_WINDOW[0]:
        stack.qwen.fault(status=503)
    elif i % 100 == FALLBACK_WINDOW[1] % 100:
        stack.qwen.reset()
    if in_window:
        status, headers, body = client.request("POST", "/v1/chat/completions", chat(QWEN, stream=i % 2 == 0))
        assert status == 200 and headers.get("x-ai-fallback-from") == QWEN, (status, headers, body[:300])
        assert headers.get("x-ai-served-model") == GEMMA
        seen["fallback"] += 1
        return
    method, path, payload, want, served = MIX[i % len(MIX)]
    status, headers, body = client.request(method, path, payload)
    assert status == want, (i, path, status, body[:300])
    if served is not None:
        assert headers.get("x-ai-served-model") == served, headers
    seen[f"{status}"] += 1


def test_envoy_memory_flat_under_mixed_traffic(ai_launch: Callable[..., AbstractContextManager[AiStack]],
                                                    record_property: Any) -> None:
    with ai_launch(concurrency=1) as stack:
        pid = stack.envoy.proc.pid  # type: ignore[union-attr]
        client = Client(stack.url)
        seen: Counter[str] = Counter()
        t0 = time.monotonic()
        try:
            for i in range(WARMUP):
                one_request(stack, client, i, seen)
            stack.qwen.reset()
            time.sleep(0.5)  # let stats flushes and the access log settle
            rss0, heap0 = rss_bytes(pid), envoy_heap(stack)
            starts = len(READY.findall(stack.envoy.log_text()))
            samples = [(0, rss0)]
            for i in range(REQUESTS):
                one_request(stack, client, WARMUP + i, seen)
                if (i + 1) % 1000 == 0:
                    samples.append((i + 1, rss_bytes(pid)))
            stack.qwen.reset()
        finally:
            client.close()
        time.sleep(0.5)
        rss1, heap1 = rss_bytes(pid), envoy_heap(stack)
        elapsed = time.monotonic() - t0
        log = stack.envoy.log_text()

    ready = READY.findall(log)
    curve = " ".join(f"{n}={r / 2**20:.1f}MiB" for n, r in samples)
    summary = (f"Envoy (1 worker) over {REQUESTS} mixed requests after {WARMUP} warm-up: RSS {rss0} -> {rss1} B "
               f"({(rss1 - rss0) / 2**20:+.2f} MiB), Envoy heap {heap0} -> {heap1} B ({(heap1 - heap0) / 2**20:+.2f} "
               f"MiB); plugin VMs started: {len(ready)}, linear memory at start {sorted(set(ready))} KiB; "
               f"answers {dict(seen)}; {elapsed:.1f} s; RSS every 1000: {curve}")
    print("\n" + summary)
    for key, value in (("rss_warm", rss0), ("rss_end", rss1), ("envoy_heap_warm", heap0), ("envoy_heap_end", heap1),
                       ("requests", REQUESTS)):
        record_property(key, value)
    assert seen["fallback"] >= REQUESTS // 100 * 15 and seen["400"] and seen["404"], seen
    assert ready, "the plugin's start line is missing from Envoy's log"
    assert len(ready) == starts, f"plugin VMs started during the run: {starts} before, {len(ready)} after"
    problems = [line for line in log.splitlines() if "unhandled exception" in line or "Traceback" in line
                or "internal plugin error" in line]
    assert not problems, problems[:5]
    assert rss1 - rss0 < MAX_RSS_GROWTH, summary
