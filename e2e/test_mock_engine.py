"""The mock vLLM's engine load model (e2e/mock_vllm/engine.py): formulas, scheduling driven step by step, and the
server under load over HTTP (one timing test with generous bounds)."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from typing import Any

import pytest

from e2e.mock_vllm import (
    Engine,
    EngineConfig,
    Metrics,
    PrefixCache,
    decode_tokens_per_s,
    parse_lora_modules,
    serve,
    spawn,
    step_ms,
)
from e2e.test_mock_vllm import call, metrics

CFG = EngineConfig(decode_ms_per_token=10, decode_batch_cost=0.1, decode_kv_cost=0.5, prefill_ms_per_1k_tokens=20,
                   lora_load_ms=50, kv_capacity_tokens=10_000)


def engine(cfg: EngineConfig = CFG, lora: bool = False) -> Engine:
    return Engine(cfg, Metrics("m", cfg.max_num_seqs, max_loras=cfg.max_loras, lora=lora,
                               prefix_cache=cfg.prefix_cache), start=False)


def gauges(e: Engine) -> dict[str, float]:
    out = {}
    for line in e.metrics.render().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# ---------------------------------------------------------------------------------------------- formulas


def test_step_time_formula() -> None:
    assert step_ms(CFG, 0, 0, 0.0) == 0  # nothing to do: no step
    assert step_ms(CFG, 1, 0, 0.0) == pytest.approx(10)  # one decoding request: the base step
    assert step_ms(CFG, 5, 0, 0.0) == pytest.approx(10 * (1 + 0.1 * 4))  # +10% per extra request in the batch
    assert step_ms(CFG, 1, 0, 1.0) == pytest.approx(10 * 1.5)  # a full KV cache: +50%
    assert step_ms(CFG, 0, 1000, 0.0) == pytest.approx(10 + 20)  # prefill of 1000 tokens
    assert step_ms(CFG, 3, 500, 0.2, lora_loads=1) == pytest.approx(10 * (1 + 0.2 + 0.1) + 10 + 50)


def test_batching_raises_throughput_and_per_request_latency() -> None:
    batches = range(1, 33)
    tput = [decode_tokens_per_s(CFG, b) for b in batches]
    itl = [step_ms(CFG, b, 0, 0.0) for b in batches]
    assert all(a < b for a, b in itertools.pairwise(tput))  # more throughput with a bigger batch...
    assert all(a < b for a, b in itertools.pairwise(itl))  # ...while every request waits longer per token
    assert tput[0] == pytest.approx(100) and tput[-1] < 32 * 100 / 3  # ...and it saturates (memory-bound decode)
    assert decode_tokens_per_s(CFG, 8, kv_usage=0.9) < decode_tokens_per_s(CFG, 8)  # a fuller KV cache is slower


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        EngineConfig(max_num_seqs=16, max_num_batched_tokens=8)
    with pytest.raises(ValueError, match="decode_ms_per_token"):
        EngineConfig(decode_ms_per_token=-1)
    with pytest.raises(ValueError, match="max_loras"):
        EngineConfig(max_loras=0)
    with pytest.raises(TypeError):
        serve("m", load_model=True, no_such_knob=1)
    assert parse_lora_modules(["a", "b=/x", '{"name": "c", "path": "/y"}']) == {
        "a": "/adapters/a", "b": "/x", "c": "/y"}


def test_prefix_cache_reuses_whole_leading_blocks_and_evicts_the_least_recent() -> None:
    pc = PrefixCache(block_tokens=2, capacity_tokens=6)  # three blocks of two words
    text = "a b c d e"  # blocks (a b), (c d); "e" is no full block
    assert pc.cached_tokens(text, 5) == 0
    pc.insert(text)
    assert pc.blocks == 2
    assert pc.cached_tokens(text, 5) == 4
    assert pc.cached_tokens("a b c X e", 5) == 2  # the second block differs: only the first one is reused
    assert pc.cached_tokens("X b c d", 4) == 0  # a block counts only with everything before it
    assert pc.cached_tokens("a b c d", 4) == 3  # at least one token is always prefilled
    pc.insert("a b y z")  # (a b) shared, (y z) new: three blocks held
    pc.cached_tokens("a b c d", 4)  # (a b), (c d) used again: (y z) is now the least recent
    pc.insert("p q")
    assert pc.blocks == 3 and pc.cached_tokens("a b y z", 4) == 2 and pc.cached_tokens("a b c d", 4) == 3


# -------------------------------------------------------------------------------- scheduling, step by step


def test_requests_queue_when_max_num_seqs_run() -> None:
    e = engine(EngineConfig(max_num_seqs=2, max_num_batched_tokens=64))
    tickets = [e.submit(10, 3) for _ in range(3)]
    assert (e.metrics.running, e.metrics.waiting) == (0, 3)
    e.run_step()
    g = gauges(e)
    assert g['vllm:num_requests_running{model_name="m"}'] == 2 and g['vllm:num_requests_waiting{model_name="m"}'] == 1
    assert [t.generated for t in tickets] == [1, 1, 0]  # the prefill step gives the first token
    e.run_step()
    e.run_step()  # the first two have their 3 tokens and leave...
    assert [t.done for t in tickets] == [True, True, False] and tickets[2].generated == 0
    e.run_step()  # ...so the third is admitted
    assert tickets[2].generated == 1 and (e.metrics.running, e.metrics.waiting) == (1, 0)


def test_ttft_is_queue_wait_plus_chunked_prefill() -> None:
    cfg = EngineConfig(decode_ms_per_token=10, prefill_ms_per_1k_tokens=20, decode_kv_cost=0.5,
                       max_num_batched_tokens=2048, kv_capacity_tokens=8000)
    e = engine(cfg)
    t = e.submit(3000, 5)
    first = e.run_step()  # the first 2048 prompt tokens: no token yet
    assert t.generated == 0 and first == pytest.approx(step_ms(cfg, 0, 2048, 0.0))
    second = e.run_step()  # the rest of the prompt, with 2048 tokens already held in the KV cache
    assert t.generated == 1 and second == pytest.approx(step_ms(cfg, 0, 952, 2048 / 8000))
    assert e.metrics.kv_usage == pytest.approx(3001 / 8000)
    third = e.run_step()  # a decode step
    assert t.generated == 2 and third == pytest.approx(step_ms(cfg, 1, 0, 3001 / 8000))


def test_kv_cache_full_makes_requests_wait() -> None:
    e = engine(EngineConfig(kv_capacity_tokens=1000, max_num_seqs=8))
    a, b = e.submit(600, 100), e.submit(600, 100)  # 700 reserved each: only one fits
    e.run_step()
    assert (e.metrics.running, e.metrics.waiting) == (1, 1) and b.generated == 0
    assert gauges(e)['vllm:kv_cache_usage_perc{model_name="m"}'] == pytest.approx(601 / 1000)
    while not a.done:
        e.run_step()
    e.run_step()
    assert b.generated == 1


def test_a_request_larger_than_the_cache_runs_alone() -> None:
    e = engine(EngineConfig(kv_capacity_tokens=500))
    big, small = e.submit(600, 2), e.submit(10, 2)
    e.run_step()
    assert big.generated == 1 and small.generated == 0 and e.metrics.kv_usage == 1.0


def test_lora_slots_and_loads() -> None:
    cfg = EngineConfig(max_loras=1, lora_load_ms=50, decode_ms_per_token=10, prefill_ms_per_1k_tokens=0)
    e = engine(cfg, lora=True)
    a1, b1, base, a2 = e.submit(5, 3, "a"), e.submit(5, 3, "b"), e.submit(5, 3), e.submit(5, 3, "a")
    ms = e.run_step()  # a1, base and a2 run; b1 must wait for adapter a to leave the batch
    assert ms == pytest.approx(step_ms(cfg, 0, 15, 0.0, lora_loads=1))
    assert [t.generated for t in (a1, b1, base, a2)] == [1, 0, 1, 1]
    lora = [k for k in gauges(e) if k.startswith("vllm:lora_requests_info")]
    assert lora[-1] == 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="a",waiting_lora_adapters="b"}'
    usage = e.metrics.kv_usage
    assert usage == pytest.approx(3 * 6 / cfg.kv_capacity_tokens)
    assert e.run_step() == pytest.approx(step_ms(cfg, 3, 0, usage))  # a decode step, no load
    e.run_step()  # a1, base, a2 finish
    ms = e.run_step()  # b1 runs: adapter b replaces a (one slot)
    assert b1.generated == 1 and ms == pytest.approx(step_ms(cfg, 0, 5, 0.0, lora_loads=1))
    assert e.doc()["resident_loras"] == ["b"] and e.stats["lora_loads"] == 2


def test_prefix_cache_skips_prefill_of_a_seen_prompt() -> None:
    cfg = EngineConfig(prefix_cache=True, prefill_ms_per_1k_tokens=100)
    e = engine(cfg)
    text = "w " * 300  # 300 words: 18 full blocks of 16
    e.submit(300, 1, prompt_text=text)
    cold = e.run_step()
    e.submit(302, 1, prompt_text=text + "and more")  # same start, a longer prompt
    warm = e.run_step()
    assert cold == pytest.approx(step_ms(cfg, 0, 300, 0.0)) and warm == pytest.approx(step_ms(cfg, 0, 302 - 288, 0.0))
    g = gauges(e)
    assert g['vllm:prefix_cache_queries_total{model_name="m"}'] == 602
    assert g['vllm:prefix_cache_hits_total{model_name="m"}'] == 288


def test_time_per_output_token_observes_each_decoded_token_at_its_step() -> None:
    e = engine()
    e.submit(10, 3)
    e.submit(10, 3)
    first = e.run_step()  # both prompts prefilled: their first tokens, no inter-token time yet
    second = e.run_step()  # both decode a token
    g = gauges(e)
    assert g['vllm:time_per_output_token_seconds_count{model_name="m"}'] == 2
    assert g['vllm:time_per_output_token_seconds_sum{model_name="m"}'] == pytest.approx(2 * second / 1000)
    assert first > 0 and second == pytest.approx(step_ms(CFG, 2, 0, 22 / CFG.kv_capacity_tokens))  # 2 x (10 + 1) held


def test_lora_requests_info_keeps_earlier_label_sets_like_prometheus_client() -> None:
    m = Metrics("m", 8, max_loras=2, lora=True)
    m.set_lora(["a", "a"], [])
    time.sleep(0.01)
    m.set_lora(["a", "b"], ["c"])
    lines = [line for line in m.render().splitlines() if line.startswith("vllm:lora_requests_info")]
    series = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in lines}
    assert list(series) == [
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="",waiting_lora_adapters=""}',
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a",waiting_lora_adapters=""}',
        'vllm:lora_requests_info{max_lora="2",running_lora_adapters="a,b",waiting_lora_adapters="c"}']
    latest = max(series, key=series.__getitem__)  # what a scraper (e.g. the inference-extension EPP) takes
    assert 'running_lora_adapters="a,b"' in latest


# -------------------------------------------------------------------------------------------- over HTTP


def stream_chat(url: str, model: str, words: int, max_tokens: int) -> dict[str, Any]:
    """One streaming chat request; TTFT = first content byte."""
    import http.client
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"model": model, "messages": [{"role": "user", "content": "w " * words}], "max_tokens": max_tokens,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.monotonic()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    ttft, text, usage = None, "", None
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: {"):
            continue
        doc = json.loads(line[6:])
        if doc["choices"] and doc["choices"][0]["delta"].get("content"):
            ttft = ttft if ttft is not None else time.monotonic() - t0
            text += doc["choices"][0]["delta"]["content"]
        usage = doc.get("usage") or usage
    conn.close()
    return {"status": resp.status, "ttft": ttft, "e2e": time.monotonic() - t0, "text": text, "usage": usage}


def test_under_load_ttft_grows_with_the_queue() -> None:
    with serve("m", load_model=True, max_num_seqs=2, decode_ms_per_token=20, prefill_ms_per_1k_tokens=20,
               decode_batch_cost=0, decode_kv_cost=0) as s:
        alone = stream_chat(s.url, "m", 100, 20)
        assert alone["status"] == 200 and alone["usage"]["completion_tokens"] == 20
        assert alone["text"] == "".join((["[m]", " echo:"] + [" w"] * 100)[i % 102] for i in range(20))
        # alone: one prefill step (20 ms + 2 ms) then 19 decode steps of 20 ms
        assert 0.015 < alone["ttft"] < 0.3 and 0.35 < alone["e2e"] < 1.5
        results: list[dict[str, Any]] = []
        threads = [threading.Thread(target=lambda: results.append(stream_chat(s.url, "m", 100, 20)))
                   for _ in range(6)]
        for t in threads:
            t.start()
        deadline, peak = time.monotonic() + 3, 0.0
        while time.monotonic() < deadline and peak < 4:
            peak = max(peak, metrics(s.url)['vllm:num_requests_waiting{model_name="m"}'])
            time.sleep(0.02)
        for t in threads:
            t.join()
        ttfts = sorted(r["ttft"] for r in results)
        # 2 run at once (4 wait; up to 6 before the engine's next step admits two); the last two wait for two
        # rounds of ~0.4 s each
        assert 4 <= peak <= 6 and ttfts[0] < 0.3 and ttfts[-1] > 0.6 and ttfts[-1] < 5
        engine_doc = json.loads(call(s.url, "GET", "/mock/engine")[2])
        assert engine_doc["load_model"] and engine_doc["stats"]["finished"] == 7 and engine_doc["running"] == 0


def test_load_model_serves_every_answer_shape_and_adapters() -> None:
    with serve("m", load_model=True, lora_modules=["sql"], decode_ms_per_token=1) as s:
        status, _, body = call(s.url, "POST", "/v1/completions", {"model": "sql", "prompt": "a b", "max_tokens": 3})
        assert status == 200 and json.loads(body)["choices"][0]["text"] == "[sql] echo: a"
        status, _, body = call(s.url, "POST", "/v1/chat/completions",
                               {"messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "[m] echo: hi"
        assert call(s.url, "POST", "/v1/completions", {"model": "nope", "prompt": "x"})[0] == 404
        models = json.loads(call(s.url, "GET", "/v1/models")[2])["data"]
        assert [(m["id"], m["parent"]) for m in models] == [("m", None), ("sql", "m")]


def test_client_gone_aborts_the_request_in_the_engine() -> None:
    import http.client
    with serve("m", load_model=True, decode_ms_per_token=20) as s:
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
        body = {"prompt": "x", "max_tokens": 500, "ignore_eos": True, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(body), {"content-type": "application/json"})
        resp = conn.getresponse()
        resp.readline()
        conn.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and json.loads(call(s.url, "GET", "/mock/engine")[2])["running"]:
            time.sleep(0.05)
        doc = json.loads(call(s.url, "GET", "/mock/engine")[2])
        assert doc["running"] == 0 and doc["stats"]["aborted"] == 1


def test_cli_flags() -> None:
    proc = spawn("cli-load", 0, args=("--load-model", "--max-num-seqs", "3", "--kv-capacity-tokens", "9000",
                                      "--enable-lora", "--lora-modules", "a", "b=/x", "--max-loras", "2",
                                      "--prefix-cache"))
    try:
        doc = json.loads(call(proc.url, "GET", "/mock/engine")[2])
        assert doc["load_model"] and doc["config"]["max_num_seqs"] == 3 and doc["config"]["kv_capacity_tokens"] == 9000
        assert doc["config"]["max_loras"] == 2 and doc["config"]["prefix_cache"] is True
        text = call(proc.url, "GET", "/metrics")[2].decode()
        assert re.search(r'^vllm:lora_requests_info\{max_lora="2",running_lora_adapters="",'
                         r'waiting_lora_adapters=""\} \d', text, re.M)
        assert "vllm:prefix_cache_hits_total" in text
        assert [m["id"] for m in json.loads(call(proc.url, "GET", "/v1/models")[2])["data"]] == ["cli-load", "a", "b"]
    finally:
        assert proc.stop() == 0
