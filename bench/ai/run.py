"""AI gateway overhead: Envoy without a plugin (a) vs Envoy + dist/ai-gateway.wasm (b), three workloads.

Run from the repo root: ``.venv/bin/python bench/ai/run.py [--seconds 5] [--warmup 1] [--profile]``.
Each system is one Envoy (``--concurrency 1``, pinned to CPU 0; wrk pinned to CPU 1) with two listeners:
the gateway and an upstream listener whose routes are ``direct_response``s (canned JSON, or the canned
SSE stream when the request carries ``x-bench-stream``). Writes bench/ai/results/latest.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench import profile  # noqa: E402
from e2e.envoy import Envoy, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
MODULE = REPO / "dist" / "ai-gateway.wasm"
WORKLOADS = {
    "W1": ("non-streaming, ~2 KB request, ~1 KB response with usage", HERE / "w1.lua"),
    "W2": ("streaming, 200 SSE events + usage + [DONE]", HERE / "w2.lua"),
    "W3": ("non-streaming, 64 KB request", HERE / "w3.lua"),
}
SYSTEMS = {"a": "Envoy, no plugin, fixed cluster", "b": "Envoy + ai-gateway (routing, metrics, key pool)"}
TARGET_RATIO = {"W1": 0.70, "W2": 0.70}
TARGET_P99_ADDED_MS = {"W1": 1.0}

PLUGIN_CONFIG = {
    "models": [{"name": "bench-model", "cluster": "llm",
                "api_keys": {"keys": ["sk-bench-1", "sk-bench-2", "sk-bench-3"], "selection": "round_robin",
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


def envoy_config(system: str, admin: int, listen: int, upstream: int) -> str:
    """JSON (valid YAML) so the canned bodies need no YAML quoting."""
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
                                     "code": {"local": {"filename": str(MODULE)}}}}}}]
    addr = lambda p: {"socket_address": {"address": "127.0.0.1", "port_value": p}}  # noqa: E731
    cfg = {
        "admin": {"address": addr(admin)},
        "static_resources": {
            "listeners": [
                {"name": "gateway", "address": addr(listen), "per_connection_buffer_limit_bytes": 10485760,
                 "filter_chains": [{"filters": [_hcm("gateway", routes, filters)]}]},
                {"name": "upstream", "address": addr(upstream),
                 "filter_chains": [{"filters": [_hcm("upstream", upstream_routes, [],
                                                     max_direct_response_body_size_bytes=1 << 20)]}]},
            ],
            "clusters": [{"name": "llm", "type": "STATIC", "connect_timeout": "1s",
                          "per_connection_buffer_limit_bytes": 10485760,
                          "load_assignment": {"cluster_name": "llm", "endpoints": [
                              {"lb_endpoints": [{"endpoint": {"address": addr(upstream)}}]}]}}],
        },
    }
    return json.dumps(cfg, indent=1)


@contextmanager
def gateway(system: str) -> Iterator[tuple[Envoy, str]]:
    admin, listen, upstream = free_port(), free_port(), free_port()
    with Envoy(envoy_config(system, admin, listen, upstream), admin, 1) as envoy:
        yield envoy, f"http://127.0.0.1:{listen}"


def smoke(base: str, system: str) -> dict[str, Any]:
    """One request per workload shape; checks status, content type, and (b) that the plugin saw it."""
    out = {}
    for name, stream in (("json", False), ("sse", True)):
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        headers = {"content-type": "application/json", "x-mse-consumer": "bench"} | (
            {"x-bench-stream": "1"} if stream else {})
        req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=10) as r:
            data = r.read()
            out[name] = {"status": r.status, "content_type": r.headers.get("content-type"), "bytes": len(data),
                         "tail": data[-120:].decode(errors="replace")}
        if r.status != 200:
            raise RuntimeError(f"system {system} {name}: {out[name]}")
    return out


def run_wrk(url: str, script: Path, seconds: float, connections: int, cpus: set[int] | None) -> m.WrkResult:
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=pre)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return m.parse_wrk(done.stdout, seconds)


def wasm_stats(envoy: Envoy) -> list[str]:
    try:
        text = envoy.admin("/stats?filter=wasmcustom")
    except Exception as e:
        return [f"(admin /stats failed: {e})"]
    return [line for line in text.splitlines() if line.strip()][:40]


def measure(system: str, args: argparse.Namespace, envoy_cpus: set[int] | None,
            wrk_cpus: set[int] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with gateway(system) as (envoy, base):
        pid = envoy.proc.pid  # type: ignore[union-attr]
        if envoy_cpus:
            m.pin(pid, envoy_cpus)
        out["smoke"] = smoke(base, system)
        for wl, (_, script) in WORKLOADS.items():
            if args.only and wl not in args.only:
                continue
            run_wrk(base, script, args.warmup, args.connections, wrk_cpus)
            t0, cpu0 = time.monotonic(), m.cpu_seconds(pid)
            prof = profile.record(pid, args.seconds) if args.profile else nullcontext()
            with prof as perf_data:
                res = run_wrk(base, script, args.seconds, args.connections, wrk_cpus)
                cpu, wall = m.cpu_seconds(pid) - cpu0, time.monotonic() - t0
            r = {"wrk": res.as_dict(), "envoy_cpu_util": cpu / wall,
                 "cpu_us_per_request": cpu / max(res.requests, 1) * 1e6}
            if perf_data is not None:
                r["profile_us_per_request"] = {k: v * r["cpu_us_per_request"]
                                               for k, v in profile.shares(perf_data).items()}
            out[wl] = r
            log(f"{system} {wl}: {res.rps:,.0f} req/s p50 {res.p50_ms:.3f} ms p99 {res.p99_ms:.3f} ms, "
                f"{r['cpu_us_per_request']:.0f} µs CPU/req, non-2xx {res.non_2xx}, errors {res.socket_errors}")
        if system == "b":
            out["wasm_stats"] = wasm_stats(envoy)
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| Workload | a req/s | b req/s | b/a | target | a p50 / p99 ms | b p50 / p99 ms | added p50 / p99 ms "
             "| target p99 added | a / b CPU µs/req |",
             "|---|---:|---:|---:|---|---|---|---|---|---|"]
    for wl, (desc, _) in WORKLOADS.items():
        a, b = r["a"].get(wl), r["b"].get(wl)
        if not a or not b:
            continue
        wa, wb = a["wrk"], b["wrk"]
        ratio = wb["rps"] / wa["rps"]
        t_ratio = TARGET_RATIO.get(wl)
        t_ratio_s = f"≥ {t_ratio:.0%} ({'PASS' if ratio >= t_ratio else 'FAIL'})" if t_ratio else "—"
        add50, add99 = wb["p50_ms"] - wa["p50_ms"], wb["p99_ms"] - wa["p99_ms"]
        t99 = TARGET_P99_ADDED_MS.get(wl)
        t99_s = f"≤ {t99:g} ms ({'PASS' if add99 <= t99 else 'FAIL'})" if t99 else "—"
        lines.append(
            f"| {wl}: {desc} | {wa['rps']:,.0f} | {wb['rps']:,.0f} | {ratio:.0%} | {t_ratio_s} "
            f"| {wa['p50_ms']:.2f} / {wa['p99_ms']:.2f} | {wb['p50_ms']:.2f} / {wb['p99_ms']:.2f} "
            f"| {add50:+.2f} / {add99:+.2f} | {t99_s} "
            f"| {a['cpu_us_per_request']:.0f} / {b['cpu_us_per_request']:.0f} |")
    return "\n".join(lines)


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    parts = [
        "# AI gateway overhead (bench/ai/run.py)", "",
        f"{env['when']} · {env['cpus']} CPUs · Envoy --concurrency 1 pinned to CPU {env['envoy_cpus']}, "
        f"wrk -t1 -c{env['connections']} pinned to CPU {env['wrk_cpus']} · {env['seconds']} s runs after "
        f"{env['warmup']} s warm-up · one run each.", "",
        "- a: " + SYSTEMS["a"], "- b: " + SYSTEMS["b"],
        "- upstream: a second listener in the same Envoy (same worker thread) answering with direct_response; "
        "its cost is in both systems' CPU per request.", "",
        table(r), "",
    ]
    for s in ("a", "b"):
        prof = {wl: v["profile_us_per_request"] for wl, v in r[s].items()
                if isinstance(v, dict) and "profile_us_per_request" in v}
        if prof:
            parts += [f"Profile of {s} (perf -F 499 during the measured run, which it slows a little; "
                      "Envoy CPU µs per request by bucket, see bench/profile.py):", ""]
            parts += [f"- {wl}: " + " / ".join(f"{k} {v:.0f}" for k, v in p.items()) for wl, p in prof.items()]
            parts.append("")
    notes = []
    for s in ("a", "b"):
        for wl in WORKLOADS:
            w = r[s].get(wl, {}).get("wrk")
            if w and (w["non_2xx"] or w["socket_errors"]):
                notes.append(f"- {s} {wl}: {w['non_2xx']} non-2xx, {w['socket_errors']} socket errors")
    if notes:
        parts += ["Notes:", "", *notes, ""]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--warmup", type=float, default=1)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="perf-profile system b (needs perf)")
    ap.add_argument("--only", nargs="*", help="workloads, e.g. W1 W2")
    args = ap.parse_args()
    if args.seconds > 5 or args.warmup > 1:
        raise SystemExit("bench/ai: runs are bounded to ≤ 5 s + 1 s warm-up")
    if not MODULE.exists():
        raise SystemExit(f"bench/ai: {MODULE} missing: run `.venv/bin/python build/pwbuild ai_gateway`")
    if args.profile and not profile.available():
        raise SystemExit("bench/ai: --profile needs perf")
    m.ensure_wrk()
    ncpu = os.cpu_count() or 1
    envoy_cpus, wrk_cpus = ({0}, {1}) if ncpu >= 2 else (None, None)
    r: dict[str, Any] = {"environment": {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": ncpu, "machine": platform.machine(),
        "envoy_cpus": sorted(envoy_cpus or []), "wrk_cpus": sorted(wrk_cpus or []),
        "connections": args.connections, "seconds": args.seconds, "warmup": args.warmup,
        "module_bytes": MODULE.stat().st_size, "request_bytes": {}, "response_bytes": {
            "json": len(canned_json()), "sse": len(canned_sse())}}}
    for s in ("a", "b"):
        log(f"system {s}: {SYSTEMS[s]}")
        r[s] = measure(s, args, envoy_cpus, wrk_cpus)
    md = markdown(r)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "profile" if args.profile else "latest"  # a profiled run does not replace the clean numbers
    (out / f"{name}.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / f"{name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
