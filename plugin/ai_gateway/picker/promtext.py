"""The few model-server gauges the endpoint picker needs, read out of a Prometheus text exposition.

The model server protocol of the Gateway API inference extension: queued requests, running requests and
KV-cache usage, under vLLM's names (plus its LoRA info), SGLang's (``sglang:num_queue_reqs``,
``sglang:num_running_reqs``, ``sglang:token_usage``) or Triton TensorRT-LLM's
(``nv_trt_llm_request_metrics{request_type="waiting"|"scheduled"}``,
``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}``); the first set a page has wins.

A vLLM ``/metrics`` page is tens of kilobytes (mostly histograms); the picker needs four
metric families. Rather than tokenising every line in Python (slow inside the VM), each
family's samples are found with ``bytes.find`` (C speed) and only those lines are parsed.

Any input is safe: a malformed line, value (``NaN``, ``+Inf``, garbage) or label block is
skipped, work is bounded (lines, labels, samples per family), and a page without the queue
gauges is "not a model server's metrics page" (``None``), which the scraper counts as a failed scrape.
"""

from __future__ import annotations

import re

from proxywasm import record

WAITING = b"vllm:num_requests_waiting"
RUNNING = b"vllm:num_requests_running"
KV_CACHE = (b"vllm:kv_cache_usage_perc", b"vllm:gpu_cache_usage_perc")  # new name first (vLLM >= 0.10)
LORA = b"vllm:lora_requests_info"
ITL = (b"vllm:time_per_output_token_seconds", b"vllm:inter_token_latency_seconds")  # histograms: _sum, _count
SGLANG = (b"sglang:num_queue_reqs", b"sglang:num_running_reqs", b"sglang:token_usage")
TRT_REQUESTS = b"nv_trt_llm_request_metrics"  # request_type="waiting" | "scheduled" | ...
TRT_KV_BLOCKS = b"nv_trt_llm_kv_cache_block_metrics"  # kv_cache_block_type="fraction" | ...

MAX_SAMPLES = 64  # per family: vLLM has one series per engine
MAX_LINE = 16_384
MAX_ADAPTERS = 64
MAX_VALUE = 4096  # characters of a label value kept (adapter lists can be long)
_LABEL = re.compile(rb'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)', re.S)
_LABELS_END = re.compile(rb'(?:[^"}]|"(?:[^"\\]|\\.)*")*\}', re.S)  # up to the closing brace, quotes respected
_UNESCAPE = {b"\\\\": b"\\", b'\\"': b'"', b"\\n": b"\n"}


@record
class ServerMetrics:
    """One scrape of one model server."""

    waiting: float  # requests queued (sum over engines)
    running: float  # requests in the running batch (sum over engines)
    kv_cache: float  # KV-cache usage 0..1 (max over engines); 0 when not exported
    model: str  # the served base model (``model_name`` label), "" if unknown
    max_lora: int  # adapters that fit on the GPU at once; -1: no LoRA info
    running_adapters: tuple  # adapters loaded and serving
    waiting_adapters: tuple  # adapters requests wait for
    itl_sum: float = -1.0  # vllm:time_per_output_token_seconds_sum (seconds); -1: not exported
    itl_count: float = -1.0  # its _count


def _number(token: bytes) -> float | None:
    try:
        v = float(token)
    except ValueError:
        return None
    return v if v - v == 0.0 else None  # NaN and +-Inf are no use for picking


def _labels(block: bytes) -> dict[str, str] | None:
    """``a="x",b="y"`` -> dict; None if malformed."""
    out: dict[str, str] = {}
    pos, n = 0, len(block)
    while pos < n:
        if not block[pos:].strip():
            break
        m = _LABEL.match(block, pos)
        if m is None:
            return None
        value = m[2]
        if b"\\" in value:
            value = re.sub(rb"\\.", lambda e: _UNESCAPE.get(e[0], e[0][1:]), value)
        out[m[1].decode("ascii")] = value[:MAX_VALUE].decode("utf-8", "replace")
        pos = m.end()
    return out


