"""Per-request observations: token usage, latency, the AI log record, and metrics.

Metric names follow Higress's AI statistics so Envoy ``stats_tags`` turn the name
segments into Prometheus labels (see wasm-config/envoy/stats-tags.yaml):

    route.<route>.upstream.<cluster>.model.<model>.consumer.<consumer>.metric.<name>

Counters: input_token, output_token, total_token, llm_service_duration (ms, sum),
llm_duration_count, llm_first_token_duration (ms, sum), llm_stream_duration_count,
request_total, error_total (5xx, no answer, or an answer cut off), fallback_total. Histograms (ms): llm_first_token_latency,
llm_latency.
"""

from __future__ import annotations

import json
import re

from proxywasm import Counter, Histogram, LogLevel, MetricCache, record
from proxywasm import hostcalls as hc

from .usage import Usage

_COUNTERS = MetricCache(Counter)
_HISTOGRAMS = MetricCache(Histogram)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:|\-/]")
MAX_LABEL = 64


def label(value: str) -> str:
    """A stat-name segment: bounded, no spaces or control characters ('.' is kept for model names)."""
    return _UNSAFE.sub("_", value)[:MAX_LABEL] or "none"


@record
class Observation:
    model: str  # as requested by the client (model or alias)
    served: str  # the model that answered
    route: str
    cluster: str
    consumer: str
    status: int
    stream: bool
    usage: Usage | None
    ttft_ms: int | None
    duration_ms: int
    fallback_from: str  # "" when no fallback happened
    complete: bool = True  # False: the response never reached its end (cut off, reset, client gone)

    def log_record(self) -> str:
        u = self.usage or Usage()
        return json.dumps({
            "model": self.model, "served_model": self.served, "route": self.route, "cluster": self.cluster,
            "consumer": self.consumer, "status": self.status, "stream": self.stream,
            "input_tokens": u.input, "output_tokens": u.output, "total_tokens": u.total,
            "usage_known": self.usage is not None, "ttft_ms": self.ttft_ms, "duration_ms": self.duration_ms,
            "fallback_from": self.fallback_from or None, "complete": self.complete,
        }, separators=(",", ":"))


def record_metrics(o: Observation) -> None:
    prefix = (f"route.{label(o.route)}.upstream.{label(o.cluster)}.model.{label(o.served)}"
              f".consumer.{label(o.consumer)}.metric.")
    counters = [("request_total", 1), ("llm_duration_count", 1), ("llm_service_duration", o.duration_ms)]
    if o.usage is not None:
        counters += [("input_token", o.usage.input), ("output_token", o.usage.output), ("total_token", o.usage.total)]
    if o.status >= 500 or o.status == 0 or not o.complete:
        counters.append(("error_total", 1))
    if o.fallback_from:
        counters.append(("fallback_total", 1))
    if o.ttft_ms is not None:
        counters += [("llm_first_token_duration", o.ttft_ms), ("llm_stream_duration_count", 1)]
        _HISTOGRAMS(prefix + "llm_first_token_latency").record(o.ttft_ms)
    _HISTOGRAMS(prefix + "llm_latency").record(o.duration_ms)
    for name, n in counters:
        _COUNTERS(prefix + name).increment(n)


def publish(o: Observation, metrics: bool, to_filter_state: bool, to_log: bool) -> None:
    """Record the AI log (filter state ``wasm.ai_log`` for access logs; plugin log) and metrics."""
    if to_filter_state or to_log:
        line = o.log_record()
        if to_filter_state:
            hc.set_property("ai_log", line)
        if to_log:
            hc.log(LogLevel.INFO, "ai_log " + line)
    if metrics:
        record_metrics(o)
