"""The dashboard and scrape config ask for metrics the plugin actually emits."""

from __future__ import annotations

import json
import re

from ai_gateway.metric_names import METRICS
from proxywasm import MetricType

from .conftest import REPO

DASHBOARD = json.loads((REPO / "wasm-config" / "grafana" / "ai-gateway-dashboard.json").read_text())
PREFIX = "route_upstream_model_consumer_metric_"


def emitted() -> set[str]:
    """Metric names the plugin defines (metric_names.METRICS); histograms show as <name>_bucket in Prometheus."""
    counters = {n for t, n in METRICS if t == MetricType.COUNTER}
    histograms = {n for t, n in METRICS if t == MetricType.HISTOGRAM}
    assert counters and histograms and len(counters) + len(histograms) == len(METRICS)
    return counters | {f"{h}_bucket" for h in histograms}


def test_every_dashboard_query_uses_emitted_metrics_and_labels() -> None:
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p["targets"]]
    exprs += [v["query"]["query"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    used = {m for e in exprs for m in re.findall(PREFIX + r"(\w+)", e)}
    assert used and used <= emitted(), used - emitted()
    labels = {lb for e in exprs for lb in re.findall(r"\b(ai_\w+)\b", e)}
    assert labels <= {"ai_route", "ai_cluster", "ai_model", "ai_consumer", "ai_reason"}
    # consumers' rejections: wasmcustom.aigw.consumer.<c>.reason.<r>.rejected (ai_gateway.consumers.rejected)
    others = {m for e in exprs for m in re.findall(r"\b(aigw_\w+)\{", e)}
    assert others <= {"aigw_consumer_reason_rejected"}
    titles = " ".join(p["title"] for p in DASHBOARD["panels"]).lower()
    for need in ("tokens/s", "first token", "latency", "error", "fallback", "consumer", "cancelled", "estimated"):
        assert need in titles


def test_stats_tags_match_the_label_names() -> None:
    yaml = (REPO / "wasm-config" / "envoy" / "ai-gateway.yaml").read_text()
    assert re.findall(r"tag_name: (ai_\w+)", yaml) == ["ai_route", "ai_cluster", "ai_model", "ai_consumer",
                                                       "ai_key_pool", "ai_key", "ai_consumer", "ai_reason"]


def test_prometheus_scrapes_envoy_admin() -> None:
    text = (REPO / "wasm-config" / "prometheus" / "prometheus.yml").read_text()
    assert "metrics_path: /stats/prometheus" in text and "127.0.0.1:19000" in text
