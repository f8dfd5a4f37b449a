"""AI gateway benchmark: Envoy alone (a), Envoy + dist/ai-gateway.wasm (b), LiteLLM proxy (c); W1-W3.

Run from the repo root: ``.venv/bin/python bench/ai/run.py`` (``just bench``). Options:
``--only a,b`` / ``--only b,W1`` / ``--workloads W1,W2`` to run a subset (systems a, b, c and ``vm`` = VM start
and memory per VM; workloads W1-W3), ``--seconds 5 --warmup 1`` (upper bounds), ``--profile`` (perf samples
of the Envoy systems).

a and b are one Envoy each (``--concurrency 1``, pinned to CPU 0; wrk pinned to CPU 1) with two listeners:
the gateway and an upstream listener whose routes are ``direct_response``s (canned JSON, or the canned SSE
stream when the request carries ``x-bench-stream``). c is the LiteLLM proxy (one uvicorn worker, pinned to
CPU 0, from its own venv .venv-litellm/) in front of the same upstream listener, run alone in its own Envoy
that is pinned to CPU 0 too. A full run writes bench/results/ai-gateway.{md,json}; a subset writes
ai-gateway-partial.*, a profiled run ai-gateway-profile.* (see bench/ai/README.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench import profile  # noqa: E402
from e2e.envoy import Envoy, envoy_binary, free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
MODULE = REPO / "dist" / "ai-gateway.wasm"
RESULTS = REPO / "bench" / "results"
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
TARGET_RATIO = {"W1": 0.70, "W2": 0.70}
TARGET_P99_ADDED_MS = {"W1": 1.0}
TARGET_B_OVER_C = 10.0
VM_START_MAX_MS = 50.0
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

LITELLM_VENV = REPO / ".venv-litellm"
LITELLM_REQUIREMENTS = HERE / "requirements-litellm.txt"
# .pth files run code at every interpreter start (how the compromised litellm releases struck): allow only these.
LITELLM_PTH_ALLOWED = {"distutils-precedence.pth"}
# Nothing that phones home: no telemetry, the bundled model cost map and other data files instead of
# downloads, no feedback banner; no DATABASE_URL or REDIS_* (the environment is built from scratch, below).
LITELLM_ENV = {
    "LITELLM_LOG": "WARNING",  # also turns uvicorn's per-request access log off (Envoy a/b log nothing either)
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "true",
    "HF_HUB_OFFLINE": "1",
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
                                     "code": {"local": {"filename": str(MODULE)}}}}}}]
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


def litellm_config(api_base: str) -> dict[str, Any]:
    """LiteLLM proxy config equivalent to b's: model ``bench-model`` is three OpenAI-compatible deployments
    (one per key of b's pool) on the mock upstream, picked by simple-shuffle; a deployment is cooled down for
    30 s after 3 failures (b: 3 consecutive 5xx, 30 s); one retry on another deployment (b: one retry with
    another key on 401/403/429); then fallback to ``bench-fallback`` (b's config has no fallback model:
    fallbacks only act on failures, which the bench has none of). ``forward_client_headers_to_llm_api``
    passes the client's ``x-`` headers on, so ``x-bench-stream`` reaches the mock as it does through a and b.
    No master key, no database: like a and b, no client auth; usage is LiteLLM's default (its logging
    objects compute usage and cost of every response; with no database nothing is stored)."""
    def deployment(name: str, key: str) -> dict[str, Any]:
        return {"model_name": name, "litellm_params": {"model": "openai/bench-model", "api_base": api_base,
                                                       "api_key": key, "timeout": 30}}

    return {
        "model_list": [deployment("bench-model", k) for k in KEYS] + [deployment("bench-fallback", "sk-bench-fb")],
        "router_settings": {"routing_strategy": "simple-shuffle", "num_retries": 1,
                            "fallbacks": [{"bench-model": ["bench-fallback"]}],
                            "allowed_fails": 3, "cooldown_time": 30},
        "litellm_settings": {"telemetry": False, "request_timeout": 30},
        "general_settings": {"forward_client_headers_to_llm_api": True, "trusted_proxy_ranges": []},
    }


def litellm_config_yaml(api_base: str) -> str:
    import yaml  # in .venv (requirements-dev.txt)

    return yaml.safe_dump(litellm_config(api_base), sort_keys=False)


def litellm_version_pinned() -> str:
    for line in LITELLM_REQUIREMENTS.read_text().splitlines():
        if line.startswith("litellm[proxy]=="):
            return line.split("==", 1)[1].strip()
    raise RuntimeError(f"{LITELLM_REQUIREMENTS}: no litellm[proxy]== line")


def ensure_litellm() -> Path:
    """The ``litellm`` command of .venv-litellm/, (re)created from requirements-litellm.txt when missing or
    when that file changed (~1.5 min, ~700 MB)."""
    exe, stamp = LITELLM_VENV / "bin" / "litellm", LITELLM_VENV / ".requirements.sha256"
    want = hashlib.sha256(LITELLM_REQUIREMENTS.read_bytes()).hexdigest()
    if exe.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return exe
    log(f"installing LiteLLM {litellm_version_pinned()} into {LITELLM_VENV.name}/ (once; ~1.5 min) ...")
    for cmd in ([sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],
                [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 "--only-binary", ":all:", "-r", str(LITELLM_REQUIREMENTS)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    pth = {p.name for p in LITELLM_VENV.glob("lib/python*/site-packages/*.pth")} - LITELLM_PTH_ALLOWED
    if pth:
        shutil.rmtree(LITELLM_VENV, ignore_errors=True)
        raise RuntimeError(f"unexpected .pth files in the LiteLLM venv (removed it): {sorted(pth)}")
    stamp.write_text(want + "\n")
    return exe


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
def envoy_system(system: str, concurrency: int, cpus: set[int] | None) -> Iterator[Running]:
    admin, listen, upstream = free_port(), free_port(), free_port()
    t0 = time.monotonic()
    with Envoy(envoy_config(system, admin, listen, upstream), admin, concurrency) as envoy:
        pid = envoy.proc.pid  # type: ignore[union-attr]
        if cpus:
            m.pin(pid, cpus)
        yield Running(f"http://127.0.0.1:{listen}", [pid], time.monotonic() - t0, envoy)


@contextmanager
def litellm_system(cpus: set[int] | None, timeout: float = 180) -> Iterator[Running]:
    """The mock upstream alone in one Envoy, and the LiteLLM proxy in front of it, both pinned to ``cpus``."""
    exe = ensure_litellm()
    admin, upstream, port = free_port(), free_port(), free_port()
    with Envoy(envoy_config("mock", admin, 0, upstream), admin, 1) as mock:
        mock_pid = mock.proc.pid  # type: ignore[union-attr]
        if cpus:
            m.pin(mock_pid, cpus)
        work = Path(tempfile.mkdtemp(prefix="bench-litellm-"))
        cfg = work / "litellm.yaml"
        cfg.write_text(litellm_config_yaml(f"http://127.0.0.1:{upstream}/v1"))
        env = {"PATH": f"{exe.parent}:/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", **LITELLM_ENV}
        cmd = [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1",
               "--telemetry", "False"]
        pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
        t0 = time.monotonic()
        with open(work / "litellm.log", "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    preexec_fn=pre, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"litellm exited with {proc.returncode}:\n{_tail(work / 'litellm.log')}")
                if time.monotonic() - t0 > timeout:
                    raise RuntimeError(f"litellm not ready after {timeout} s:\n{_tail(work / 'litellm.log')}")
                try:
                    with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.2)
            yield Running(url, [proc.pid, mock_pid], time.monotonic() - t0, None,
                          {"log": str(work / "litellm.log")})
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(work, ignore_errors=True)


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def open_system(system: str, cpus: set[int] | None, concurrency: int = 1):  # -> ContextManager[Running]
    return litellm_system(cpus) if system == "c" else envoy_system(system, concurrency, cpus)


def smoke(base: str, system: str) -> dict[str, Any]:
    """One request per response shape: status 200, and the body complete (usage; a stream of ≥ 200 events with
    usage and [DONE]), so no system is timed while it answers something else."""
    out = {}
    for name, stream in (("json", False), ("sse", True)):
        body = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
        headers = {"content-type": "application/json", "x-mse-consumer": "bench"} | (
            {"x-bench-stream": "1"} if stream else {})
        req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(), headers)
        with urllib.request.urlopen(req, timeout=30) as r:
            data = r.read()
            text = data.decode(errors="replace")
            out[name] = {"status": r.status, "content_type": r.headers.get("content-type"), "bytes": len(data),
                         "tail": data[-120:].decode(errors="replace")}
        ok = r.status == 200 and '"usage"' in text
        if stream:
            out[name]["events"] = text.count("data: ")
            ok = ok and out[name]["events"] >= 200 and text.rstrip().endswith("data: [DONE]")
        if not ok:
            raise RuntimeError(f"system {system} {name}: {out[name]}")
    return out


def run_wrk(url: str, script: Path, seconds: float, connections: int, cpus: set[int] | None) -> m.WrkResult:
    """wrk -t1 on ``script`` + status.lua (status counts, bad bodies), optionally pinned to ``cpus``."""
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix=f"bench-{script.stem}-") as lua:
        lua.write(script.read_text() + "\n" + STATUS_LUA.read_text())
        lua.flush()
        cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", f"{WRK_TIMEOUT_S}s",
               "--latency", "-s", lua.name, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + WRK_TIMEOUT_S + 30,
                              preexec_fn=pre)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return m.parse_wrk(done.stdout, seconds)


def wasm_stats(envoy: Envoy) -> list[str]:
    try:
        text = envoy.admin("/stats?filter=wasmcustom")
    except Exception as e:
        return [f"(admin /stats failed: {e})"]
    return [line for line in text.splitlines() if line.strip()][:40]


def measure(system: str, args: argparse.Namespace, cpus: set[int] | None, wrk_cpus: set[int] | None) -> dict:
    """Every selected workload against one running ``system``: warm-up, wait until idle, measured run."""
    out: dict[str, Any] = {"name": SYSTEMS[system]}
    with open_system(system, cpus) as run:
        out["startup_s"] = run.startup_s
        out["smoke"] = smoke(run.url, system)
        for wl in args.workloads:
            script = WORKLOADS[wl][1]
            run_wrk(run.url, script, args.warmup, args.connections, wrk_cpus)
            if "rss_after_warmup_kib" not in out:
                out["rss_after_warmup_kib"] = m.rss_kib(run.rss_pid)
            waited = m.wait_idle(run.pids)  # requests the warm-up left in flight (c) must not eat into the run
            t0, cpu0 = time.monotonic(), sum(m.cpu_seconds(p) for p in run.pids)
            wrk0, busy0 = m.children_cpu_seconds(), m.busy_cpu_seconds()
            prof = profile.record(run.pids[0], args.seconds) if args.profile and run.envoy else nullcontext()
            with prof as perf_data:
                res = run_wrk(run.url, script, args.seconds, args.connections, wrk_cpus)
                cpu, wall = sum(m.cpu_seconds(p) for p in run.pids) - cpu0, time.monotonic() - t0
                busy = m.busy_cpu_seconds() - busy0
            wrk_cpu = m.children_cpu_seconds() - wrk0  # wrk (and perf, with --profile)
            r = {"wrk": res.as_dict(), "cpu_util": cpu / wall, "cpu_us_per_request": cpu / max(res.requests, 1) * 1e6,
                 "wrk_cpu_util": wrk_cpu / wall, "other_cpu_util": max(busy - cpu - wrk_cpu, 0) / wall,
                 "idle_wait_s": round(waited, 2)}
            if perf_data is not None:
                r["profile_us_per_request"] = {k: v * r["cpu_us_per_request"]
                                               for k, v in profile.shares(perf_data).items()}
            out[wl] = r
            log(f"{system} {wl}: {res.rps:,.0f} req/s p50 {res.p50_ms:.3f} ms p99 {res.p99_ms:.3f} ms, "
                f"{r['cpu_us_per_request']:.0f} µs CPU/req, errors {res.errors} ({errors_text(res.as_dict())})")
            m.wait_idle(run.pids)
            if wl in TARGET_P99_ADDED_MS and run.envoy:
                # Latency a request gets from the gateway itself: one request in flight, so no queueing behind
                # others (at 16 connections the worker is saturated and latency is mostly waiting in line).
                one = run_wrk(run.url, script, args.seconds, 1, wrk_cpus)
                r["one_connection"] = one.as_dict()
                log(f"{system} {wl} one connection: p50 {one.p50_ms:.3f} ms p99 {one.p99_ms:.3f} ms")
                m.wait_idle(run.pids)
        out["rss_after_runs_kib"] = m.rss_kib(run.rss_pid)
        if run.envoy and system == "b":
            out["wasm_stats"] = wasm_stats(run.envoy)
    return out


def vm_and_memory(r: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """VM start from the plugin's ``ready in`` log lines of an Envoy b with 2 workers (as bench/run.py) and with
    4; RSS after a warm-up at concurrency 1 (from the a and b runs, or measured here) and 4, unpinned, with (b)
    and without (a) the plugin; VM start in wasmtime for reference."""
    wl = args.workloads[0]
    out: dict[str, Any] = {"workload_for_warmup": wl}
    log("vm: Envoy b, concurrency 2 ...")
    with envoy_system("b", 2, None) as run:
        out["vm_start"] = m.vm_start_in_envoy(run.envoy.log_text, run.pids[0], 2)  # type: ignore[union-attr]
        out["vm_start"]["loadavg_1m"] = os.getloadavg()[0]
    for system in ("a", "b"):
        rss = {1: r.get(system, {}).get("rss_after_warmup_kib")}
        for conc in (1, VM_CONCURRENCY):
            if rss.get(conc) is not None:
                continue
            log(f"vm: Envoy {system}, concurrency {conc} ...")
            with envoy_system(system, conc, None) as run:
                if system == "b" and conc == VM_CONCURRENCY:
                    out["vm_start_c4"] = m.vm_start_in_envoy(run.envoy.log_text, run.pids[0], conc)  # type: ignore
                    out["vm_start_c4"]["startup_s"] = run.startup_s
                run_wrk(run.url, WORKLOADS[wl][1], args.warmup, args.connections, None)
                rss[conc] = m.rss_kib(run.rss_pid)
        out[f"{system}_rss_kib"] = {f"c{k}": v for k, v in rss.items()}
    out["rss_per_extra_vm_kib"] = m.rss_per_extra_vm(
        tuple(out["b_rss_kib"].values()), tuple(out["a_rss_kib"].values()), VM_CONCURRENCY - 1)  # type: ignore
    log("vm: wasmtime ...")
    out["wasmtime"] = m.vm_start_wasmtime(MODULE, json.dumps(PLUGIN_CONFIG))
    return out


# ---------------------------------------------------------------- report


def errors_text(w: dict[str, Any]) -> str:
    """Every kind of failure wrk saw in one cell, never hidden: non-2xx by status, timeouts, other socket
    errors, 2xx with an incomplete body."""
    parts = []
    if w["non_2xx"]:
        bad = {k: v for k, v in w.get("statuses", {}).items() if not 200 <= int(k) < 400}
        parts.append(f"{w['non_2xx']} non-2xx" + (" (" + ", ".join(f"{k} x{v}" for k, v in bad.items()) + ")"
                                                   if bad else ""))
    if w.get("timeouts"):
        parts.append(f"{w['timeouts']} timeouts (> {WRK_TIMEOUT_S} s)")
    if w["socket_errors"] - w.get("timeouts", 0):
        parts.append(f"{w['socket_errors'] - w.get('timeouts', 0)} socket errors")
    if w.get("bad_bodies"):
        parts.append(f"{w['bad_bodies']} incomplete 2xx bodies")
    return ", ".join(parts) or "0"


def has_errors(cell: dict[str, Any] | None) -> bool:
    w = (cell or {}).get("wrk", {})
    return bool(w and (w["non_2xx"] or w["socket_errors"] or w.get("bad_bodies")))


def results_table(r: dict[str, Any]) -> str:
    lines = ["| Workload | System | req/s | vs a | p50 / p99 ms | added over a: p50 / p99 ms | CPU µs/req | errors |",
             "|---|---|---:|---:|---|---|---:|---|"]
    for wl, (desc, _) in WORKLOADS.items():
        first = True
        a = r.get("a", {}).get(wl)
        for s in SYSTEMS:
            cell = r.get(s, {}).get(wl)
            if not cell:
                continue
            w = cell["wrk"]
            vs_a = added = "—"
            if a and s != "a":
                ratio = w["rps"] / a["wrk"]["rps"]
                vs_a = f"{ratio:.0%}" if ratio >= 0.1 else f"{ratio:.1%}"
                added = f"{w['p50_ms'] - a['wrk']['p50_ms']:+.2f} / {w['p99_ms'] - a['wrk']['p99_ms']:+.2f}"
            lines.append(f"| {f'{wl}: {desc}' if first else ''} | {s} | {w['rps']:,.0f} | {vs_a} "
                         f"| {w['p50_ms']:.2f} / {w['p99_ms']:.2f} | {added} | {cell['cpu_us_per_request']:,.0f} "
                         f"| {errors_text(w)} |")
            first = False
    return "\n".join(lines)


def target_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets; a result gets a * when a cell it uses had errors (then read the errors column)."""
    rows = []

    def add(target: str, measured: str, ok: bool, *cells: dict | None) -> None:
        star = "*" if any(has_errors(c) for c in cells) else ""
        rows.append({"target": target, "measured": measured, "result": ("PASS" if ok else "FAIL") + star})

    for wl in WORKLOADS:
        a, b, c = (r.get(s, {}).get(wl) for s in "abc")
        if a and b and wl in TARGET_RATIO:
            ratio = b["wrk"]["rps"] / a["wrk"]["rps"]
            implied = a["cpu_us_per_request"] / b["cpu_us_per_request"]  # what req/s would be, CPU-bound alone
            add(f"{wl}: b ≥ {TARGET_RATIO[wl]:.0%} of a's req/s (in brackets: implied by CPU µs/req)",
                f"{ratio:.0%} ({implied:.0%})", ratio >= TARGET_RATIO[wl], a, b)
        if a and b and wl in TARGET_P99_ADDED_MS:
            t = TARGET_P99_ADDED_MS[wl]
            if "one_connection" in a and "one_connection" in b:
                one = b["one_connection"]["p99_ms"] - a["one_connection"]["p99_ms"]
                p50 = b["one_connection"]["p50_ms"] - a["one_connection"]["p50_ms"]
                add(f"{wl}: p99 added by b ≤ {t:g} ms, one request in flight (in brackets: p50 added)",
                    f"{one:+.2f} ms ({p50:+.2f} ms)", one <= t, a, b)
            added = b["wrk"]["p99_ms"] - a["wrk"]["p99_ms"]
            conns = r.get("environment", {}).get("connections", "many")
            add(f"{wl}: p99 added by b ≤ {t:g} ms at {conns} connections (saturated: "
                "mostly queueing, see throughput)", f"{added:+.2f} ms", added <= t, a, b)
    for wl in WORKLOADS:
        b, c = (r.get(s, {}).get(wl) for s in "bc")
        if b and c:
            x = b["wrk"]["rps"] / max(c["wrk"]["rps"], 1e-9)
            add(f"{wl}: b ≥ {TARGET_B_OVER_C:g}x c's req/s", f"{x:,.1f}x", x >= TARGET_B_OVER_C, b, c)
    vm = r.get("vm", {}).get("vm_start")
    if vm:
        add(f"VM start in Envoy < {VM_START_MAX_MS:g} ms: median / max of {len(vm['vms'])} VMs "
            f"(concurrency {vm['concurrency']})", f"{vm['median_ms']:.1f} / {vm['max_ms']:.1f} ms",
            vm["max_ms"] < VM_START_MAX_MS)
    return rows


