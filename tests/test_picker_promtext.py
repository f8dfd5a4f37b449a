"""Reading vLLM's Prometheus text (picker.promtext): real pages, format corners, and hostile /metrics answers —
parsed on host CPython, and fed to the scraper on both hosts (the VM must never raise, the endpoint must be
marked down, and the gateway keeps serving)."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_gateway.picker.promtext import MAX_SAMPLES, parse, samples
from proxywasm import LogLevel

from .picker import EPS, config, page, picked, scrape_round

A, B, C = EPS

# A page as vLLM V1 writes it with two engines (data parallel): gauges per engine, the LoRA info series changes
# (one series per adapter set; the value is when that set appeared), the old gpu_cache name next to the new one.
VLLM_PAGE = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{reason="capacity"} 99.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.5
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.99
# TYPE vllm:lora_requests_info gauge
vllm:lora_requests_info{max_lora="4",running_lora_adapters="sql-lora, chat-lora",waiting_lora_adapters=""} 1.7e9
vllm:lora_requests_info{max_lora="4",running_lora_adapters="old",waiting_lora_adapters="x"} 1.6e9
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="meta-llama/Llama-3.1-8B-Instruct"} 12.0
"""


def test_real_vllm_page() -> None:
    m = parse(VLLM_PAGE)
    assert m is not None
    assert (m.waiting, m.running, m.kv_cache) == (1.0, 5.0, 0.5)  # sums over engines; KV: the fullest, new name
    assert m.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert (m.max_lora, m.running_adapters, m.waiting_adapters) == (4, ("sql-lora", "chat-lora"), ())


def test_old_vllm_kv_name_and_no_lora() -> None:
    text = b"vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:gpu_cache_usage_perc 0.7\n"
    m = parse(text)
    assert m is not None and m.kv_cache == 0.7 and m.max_lora == -1 and m.model == ""


@pytest.mark.parametrize(("text", "expect"), [
    (b"vllm:num_requests_running{a=\"1\"} 2\r\nvllm:num_requests_waiting{a=\"1\"} 3\r\n", (3.0, 2.0)),  # CRLF
    (b"vllm:num_requests_running 2 1700000000000\nvllm:num_requests_waiting 1", (1.0, 2.0)),  # timestamp; no EOL
    (b'vllm:num_requests_running{m="a}b\\"c,d=\\"e\\""} 4\nvllm:num_requests_waiting{,} 0\n', None),  # bad labels
    (b'vllm:num_requests_running{m="a}b\\"c"} 4\nvllm:num_requests_waiting{m="x",} 1\n', (1.0, 4.0)),
    (b"vllm:num_requests_running -3\nvllm:num_requests_waiting 1e1\n", (10.0, 0.0)),  # negative clamps to 0
    (b"vllm:num_requests_running NaN\nvllm:num_requests_waiting 1\n", None),  # NaN is no reading
    (b"vllm:num_requests_running +Inf\nvllm:num_requests_waiting 1\n", None),
    (b"vllm:num_requests_running 1 2 3\nvllm:num_requests_waiting 1\n", None),  # too many fields
    (b"vllm:num_requests_running\nvllm:num_requests_waiting 1\n", None),  # no value
    (b"vllm:num_requests_running_total 1\nvllm:num_requests_waiting 1\n", None),  # another metric's name
    (b"# vllm:num_requests_running 1\nvllm:num_requests_waiting 1\n", None),  # a comment
    (b"", None),
    (b"<html><body>502 Bad Gateway</body></html>", None),
])
def test_format_corners(text: bytes, expect: tuple[float, float] | None) -> None:
    m = parse(text)
    assert (None if m is None else (m.waiting, m.running)) == expect


def test_kv_clamped_and_lora_garbage_ignored() -> None:
    text = (b"vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 37\n"
            b'vllm:lora_requests_info{max_lora="-1",running_lora_adapters="a"} 5\n')
    m = parse(text)
    assert m is not None and m.kv_cache == 1.0 and m.max_lora == -1 and m.running_adapters == ()


