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
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench import profile  # noqa: E402
from bench.ai.litellm import ensure_litellm, litellm_system, litellm_version_pinned  # noqa: E402
from bench.ai.report import TARGET_P99_ADDED_MS, errors_text, markdown, target_rows  # noqa: E402
from bench.ai.systems import (  # noqa: E402
    MODULE,
    PARTS,
    PLUGIN_CONFIG,
    STATUS_LUA,
    SYSTEMS,
    VM_CONCURRENCY,
    WORKLOADS,
    WRK_TIMEOUT_S,
    canned_json,
    canned_sse,
    envoy_system,
    log,
)
from e2e.envoy import Envoy, envoy_binary  # noqa: E402

RESULTS = REPO / "bench" / "results"


def open_system(system: str, cpus: set[int] | None, module: Path, concurrency: int = 1):  # -> ContextManager[Running]
    return litellm_system(cpus) if system == "c" else envoy_system(system, concurrency, cpus, module)


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
    with open_system(system, cpus, args.module) as run:
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
    with envoy_system("b", 2, None, args.module) as run:
        out["vm_start"] = m.vm_start_in_envoy(run.envoy.log_text, run.pids[0], 2)  # type: ignore[union-attr]
        out["vm_start"]["loadavg_1m"] = os.getloadavg()[0]
    for system in ("a", "b"):
        rss = {1: r.get(system, {}).get("rss_after_warmup_kib")}
        for conc in (1, VM_CONCURRENCY):
            if rss.get(conc) is not None:
                continue
            log(f"vm: Envoy {system}, concurrency {conc} ...")
            with envoy_system(system, conc, None, args.module) as run:
                if system == "b" and conc == VM_CONCURRENCY:
                    out["vm_start_c4"] = m.vm_start_in_envoy(run.envoy.log_text, run.pids[0], conc)  # type: ignore
                    out["vm_start_c4"]["startup_s"] = run.startup_s
                run_wrk(run.url, WORKLOADS[wl][1], args.warmup, args.connections, None)
                rss[conc] = m.rss_kib(run.rss_pid)
        out[f"{system}_rss_kib"] = {f"c{k}": v for k, v in rss.items()}
    out["rss_per_extra_vm_kib"] = m.rss_per_extra_vm(
        tuple(out["b_rss_kib"].values()), tuple(out["a_rss_kib"].values()), VM_CONCURRENCY - 1)  # type: ignore
    log("vm: wasmtime ...")
    out["wasmtime"] = m.vm_start_wasmtime(args.module, json.dumps(PLUGIN_CONFIG))
    return out




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
    ap.add_argument("--module", type=Path, default=MODULE,
                    help="the plugin module of b (default dist/ai-gateway.wasm): compare builds")
    args = ap.parse_args(argv)
    args.module = args.module.resolve()
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
    args = parse_args(argv)
    started = time.monotonic()
    if ({"b", "vm"} & set(args.systems)) and not args.module.exists():
        raise SystemExit(f"bench/ai: {args.module} missing: run `.venv/bin/python build/pwbuild ai_gateway`")
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
        "module_bytes": args.module.stat().st_size if args.module.exists() else 0,
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