def info_rows(r: dict[str, Any]) -> list[tuple[str, str]]:
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    env, rows = r["environment"], []
    rows.append(("Module size (dist/ai-gateway.wasm)", f"{env['module_bytes'] / 2**20:.2f} MiB"))
    vm = r.get("vm")
    if vm:
        ve, v4, vw = vm["vm_start"], vm["vm_start_c4"], vm["wasmtime"]
        a, b, n = vm["a_rss_kib"], vm["b_rss_kib"], VM_CONCURRENCY
        rows += [
            (f"VM start in Envoy, concurrency {n} ({n} worker VMs start at once on {env['cpus']} CPUs): "
             "main-thread VMs / worker VMs, max",
             f"{max(x['ms'] for x in v4['vms'] if x['thread'] == 'main'):.1f} / "
             f"{max(x['ms'] for x in v4['vms'] if x['thread'] == 'worker'):.1f} ms"),
            ("Linear memory per VM at start (plugin's ready line)", mib(ve["linear_memory_kib"])),
            (f"RSS per extra plugin VM: ((b c{n} - b c1) - (a c{n} - a c1)) / {n - 1}",
             mib(vm["rss_per_extra_vm_kib"])),
            (f"Envoy RSS after a {vm['workload_for_warmup']} warm-up, concurrency 1 → {n}: b / a",
             f"{mib(b['c1'])} → {mib(b[f'c{n}'])} / {mib(a['c1'])} → {mib(a[f'c{n}'])}"),
            (f"VM start in wasmtime: instantiate + start, median of {vw['runs']} (reference)",
             f"{vw['median_ms']:.1f} ms (in-VM {vw['ready_in_median_ms'] or 0:.1f} ms)"),
            (f"Envoy start → LIVE with the plugin, concurrency {n} (V8 compiles the module)",
             f"{v4['startup_s']:.2f} s"),
        ]
    for s in SYSTEMS:
        if r.get(s):
            rows.append((f"{s}: start → ready; RSS after first warm-up → after the runs (concurrency 1)",
                         f"{r[s]['startup_s']:.2f} s; {mib(r[s]['rss_after_warmup_kib'])} → "
                         f"{mib(r[s]['rss_after_runs_kib'])}"))
    return rows