def test_work_is_bounded() -> None:
    many = b"".join(b"vllm:num_requests_running{i=\"%d\"} 1\n" % i for i in range(10 * MAX_SAMPLES))
    assert len(samples(many, b"vllm:num_requests_running")) == MAX_SAMPLES
    decoys = b"vllm:num_requests_running_x 1\n" * 100_000 + b"vllm:num_requests_running 1\n"
    assert samples(decoys, b"vllm:num_requests_running") == []  # gives up after 4 x MAX_SAMPLES lines
    long_line = b"vllm:num_requests_running{a=\"" + b"x" * 5_000_000 + b"\"} 1\nvllm:num_requests_waiting 2\n"
    assert parse(long_line) is None  # the line is cut at MAX_LINE: no closing brace, no sample


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_bytes_never_raise(data: bytes) -> None:
    parse(data)
    parse(b"vllm:num_requests_running " + data + b"\nvllm:num_requests_waiting{" + data + b"\n")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(VLLM_PAGE)), st.integers(0, 64), st.binary(max_size=16))
def test_mutated_pages_never_raise(at: int, cut: int, junk: bytes) -> None:
    parse(VLLM_PAGE[:at] + junk + VLLM_PAGE[at + cut:])


HOSTILE_ANSWERS = [
    b"",
    b"\x00" * 1000,
    b"\xff\xfe" + "vllm:num_requests_running 1".encode("utf-16-le"),
    b"vllm:num_requests_running{" * 5000,
    b'vllm:num_requests_running{a="' + b"\\" * 10_001 + b'"} 1\n',
    b"vllm:num_requests_running 1e999999\nvllm:num_requests_waiting 0\n",
    b"vllm:num_requests_running 0x10\nvllm:num_requests_waiting 0\n",
    b"vllm:num_requests_running 1_000\nvllm:num_requests_waiting 0\n",
    "vllm:num_requests_running{m=\"\ud800\"} 1\n".encode("utf-8", "surrogatepass") + b"vllm:num_requests_waiting 0\n",
    b"vllm:num_requests_running 1\n" * 300_000,  # 8 MB, no waiting gauge
    b'vllm:num_requests_running 1\nvllm:num_requests_waiting 0\nvllm:lora_requests_info{max_lora="9999999"} 1\n'
    b'vllm:lora_requests_info{max_lora="2",running_lora_adapters="' + b"a," * 100_000 + b'"} 2\n',
]


def test_hostile_metrics_answers_on_both_hosts(make_host) -> None:
    h = make_host("ai_gateway")
    assert h.start(config())
    for i, body in enumerate(HOSTILE_ANSWERS):
        scrape_round(h, {A: body, B: page(0, 7), C: 503})
        rec = json.loads(h.shared_data("aigw.picker.pool"))
        assert picked(h) in (A, B), i  # the VM keeps serving
        assert rec[C][2] == 0
        assert not h.logs_at(LogLevel.ERROR), (i, h.logs_at(LogLevel.ERROR))
    scrape_round(h, {A: page(0, 0), B: page(0, 7), C: 503})
    assert picked(h) == A


SGLANG_PAGE = b"""# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"} 7.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"} 4.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen2.5-7B-Instruct",tp_rank="0"} 0.62
sglang:num_queue_reqs_total{model_name="Qwen/Qwen2.5-7B-Instruct"} 999
"""

TRITON_PAGE = b"""# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="context",version="1"} 1
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="scheduled",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 6
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="tokens_per",model="tensorrt_llm",version="1"} 64
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction",model="tensorrt_llm",version="1"} 0.375
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 3
"""


def test_sglang_and_triton_pages_are_read_under_their_names() -> None:
    """The inference extension's model server protocol: the same three gauges under SGLang's and Triton
    TensorRT-LLM's names (no LoRA info on either)."""
    sg = parse(SGLANG_PAGE)
    assert sg is not None
    assert (sg.waiting, sg.running, sg.kv_cache, sg.model, sg.max_lora) == (
        4.0, 7.0, 0.62, "Qwen/Qwen2.5-7B-Instruct", -1)
    trt = parse(TRITON_PAGE)
    assert trt is not None
    assert (trt.waiting, trt.running, trt.kv_cache, trt.max_lora) == (2.0, 6.0, 0.375, -1)
    # a page with vLLM's gauges is read as vLLM's, whatever else it has
    both = parse(VLLM_PAGE + SGLANG_PAGE)
    assert both is not None and (both.waiting, both.running) == (1.0, 5.0)
    # Triton requests without the waiting/scheduled series are not a usable page
    assert parse(TRITON_PAGE.replace(b'request_type="waiting"', b'request_type="other"')) is None