def samples(text: bytes, name: bytes) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of each sample of the metric ``name`` (exactly that name, any labels)."""
    out: list[tuple[dict[str, str], float]] = []
    needle = b"\n" + name
    start = 0 if text.startswith(name) else text.find(needle) + 1  # 0: not found
    tries = 0
    while start > 0 or (tries == 0 and text.startswith(name)):
        tries += 1
        end = text.find(b"\n", start)
        end = len(text) if end < 0 else end
        sample = _sample(text, start + len(name), min(end, start + MAX_LINE))
        if sample is not None:
            out.append(sample)
        if len(out) >= MAX_SAMPLES or tries >= 4 * MAX_SAMPLES:
            break
        start = text.find(needle, end) + 1
    return out


def _sample(text: bytes, pos: int, end: int) -> tuple[dict[str, str], float] | None:
    if pos >= end:
        return None
    labels: dict[str, str] = {}
    if text[pos : pos + 1] == b"{":
        m = _LABELS_END.match(text, pos + 1, end)
        if m is None:
            return None
        parsed = _labels(text[pos + 1 : m.end() - 1])
        if parsed is None:
            return None
        labels, pos = parsed, m.end()
    elif text[pos : pos + 1] not in (b" ", b"\t"):
        return None  # a longer metric name that starts with ours
    fields = text[pos:end].split()
    if not fields or len(fields) > 2:  # value [timestamp]
        return None
    value = _number(fields[0])
    return None if value is None else (labels, value)


def _adapters(value: str) -> tuple:
    names = [a.strip() for a in value.split(",")[:MAX_ADAPTERS]]
    return tuple(a for a in names if a)


Samples = list[tuple[dict[str, str], float]]


def _having(found: Samples, label: str, value: str) -> Samples:
    return [s for s in found if s[0].get(label) == value]


def _queues(text: bytes) -> tuple[Samples, Samples, Samples] | None:
    """(waiting, running, KV-cache usage) samples under the first server's names the page has."""
    waiting, running = samples(text, WAITING), samples(text, RUNNING)
    if waiting and running:
        for name in KV_CACHE:
            kv = samples(text, name)
            if kv:
                return waiting, running, kv
        return waiting, running, []
    waiting, running = samples(text, SGLANG[0]), samples(text, SGLANG[1])
    if waiting and running:
        return waiting, running, samples(text, SGLANG[2])
    trt = samples(text, TRT_REQUESTS)
    waiting, running = _having(trt, "request_type", "waiting"), _having(trt, "request_type", "scheduled")
    if waiting and running:
        return waiting, running, _having(samples(text, TRT_KV_BLOCKS), "kv_cache_block_type", "fraction")
    return None


def parse(text: bytes) -> ServerMetrics | None:
    """The picker's view of one ``/metrics`` page; None if it has no queue gauges the picker knows."""
    queues = _queues(text)
    if queues is None:
        return None
    waiting, running, kv = queues
    max_lora, run_ad, wait_ad = -1, (), ()
    lora = samples(text, LORA)
    if lora:
        labels, _ = max(lora, key=lambda s: s[1])  # one series per adapter-set change; the value is its time
        cap = labels.get("max_lora", "")
        if cap.isascii() and cap.isdigit() and len(cap) <= 6:
            max_lora = int(cap)
            run_ad = _adapters(labels.get("running_lora_adapters", ""))
            wait_ad = _adapters(labels.get("waiting_lora_adapters", ""))
    itl_sum = itl_count = -1.0
    for name in ITL:
        total, count = samples(text, name + b"_sum"), samples(text, name + b"_count")
        if total and count:
            itl_sum, itl_count = max(0.0, sum(v for _, v in total)), max(0.0, sum(v for _, v in count))
            break
    return ServerMetrics(
        waiting=max(0.0, sum(v for _, v in waiting)),
        running=max(0.0, sum(v for _, v in running)),
        kv_cache=min(1.0, max(0.0, max(v for _, v in kv))) if kv else 0.0,
        model=running[0][0].get("model_name", ""),
        max_lora=max_lora, running_adapters=run_ad, waiting_adapters=wait_ad, itl_sum=itl_sum, itl_count=itl_count,
    )
