"""The benchmark's systems a and b: Envoy alone and Envoy + ai-gateway over canned upstream answers (configs, start)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from e2e.envoy import Envoy, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
MODULE = REPO / "dist" / "ai-gateway.wasm"
WORKLOADS = {
    "W1": ("non-streaming, ~2 KB request, ~1 KB response with usage", HERE / "w1.lua"),
    "W2": ("streaming, 200 SSE events + usage + [DONE]", HERE / "w2.lua"),
    "W3": ("non-streaming, 64 KB request", HERE / "w3.lua"),
}
STATUS_LUA = HERE / "status.lua"
SYSTEMS = {"a": "Envoy, no plugin, fixed cluster (the limit)",
           "b": "Envoy + ai-gateway (routing, metrics, key pool)",
           "c": "LiteLLM proxy (routing, fallback, key pool), 1 uvicorn worker"}
PARTS = (*SYSTEMS, "vm")  # "vm": VM start, memory per VM (Envoy with and without the plugin at concurrency 4)
VM_CONCURRENCY = 4
WRK_TIMEOUT_S = 10  # wrk's default (2 s) is shorter than LiteLLM's W2 latency under 16 connections

KEYS = ["sk-bench-1", "sk-bench-2", "sk-bench-3"]
PLUGIN_CONFIG = {
    "models": [{"name": "bench-model", "cluster": "llm",
                "api_keys": {"keys": KEYS, "selection": "round_robin",
                             "eject_on": [401, 403, 429], "consecutive_5xx": 3, "cooldown_ms": 30000}}],
    "consumer_header": "x-mse-consumer",
    "inject_stream_usage": True,
    "strip_injected_usage": True,
    "ai_log": "filter_state",
    "metrics": True,
}


def log(msg: str) -> None:
    print(f"bench/ai: {msg}", file=sys.stderr, flush=True)


def canned_json() -> str:
    """~1 KB chat.completion with usage."""
    text = ("The quick brown fox jumps over the lazy dog. " * 15).strip()
    return json.dumps({
        "id": "chatcmpl-bench0000000000000000000001", "object": "chat.completion", "created": 1763700000,
        "model": "bench-model", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 512, "completion_tokens": 150, "total_tokens": 662},
    }, separators=(",", ":")) + "\n"


def canned_sse(events: int = 200) -> str:
    """``events`` delta chunks, a usage-only chunk, then ``data: [DONE]``."""
    head = {"id": "chatcmpl-bench0000000000000000000002", "object": "chat.completion.chunk",
            "created": 1763700000, "model": "bench-model", "system_fingerprint": "fp_bench"}
    out = []
    for i in range(events):
        delta = {"role": "assistant", "content": ""} if i == 0 else {"content": f" tok{i}"}
        finish = "stop" if i == events - 1 else None
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        out.append("data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n")
    usage = {**head, "choices": [], "usage": {"prompt_tokens": 512, "completion_tokens": events,
                                                 "total_tokens": 512 + events}}
    out.append("data: " + json.dumps(usage, separators=(",", ":")) + "\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out)


def _hcm(stat_prefix: str, routes: list[dict[str, Any]], filters: list[dict[str, Any]], **extra: Any) -> dict:
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": stat_prefix,
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}], **extra},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}


def envoy_config(system: str, admin: int, listen: int, upstream: int, module: Path = MODULE) -> str:
    """JSON (valid YAML) so the canned bodies need no YAML quoting. ``system`` "a" or "b": gateway + upstream
    listeners; "mock": the upstream listener alone (``listen`` unused), for system c."""
    ctype = lambda v: {"header": {"key": "content-type", "value": v},  # noqa: E731
                       "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
    upstream_routes = [
        {"match": {"prefix": "/", "headers": [{"name": "x-bench-stream", "present_match": True}]},
         "direct_response": {"status": 200, "body": {"inline_string": canned_sse()}},
         "response_headers_to_add": [ctype("text/event-stream"),
                                     {"header": {"key": "cache-control", "value": "no-cache"}}]},
        {"match": {"prefix": "/"},
         "direct_response": {"status": 200, "body": {"inline_string": canned_json()}},
         "response_headers_to_add": [ctype("application/json")]},
    ]
    if system == "a":
        routes = [{"match": {"prefix": "/"}, "route": {"cluster": "llm", "timeout": "30s"}}]
        filters: list[dict[str, Any]] = []
    else:
        routes = [{"name": "by_model", "match": {"prefix": "/", "headers": [{"name": "x-ai-upstream",
                                                                               "present_match": True}]},
                   "route": {"cluster_header": "x-ai-upstream", "timeout": "30s"}},
                  {"name": "default", "match": {"prefix": "/"}, "route": {"cluster": "llm", "timeout": "30s"}}]
        filters = [{"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "ai_gateway", "root_id": "ai_gateway", "allow_on_headers_stop_iteration": True,
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps(PLUGIN_CONFIG)},
                       "vm_config": {"vm_id": "ai_gateway", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(module)}}}}}}]
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}  # noqa: E731
    mock = {"name": "upstream", "address": addr(upstream),
            "filter_chains": [{"filters": [_hcm("upstream", upstream_routes, [],
                                                max_direct_response_body_size_bytes=1 << 20)]}]}
    if system == "mock":
        cfg = {"admin": {"address": addr(admin)}, "static_resources": {"listeners": [mock]}}
        return json.dumps(cfg, indent=1)
    cfg = {
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [
                {"name": "gateway", "address": addr(listen), "per_connection_buffer_limit_bytes": 10485760,
                 "filter_chains": [{"filters": [_hcm("gateway", routes, filters)]}]},
                mock,
            ],
            "clusters": [{"name": "llm", "type": "STATIC", "connect_timeout": "1s",
                          "per_connection_buffer_limit_bytes": 10485760,
                          "load_assignment": {"cluster_name": "llm", "endpoints": [
                              {"lb_endpoints": [{"endpoint": {"address": addr(upstream)}}]}]}}],
        },
    }
    return json.dumps(cfg, indent=1)


@dataclass
class Running:
    """A system under test: its URL, the processes whose CPU counts (the gateway's first) and whose RSS is
    reported (``rss_pid``), and for Envoy systems the Envoy (admin, log)."""
    url: str
    pids: list[int]
    startup_s: float
    envoy: Envoy | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rss_pid(self) -> int:
        return self.pids[0]


@contextmanager
def envoy_system(system: str, concurrency: int, cpus: set[int] | None, module: Path = MODULE) -> Iterator[Running]:
    admin, listen, upstream = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    with Envoy(envoy_config(system, admin, listen, upstream, module), admin, concurrency) as envoy:
        pid = envoy.proc.pid  # type: ignore[union-attr]
        if cpus:
            m.pin(pid, cpus)
        yield Running(f"http://127.0.0.1:{listen}", [pid], time.monotonic() - t0, envoy)