def notes(r: dict[str, Any]) -> list[str]:
    out = []
    vm = r.get("vm", {}).get("vm_start")
    if vm and vm["loadavg_1m"] > 1.0:
        out.append(f"VM start: load average {vm['loadavg_1m']:.1f} on {r['environment']['cpus']} CPUs when measured; "
                   "VM start is wall time inside the VM, and grows with the machine's load")
    for s in SYSTEMS:
        for wl in WORKLOADS:
            cell = r.get(s, {}).get(wl)
            if not cell:
                continue
            out += m.noise_notes(f"{s} {wl}", cell["cpu_util"], cell["wrk_cpu_util"], cell["other_cpu_util"])
    return out


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    pin = (f"pinned to CPU {env['gateway_cpus']}, wrk -t1 -c{env['connections']} pinned to CPU {env['wrk_cpus']}"
           if env["gateway_cpus"] else f"unpinned, wrk -t1 -c{env['connections']}")
    parts = [
        "# AI gateway benchmark (bench/ai/run.py)", "",
        f"{env['when']} · Envoy {env['envoy']} · LiteLLM {env['litellm']} · {env['cpus']} CPUs · load avg "
        f"{env['loadavg_1m_at_start']:.2f} at start · gateways {pin} · {env['seconds']:g} s runs after "
        f"{env['warmup']:g} s warm-up, wrk --timeout {WRK_TIMEOUT_S}s · one run per cell · {env['elapsed_s']:.0f} s "
        "in all.", "",
        *[f"- {s}: {d}" for s, d in SYSTEMS.items()],
        "- upstream: a direct_response listener (~1 KB JSON with usage, or 200 SSE events + usage + [DONE] in one "
        "~50 KB body); for a and b a second listener of the same Envoy (same worker thread), for c its own Envoy "
        "pinned to the same CPU. Its CPU is in every system's CPU per request.", "",
        results_table(r), "",
        "| Target | Measured | Result |", "|---|---|---|",
        *[f"| {x['target']} | {x['measured']} | {x['result']} |" for x in r["targets"]], "",
    ]
    if any(x["result"].endswith("*") for x in r["targets"]):
        parts += ["\\* a cell this result uses had errors: see the errors column.", ""]
    parts += ["| Measurement | Value |", "|---|---|", *[f"| {k} | {v} |" for k, v in info_rows(r)], ""]
    parts += [f"- note: {x}" for x in notes(r)]
    for s in SYSTEMS:
        prof = {wl: v["profile_us_per_request"] for wl, v in r.get(s, {}).items()
                if isinstance(v, dict) and "profile_us_per_request" in v}
        if prof:
            parts += [f"Profile of {s} (perf -F 499 during the measured run, which it slows a little; "
                      "Envoy CPU µs per request by bucket, see bench/profile.py):", ""]
            parts += [f"- {wl}: " + " / ".join(f"{k} {v:.0f}" for k, v in p.items()) for wl, p in prof.items()]
            parts.append("")
    return "\n".join(parts)


