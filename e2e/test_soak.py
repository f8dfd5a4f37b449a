"""Soak with faults (issue "Reliability"): thousands of mixed requests through the AI gateway while its backends fail.

Envoy with 2 workers in front of three mock vLLM processes, each model falling back to the other two (SEQ,
max_attempts 3), the by_model route timing out after 1 s. While 6 client threads (the official ``openai`` client,
``max_retries=0``: the gateway, not the client, must absorb every failure) send 4,000 requests (at most 200 a
second) — chat and
completions, plain and streaming (always with ``stream_options.include_usage``), three models and an alias —
qwen answers 5xx in random windows, gemma now and then answers only after the route timeout, and llama is
SIGKILLed twice and restarted (see ``e2e/soak.py``, ``Chaos``, for the schedule and why it leaves every request a
working fallback, and why each kill drains first).

Then every client must have received a complete, correct 200 answer, and the gateway's numbers must match what the
clients received exactly: the token counters (per label and in total) equal the sums of the usage the clients were
given, request_total equals the number of requests, fallback_total the answers that carried x-ai-fallback-from,
error_total stays empty, and every request has its AI log line with the same usage.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from e2e.ai_stack import GEMMA, QWEN, Labels, wait_for
from e2e.soak import (
    ALIAS,
    FALLBACKS,
    FLAKY,
    KILLED,
    LLAMA,
    SLOW,
    Chaos,
    Result,
    SoakStack,
    plan,
    run_clients,
    running_soak_stack,
)

REQUESTS = 4000
THREADS = 6
# At most this many requests a second (>= 20 s in all): the kills are scheduled by progress and each takes ~3.5 s
# (the slow backend's requests drain, then 1.5 s down), so a faster run could end before the second kill lands.
MAX_RATE = 200
WEIGHTS = {QWEN: 30, GEMMA: 25, LLAMA: 25, ALIAS: 20}  # requested model (or alias) -> share
TOKENS = ("input_token", "output_token", "total_token")


def per_label(results: list[Result], value: Callable[[Result], int]) -> dict[Labels, int]:
    out: Counter[Labels] = Counter()
    for r in results:
        out[r.labels] += value(r)
    return {k: v for k, v in out.items() if v}


def observed(metrics: dict[str, dict[Labels, float]], name: str) -> dict[Labels, int]:
    return {k: int(v) for k, v in metrics.get(name, {}).items() if v}


def settled_metrics(soak: SoakStack, n: int) -> dict[str, dict[Labels, float]]:
    """The plugin's metrics once all ``n`` requests are counted (histograms reach the admin API at a stats flush,
    every 0.25 s here), plus one more flush so that nothing counted late can hide."""
    def counted() -> bool:
        m = soak.metrics()
        return all(sum(m.get(name, {}).values()) >= n for name in ("request_total", "llm_latency_count"))
    wait_for(counted, timeout=15)
    time.sleep(0.3)
    return soak.metrics()


def test_soak_with_faults(ai_gateway_wasm: Path) -> None:
    specs = plan(REQUESTS, seed=2026, model_weights=WEIGHTS)
    finished = 0
    lock = threading.Lock()

    def on_result(_: Result) -> None:
        nonlocal finished
        with lock:
            finished += 1

    with running_soak_stack() as soak:
        chaos = Chaos(soak, progress=lambda: finished / REQUESTS)
        t0 = time.monotonic()
        chaos.start()
        try:
            results = run_clients(soak.url, specs, THREADS, on_result, max_rate=MAX_RATE)
        finally:
            t_end = time.monotonic()
            chaos.stop()
        elapsed = t_end - t0
        ok = [r for r in results if r.error is None]
        failed = [r for r in results if r.error is not None]
        fallbacks = [r for r in ok if r.fallback_from]
        second_choice = [r for r in fallbacks if r.served == FALLBACKS[r.fallback_from][1]]
        by_primary = Counter(r.fallback_from for r in fallbacks)
        timeouts = soak.envoy_stat(f"cluster.{SLOW}.upstream_rq_timeout")
        refused = soak.envoy_stat(f"cluster.{KILLED}.upstream_cx_connect_fail")
        port = soak.url.rsplit(":", 1)[1]
        workers = {k.split(".")[-2]: v for k, v in soak.stack.envoy.stats(f"listener.127.0.0.1_{port}.worker_").items()
                   if k.endswith(".downstream_cx_total")}
        print(f"\nsoak: {len(results)} requests ({sum(s.stream for s in specs)} streams, "
              f"{sum(not s.chat for s in specs)} completions, {sum(s.model == ALIAS for s in specs)} via {ALIAS}) "
              f"from {THREADS} threads in {elapsed:.1f} s = {len(results) / elapsed:.0f} req/s; failed: {len(failed)}")
        print(f"  fallbacks taken (x-ai-fallback-from): {len(fallbacks)} {dict(by_primary)}, "
              f"{sum(r.spec.stream for r in fallbacks)} of them streams, {len(second_choice)} by the second choice")
        print(f"  faults: {chaos.flaky_windows} 5xx windows on {FLAKY}, {chaos.slow_faults} slow requests armed on "
              f"{SLOW} ({timeouts} Envoy upstream timeouts), {len(chaos.kills)} kills of {KILLED} "
              f"(down {[round(k['up_at'] - k['down_at'], 1) for k in chaos.kills]} s, {refused} refused connections)")
        print(f"  client connections per Envoy worker: {workers}")
        for r in failed[:20]:
            print(f"  FAILED {r.spec} at {r.t0 - t0:.2f}-{r.t1 - t0:.2f} s served={r.served} "
                  f"fallback_from={r.fallback_from}: {r.error}")

        # the faults happened as planned, while the clients were running
        assert not chaos.errors, chaos.errors
        assert len(chaos.kills) == 2, chaos.kills
        for k in chaos.kills:  # requests met the dead backend (connection refused) during each kill
            assert k["new_pid"] != k["pid"] and k["refused"] > 0 and t0 < k["down_at"] < t_end, (k, t0, t_end)
        assert timeouts > 0 and chaos.flaky_windows > 0
        assert set(by_primary) == {FLAKY, SLOW, KILLED}, by_primary  # each fault made the gateway fall back
        assert any(r.spec.stream for r in fallbacks)

        # zero failed requests: every answer complete and as the mock's rule says (model, text, usage)
        assert not failed, f"{len(failed)} of {len(results)} requests failed, the first: {failed[:5]}"

        # the gateway's numbers equal what the clients received
        metrics = settled_metrics(soak, len(results))
        client_usage = {name: sum(r.usage[i] for r in ok if r.usage) for i, name in enumerate(TOKENS)}
        metric_usage = {name: sum(observed(metrics, name).values()) for name in TOKENS}
        print(f"  tokens: clients received {client_usage}, metrics say {metric_usage}")
        assert all(r.usage for r in ok)
        assert metric_usage == client_usage
        for i, name in enumerate(TOKENS):
            assert observed(metrics, name) == per_label(ok, lambda r, i=i: r.usage[i]), name  # type: ignore[index]
        assert sum(observed(metrics, "request_total").values()) == len(results)
        assert observed(metrics, "request_total") == per_label(ok, lambda r: 1)
        assert observed(metrics, "fallback_total") == per_label(ok, lambda r: int(bool(r.fallback_from)))
        assert observed(metrics, "llm_stream_duration_count") == per_label(ok, lambda r: int(r.spec.stream))
        assert observed(metrics, "error_total") == {}, "the clients saw no error"

        # and so does the AI log of each request
        logs = soak.stack.wait_ai_log({r.spec.test_id for r in results}, timeout=10)
        for r in ok:
            doc = json.loads(logs[r.spec.test_id])
            got = (doc["model"], doc["served_model"], doc["fallback_from"], doc["status"], doc["stream"],
                   doc["complete"], (doc["input_tokens"], doc["output_tokens"], doc["total_tokens"]))
            assert got == (r.spec.model, r.served, r.fallback_from, 200, r.spec.stream, True, r.usage), (r, doc)
