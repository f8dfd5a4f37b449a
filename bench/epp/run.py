"""Load-aware endpoint picking vs plain round robin, under the same open-loop load.

Run from the repo root: ``.venv/bin/python bench/epp/run.py [--rates 8,15] [--seconds 30] [--warmup 4]``.
N mock vLLM processes (``e2e.mock_vllm`` with its engine load model on, LoRA adapters, identical settings) serve
one model. Two systems send them the same seeded request sequence (bench/epp/load.py) at each rate:

* rr: Envoy 1.40, a STATIC cluster with ROUND_ROBIN over the N servers, no plugin;
* epp: Envoy 1.40 + dist/ai-gateway.wasm with ``endpoint_picker`` on an ORIGINAL_DST cluster that connects to the
  ``x-gateway-destination-endpoint`` the plugin sets (wasm-config/envoy/ai-gateway-endpoint-picker.yaml's shape).

Each (system, rate) phase starts fresh mock processes, sends ``warmup`` s of unmeasured load, then ``seconds`` s
measured, and waits for every answer. Writes bench/results/endpoint-picker.{md,json}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.epp import load, report  # noqa: E402
from e2e.envoy import Envoy, envoy_binary, free_port  # noqa: E402
from e2e.mock_vllm import MockProcess, spawn  # noqa: E402

MODULE = REPO / "dist" / "ai-gateway.wasm"
RESULTS = REPO / "bench" / "results"
SYSTEMS = {"rr": "Envoy, STATIC cluster, ROUND_ROBIN over the servers, no plugin",
           "lr": "Envoy, STATIC cluster, LEAST_REQUEST (power of two choices on active requests), no plugin",
           "random": "Envoy, STATIC cluster, RANDOM, no plugin",
           "epp": "Envoy + ai-gateway endpoint_picker (vLLM metrics), ORIGINAL_DST cluster by "
                  "x-gateway-destination-endpoint"}
LB_POLICY = {"rr": "ROUND_ROBIN", "lr": "LEAST_REQUEST", "random": "RANDOM"}
# One pretend GPU per mock: 8 sequences, a 12k-token KV cache, 2 LoRA slots, automatic prefix caching (on by
# default in vLLM V1), see e2e/mock_vllm/engine.py. Workloads change a few knobs (WORKLOAD_ENGINE), or one pod's.
ENGINE = {"max_num_seqs": 8, "max_num_batched_tokens": 2048, "kv_capacity_tokens": 12000,
          "prefill_ms_per_1k_tokens": 25, "decode_ms_per_token": 15, "decode_batch_cost": 0.06,
          "decode_kv_cost": 0.5, "max_loras": 2, "lora_load_ms": 40, "prefix_cache": True}
WORKLOAD_ENGINE: dict[str, dict[str, Any]] = {
    # long contexts: a larger KV cache (and so prefix cache) per pod; prefill at ~13k tokens/s, as an 8B model on
    # one A100 (the default 40k tokens/s is kind to long prompts, which is all this workload has)
    "chat": {"kv_capacity_tokens": 48000, "prefill_ms_per_1k_tokens": 75},
    "lora": {"lora_load_ms": 150},  # a real adapter swap: weights copied to the GPU
}
# uneven: pod 0 decodes at half speed, pod 1 has half the KV cache
POD_ENGINE: dict[str, dict[int, dict[str, Any]]] = {
    "uneven": {0: {"decode_ms_per_token": 30}, 1: {"kv_capacity_tokens": 6000}}}
ADAPTERS = {"lora": load.LORA_ADAPTERS}  # per workload; the others use load.ADAPTERS
RATES = {"mixed": [14.0], "burst": [14.0], "uneven": [12.0], "chat": [18.0], "lora": [12.0]}  # req/s, default
PICKER: dict[str, Any] = {}  # endpoint_picker options beside "endpoints" (the plugin's defaults otherwise)
POOL = "llm-pool"
COUNTERS = {"picks", "scrape_failures", "shed", "unscored"}
HEADER = "x-gateway-destination-endpoint"


def log(msg: str) -> None:
    print(f"bench/epp: {msg}", file=sys.stderr, flush=True)


def engine_of(workload: str, pod: int) -> dict[str, Any]:
    return {**ENGINE, **WORKLOAD_ENGINE.get(workload, {}), **POD_ENGINE.get(workload, {}).get(pod, {})}


def mock_args(workload: str = "mixed", pod: int = 0) -> tuple[str, ...]:
    args = ["--load-model", "--lora-modules", *ADAPTERS.get(workload, load.ADAPTERS)]
    for k, v in engine_of(workload, pod).items():
        if v is True:
            args.append("--" + k.replace("_", "-"))
        elif v is not False:
            args += ["--" + k.replace("_", "-"), str(v)]
    return tuple(args)


def plugin_config(endpoints: list[str]) -> dict[str, Any]:
    """The base model declares the picker; the adapters on the same cluster share it (the shipped config's shape)."""
    models = [{"name": load.BASE_MODEL, "cluster": POOL, "endpoint_picker": {"endpoints": endpoints, **PICKER}}]
    models += [{"name": a, "cluster": POOL} for a in (*load.ADAPTERS, *load.LORA_ADAPTERS)]
    return {"models": models}


def envoy_config(system: str, admin: int, listen: int, endpoints: list[str], module: Path = MODULE) -> str:
    """JSON (valid YAML). rr: STATIC round robin; epp: the wasm filter and an ORIGINAL_DST cluster."""
    addr = lambda host, port: {"socket_address": {"address": host, "port_value": int(port)}}  # noqa: E731
    limits = {"thresholds": [{"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000,
                              "max_retries": 0}]}
    cluster: dict[str, Any] = {"name": POOL, "connect_timeout": "1s", "circuit_breakers": limits,
                               "per_connection_buffer_limit_bytes": 10485760}
    filters: list[dict[str, Any]] = []
    if system in LB_POLICY:
        cluster |= {"type": "STATIC", "lb_policy": LB_POLICY[system], "load_assignment": {
            "cluster_name": POOL, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": addr(*e.split(":"))}} for e in endpoints]}]}}
        route: dict[str, Any] = {"cluster": POOL, "timeout": "0s"}
    else:
        cluster |= {"type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED",
                    "original_dst_lb_config": {"use_http_header": True, "http_header_name": HEADER}}
        route = {"cluster_header": "x-ai-upstream", "timeout": "0s"}
        filters = [{"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "ai_gateway", "root_id": "ai_gateway", "allow_on_headers_stop_iteration": True,
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps(plugin_config(endpoints))},
                       "vm_config": {"vm_id": "ai_gateway", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": str(module)}}}}}}]
    hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                 "HttpConnectionManager",
        "stat_prefix": "gateway", "stream_idle_timeout": "300s",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": [*filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}}
    cfg = {"admin": {"address": addr("127.0.0.1", admin)}, "static_resources": {
        "listeners": [{"name": "gateway", "address": addr("127.0.0.1", listen),
                       "per_connection_buffer_limit_bytes": 10485760, "filter_chains": [{"filters": [hcm]}]}],
        "clusters": [cluster]}}
    return json.dumps(cfg, indent=1)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


@contextmanager
def mocks(ports: list[int], workload: str) -> Iterator[list[MockProcess]]:
    with ExitStack() as stack:
        procs = []
        for i, port in enumerate(ports):
            proc = spawn(load.BASE_MODEL, port, args=mock_args(workload, i), timeout=20)
            stack.callback(proc.stop)
            procs.append(proc)
            log(f"mock {i} on {proc.url}")
        yield procs


def smoke(listen: int, workload: str) -> None:
    """One short request per model through the gateway."""
    for model in (load.BASE_MODEL, *ADAPTERS.get(workload, load.ADAPTERS)):
        spec = load.Spec(0.0, model, "smoke", 2, 4, True, load.body(model, "smoke", "hello there", 4))
        (res,), _, _ = load.run_sync("127.0.0.1", listen, [spec], timeout=20)
        if not res.ok:
            raise RuntimeError(f"smoke request for {model} failed: {res.error}")


PREFIX = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total")


def prefix_counters(url: str) -> tuple[float, float]:
    """(queried, hit) prompt tokens of the mock's prefix cache so far."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    got = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0]
        if name in PREFIX:
            got[name] = float(line.rsplit(" ", 1)[1])
    return got.get(PREFIX[0], 0.0), got.get(PREFIX[1], 0.0)


def phase(system: str, listen: int, envoy: Envoy, ports: list[int], workload: str, rate: float,
          args: argparse.Namespace) -> dict[str, Any]:
    specs = load.WORKLOADS[workload](rate, args.seconds, args.warmup, args.seed)
    with mocks(ports, workload) as procs:
        smoke(listen, workload)
        for p in procs:
            urllib.request.urlopen(urllib.request.Request(p.url + "/mock/requests", method="DELETE"), timeout=5)
        pids = {"envoy": envoy.proc.pid, **{f"mock{i}": p.pid for i, p in enumerate(procs)}}  # type: ignore[union-attr]
        cpu0 = {k: m.cpu_seconds(pid) for k, pid in pids.items()}
        picker0 = envoy.stats("picker") if system == "epp" else {}
        prefix0 = [prefix_counters(p.url) for p in procs]
        busy0, wall0 = m.busy_cpu_seconds(), time.monotonic()
        log(f"{workload} / {system} @ {rate:g} req/s: {len(specs)} requests over {args.warmup + args.seconds:g} s")
        results, t0, client_cpu = load.run_sync("127.0.0.1", listen, specs)
        wall = time.monotonic() - wall0
        cpu = {k: (m.cpu_seconds(pid) - cpu0[k]) / wall for k, pid in pids.items()}
        cpu["client"] = client_cpu / wall
        busy = (m.busy_cpu_seconds() - busy0) / wall
        engines = [get_json(p.url + "/mock/engine") for p in procs]
        # counters (picks, scrape_failures, shed, unscored) as this phase's increase; gauges as they are now
        picker = {k.removeprefix("wasmcustom.picker."): v - picker0.get(k, 0) if k.rsplit(".", 1)[-1] in COUNTERS
                  else v for k, v in envoy.stats("picker").items()} if system == "epp" else {}
        counts = [get_json(p.url + "/mock/requests?path=/v1/chat/completions")["count"] for p in procs]
        prefix = [(q - q0, h - h0) for (q, h), (q0, h0) in zip((prefix_counters(p.url) for p in procs), prefix0,
                                                                  strict=True)]
    out = load.summarize(results, t0, args.warmup, args.seconds, load.KINDS[workload])
    queried = sum(q for q, _ in prefix)
    out["prefix_cache_hit_rate"] = sum(h for _, h in prefix) / queried if queried else None
    out["prefix_cache_hit_rate_by_server"] = [h / q if q else None for q, h in prefix]
    steps = sum(e["stats"]["steps"] for e in engines)
    out |= {"workload": workload, "system": system, "rate": rate, "wall_s": wall, "cpu_busy_cores": busy, "cpu_cores_by_process": cpu,
            "requests_per_server": counts, "picker_stats": picker,
            "engine": {"steps": steps, "step_ms": sum(e["stats"]["step_ms"] for e in engines),
                       "lag_ms": sum(e["stats"]["lag_ms"] for e in engines),
                       "max_lag_ms": max(e["stats"]["max_lag_ms"] for e in engines),
                       "lora_loads": sum(e["stats"]["lora_loads"] for e in engines)}}
    log(f"{workload} / {system} @ {rate:g}: {out['req_per_s']:.2f} req/s, TTFT p50/p90/p99 "
        f"{report.ms(out['ttft_p50'])}/{report.ms(out['ttft_p90'])}/{report.ms(out['ttft_p99'])} ms, "
        f"errors {out['errors']}, CPU busy {busy:.2f} cores, per server {counts}, prefix-cache hits "
        f"{out['prefix_cache_hit_rate'] or 0:.0%}")
    return out


def run_system(system: str, ports: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    admin, listen = free_port(), free_port()
    endpoints = [f"127.0.0.1:{p}" for p in ports]
    cfg = envoy_config(system, admin, listen, endpoints, Path(args.module))
    with Envoy(cfg, admin, concurrency=1, log_level="warning") as envoy:
        return [phase(system, listen, envoy, ports, w, rate, args) for w in args.workloads for rate in rates(args, w)]


def rates(args: argparse.Namespace, workload: str) -> list[float]:
    return args.rate_of.get(workload, args.rates)


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO, timeout=30).stdout.strip()


def sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def envoy_version() -> str:
    done = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30)
    text = done.stdout.strip().split("version:")[-1].strip()
    return text.split("/")[1] if "/" in text else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=lambda s: [w for w in s.split(",") if w],
                    default=list(load.WORKLOADS), help=f"of {', '.join(load.WORKLOADS)} (default: all)")
    ap.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=None,
                    help="total request rates, req/s, for every workload (default: RATES, per workload)")
    ap.add_argument("--seconds", type=float, default=20, help="measured seconds per phase")
    ap.add_argument("--warmup", type=float, default=5, help="unmeasured seconds of load before each phase")
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--systems", default="rr,lr,random,epp")
    ap.add_argument("--module", default=str(MODULE), help="the ai-gateway module for epp")
    ap.add_argument("--picker", type=json.loads, default={}, help='endpoint_picker options, JSON (e.g. \'{"weights": {"prefix": 6}}\')')
    ap.add_argument("--note", default="", help="a line for the report (e.g. where --module was built from)")
    ap.add_argument("--out", default=str(RESULTS / "endpoint-picker"), help="results path without extension")
    args = ap.parse_args()
    PICKER.update(args.picker)
    args.rate_of = {} if args.rates else RATES
    for w in args.workloads:
        if w not in load.WORKLOADS:
            raise SystemExit(f"bench/epp: no workload {w!r} (of {', '.join(load.WORKLOADS)})")
    systems = [s for s in args.systems.split(",") if s]
    if "epp" in systems and not Path(args.module).exists():
        raise SystemExit(f"bench/epp: {args.module} missing: run `.venv/bin/python build/pwbuild ai_gateway`")
    ports = [free_port() for _ in range(args.servers)]
    r: dict[str, Any] = {"environment": {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "cpus": os.cpu_count(),
        "load_avg_at_start": os.getloadavg()[0], "envoy": envoy_version(), "servers": args.servers,
        "git_head": git("rev-parse", "--short", "HEAD"),
        "plugin_changes_uncommitted": bool(git("status", "--porcelain", "plugin")),
        "module": {"path": args.module, "sha256": sha256(args.module), "default": Path(args.module) == MODULE}
        if "epp" in systems else None, "note": args.note,
        "engine": ENGINE, "adapters": list(load.ADAPTERS), "picker": PICKER, "seed": args.seed,
        "seconds": args.seconds, "warmup": args.warmup, "workloads": args.workloads,
        "rates": {w: rates(args, w) for w in args.workloads},
        "engines": {w: [engine_of(w, i) for i in range(args.servers)] for w in args.workloads},
        "workload": {w: {str(rate): load.mix(load.WORKLOADS[w](rate, args.seconds, args.warmup, args.seed))
                         for rate in rates(args, w)} for w in args.workloads}},
        "systems": {s: SYSTEMS[s] for s in systems}, "phases": [], "unavailable": {}}
    for system in systems:
        log(f"system {system}: {SYSTEMS[system]}")
        try:
            r["phases"] += run_system(system, ports, args)
        except RuntimeError as e:
            if system != "epp":
                raise
            r["unavailable"][system] = str(e).splitlines()[0][:300]
            log(f"epp unavailable: {e}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=2) + "\n")
    md = report.markdown(r)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