def split_tokens(values: list[str] | None) -> list[str]:
    return [t.strip() for v in values or [] for t in v.replace(",", " ").split() if t.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5, help="measured run per cell (≤ 5, default 5)")
    ap.add_argument("--warmup", type=float, default=1, help="warm-up before each measured run (≤ 1, default 1)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="perf-profile the Envoy systems (needs perf)")
    ap.add_argument("--only", nargs="+", metavar="PART",
                    help="systems (a, b, c, vm) and/or workloads (W1, W2, W3), comma- or space-separated: "
                         "--only a,b   --only b W1")
    ap.add_argument("--workloads", nargs="+", metavar="W", help="workloads, e.g. --workloads W1,W2")
    ap.add_argument("--out", type=Path, default=RESULTS, help="directory for the results (default bench/results)")
    ap.add_argument("--module", type=Path, help="the plugin module of b (default dist/ai-gateway.wasm): compare builds")
    args = ap.parse_args(argv)
    tokens = split_tokens(args.only) + split_tokens(args.workloads)
    systems = [t.lower() for t in tokens if t.lower() in PARTS]
    workloads = [t.upper() for t in tokens if t.upper() in WORKLOADS]
    unknown = [t for t in tokens if t.lower() not in PARTS and t.upper() not in WORKLOADS]
    if unknown or (args.workloads and len(workloads) != len(split_tokens(args.workloads))):
        ap.error(f"unknown part(s) {unknown or args.workloads}: systems are {', '.join(PARTS)}, "
                 f"workloads {', '.join(WORKLOADS)}")
    args.systems = [s for s in PARTS if s in systems] if systems else list(PARTS)
    args.workloads = [w for w in WORKLOADS if w in workloads] if workloads else list(WORKLOADS)
    args.partial = args.systems != list(PARTS) or args.workloads != list(WORKLOADS)
    if args.seconds > 5 or args.warmup > 1:
        ap.error("runs are bounded to ≤ 5 s + 1 s warm-up")
    return args


def main(argv: list[str] | None = None) -> None:
    global MODULE
    args = parse_args(argv)
    MODULE = (args.module or MODULE).resolve()
    started = time.monotonic()
    if ({"b", "vm"} & set(args.systems)) and not MODULE.exists():
        raise SystemExit(f"bench/ai: {MODULE} missing: run `.venv/bin/python build/pwbuild ai_gateway`")
    if args.profile and not profile.available():
        raise SystemExit("bench/ai: --profile needs perf")
    m.ensure_wrk()
    if "c" in args.systems:
        ensure_litellm()  # before any timing: the first run installs it
    ncpu = os.cpu_count() or 1
    cpus, wrk_cpus = ({0}, {1}) if ncpu >= 2 else (None, None)
    r: dict[str, Any] = {"environment": {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": ncpu, "machine": platform.machine(),
        "envoy": m.envoy_version(envoy_binary()), "litellm": litellm_version_pinned(),
        "loadavg_1m_at_start": os.getloadavg()[0],
        "gateway_cpus": sorted(cpus or []), "wrk_cpus": sorted(wrk_cpus or []),
        "connections": args.connections, "seconds": args.seconds, "warmup": args.warmup,
        "systems": args.systems, "workloads": args.workloads,
        "module_bytes": MODULE.stat().st_size if MODULE.exists() else 0,
        "response_bytes": {"json": len(canned_json()), "sse": len(canned_sse())}}}
    for s in SYSTEMS:
        if s in args.systems:
            log(f"system {s}: {SYSTEMS[s]}")
            r[s] = measure(s, args, cpus, wrk_cpus)
    if "vm" in args.systems:
        r["vm"] = vm_and_memory(r, args)
    r["targets"] = target_rows(r)
    r["environment"]["elapsed_s"] = round(time.monotonic() - started, 1)
    md = markdown(r)
    name = "ai-gateway" + ("-profile" if args.profile else "") + ("-partial" if args.partial else "")
    m.write_results(args.out, name, r, md)
    log(f"done in {r['environment']['elapsed_s']:.0f} s; wrote {args.out}/{name}.md and .json")


if __name__ == "__main__":
    main()
