"""Every metric name the gateway builds, in one place.

Envoy's ``stats_tags`` (wasm-config/envoy/*.yaml) turn the segments of these names into Prometheus labels, and the
Grafana dashboard (wasm-config/grafana) and tests/test_dashboards.py query the results: a name changes here or
nowhere. A segment taken from the configuration (model, cluster, route, endpoint names) goes through ``label``; a
consumer's segment is ``observe.consumer_label``'s, which also bounds how many there are.

- per request, per label set: ``route.<route>.upstream.<cluster>.model.<model>.consumer.<consumer>.metric.<name>``
  (``series_prefix`` + one of ``METRICS``)
- API-key pools: ``keypool.<model>.key.<fingerprint>.metric.<requests|failures|ejections|available>``
- endpoint pickers: ``picker.<cluster>.metric.<shed|unscored>``,
  ``picker.<cluster>.endpoint.<address>.metric.<picks|up|waiting|running|kv_cache_percent|itl_ms|scrape_failures>``
- consumers: ``aigw.consumer.<consumer>.reason.<reason>.rejected``, ``aigw.consumers.<store_unavailable|charge_failed>``
- the response cache: ``aigw.cache.<what>``, ``aigw.cache.model.<model>.<what>``
- content routing: ``aigw.content_routing.classifier.<ok|failed>``
"""

from __future__ import annotations

import re

from proxywasm import MetricType

_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:|\-/]")
MAX_LABEL = 64


def label(value: str) -> str:
    """A stat-name segment from the configuration: bounded, no spaces or control characters ('.' is kept for
    model and cluster names, which the operator chooses)."""
    return _UNSAFE.sub("_", value)[:MAX_LABEL] or "none"


# -- per request --

_COUNTER, _HISTOGRAM = int(MetricType.COUNTER), int(MetricType.HISTOGRAM)
METRICS = ((_COUNTER, "request_total"), (_COUNTER, "llm_duration_count"), (_COUNTER, "llm_service_duration"),
           (_COUNTER, "input_token"), (_COUNTER, "output_token"), (_COUNTER, "total_token"),
           (_COUNTER, "error_total"), (_COUNTER, "fallback_total"), (_COUNTER, "llm_first_token_duration"),
           (_COUNTER, "llm_stream_duration_count"), (_HISTOGRAM, "llm_first_token_latency"),
           (_HISTOGRAM, "llm_latency"), (_COUNTER, "usage_estimated_total"), (_COUNTER, "cancelled_total"),
           (_COUNTER, "estimated_token"), (_COUNTER, "attempt_failure_total"))


def series_prefix(route: str, cluster: str, model: str, consumer: str) -> str:
    """The names of one label set, but their last segment (``consumer``: a consumer_label already)."""
    return f"route.{label(route)}.upstream.{label(cluster)}.model.{label(model)}.consumer.{consumer}.metric."


# -- API-key pools --

def key_metric(model: str, fingerprint: str, name: str) -> str:
    return f"keypool.{label(model)}.key.{fingerprint}.metric.{name}"


# -- endpoint pickers --

def picker_metric(cluster: str, name: str) -> str:
    return f"picker.{label(cluster)}.metric.{name}"


def endpoint_metric(cluster: str, endpoint: str, name: str) -> str:
    return f"picker.{label(cluster)}.endpoint.{label(endpoint)}.metric.{name}"


# -- consumers --

STORE_UNAVAILABLE = "aigw.consumers.store_unavailable"  # decisions made without the store (fail open/closed)
CHARGE_FAILED = "aigw.consumers.charge_failed"  # charges the store did not take


def rejected_metric(consumer: str, reason: str) -> str:
    """``consumer``: a consumer_label already."""
    return f"aigw.consumer.{consumer}.reason.{reason}.rejected"


# -- the response cache --

def cache_metric(what: str) -> str:
    return "aigw.cache." + what


def cache_model_metric(model: str, what: str) -> str:
    return f"aigw.cache.model.{label(model)}.{what}"


# -- content routing --

def classifier_metric(ok: bool) -> str:
    return "aigw.content_routing.classifier." + ("ok" if ok else "failed")
