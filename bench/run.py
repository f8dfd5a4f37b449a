"""Benchmark the showcase plugin in a real Envoy: module size, VM start, memory per VM, throughput.

Run from anywhere: ``./dev bench`` or ``PYTHONPATH=plugin:build:. .venv/bin/python bench/run.py``.
Prints a markdown table and writes bench/results/latest.json and latest.md (see bench/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench import profile  # noqa: E402
from e2e.envoy import Envoy, envoy_binary, free_port, render  # noqa: E402

BENCH = REPO / "bench"
MODULE = REPO / "dist" / "showcase.wasm"
MODULE_MAX_MIB = 10.0
VM_START_MAX_MS = 50.0
RATIO_MIN = 0.60


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


@dataclass
class Gateway:
    envoy: Envoy
    url: str
    startup_s: float

    @property
    def pid(self) -> int:
        assert self.envoy.proc is not None
        return self.envoy.proc.pid


@contextmanager
def gateway(kind: str, concurrency: int) -> Iterator[Gateway]:
    """bench/envoy-<kind>.yaml on free ports; ``startup_s`` is process start → admin /ready says LIVE."""
    admin, listen, upstream = free_port(), free_port(), free_port()
    config = render(BENCH / f"envoy-{kind}.yaml", {19000: admin, 18000: listen, 18101: upstream})
    t0 = time.monotonic()
    with Envoy(config, admin, concurrency) as envoy:
        gw = Gateway(envoy, f"http://127.0.0.1:{listen}/anything", time.monotonic() - t0)
        with urllib.request.urlopen(gw.url, timeout=10) as r:
            if r.status != 200 or (r.headers.get("x-showcase") is not None) != (kind == "plugin"):
                raise RuntimeError(f"{kind} gateway answered {r.status} {dict(r.headers)}")
        yield gw


def plugin_config() -> str:
    found = re.search(r"^\s+value: '(.*)'$", (BENCH / "envoy-plugin.yaml").read_text(), re.M)
    assert found, "plugin configuration not found in bench/envoy-plugin.yaml"
    return found.group(1)


def vm_start_envoy(concurrency: int = 2) -> dict[str, Any]:
    with gateway("plugin", concurrency) as gw:
        out = m.vm_start_in_envoy(gw.envoy.log_text, gw.pid, concurrency)
    return {**out, "startup_s": gw.startup_s}


def vm_start_wasmtime(runs: int = 5) -> dict[str, Any]:
    return m.vm_start_wasmtime(MODULE, plugin_config(), runs)


def throughput(kind: str, args: argparse.Namespace, envoy_cpus: set[int] | None,
               wrk_cpus: set[int] | None) -> dict[str, Any]:
    """One Envoy worker under wrk; CPU of Envoy, wrk and everything else on the machine during the run."""
    with gateway(kind, 1) as gw:
        if envoy_cpus:
            m.pin(gw.pid, envoy_cpus)
        m.wrk(gw.url, args.warmup, args.connections, cpus=wrk_cpus)
        rss, heap = m.rss_kib(gw.pid), json.loads(gw.envoy.admin("/memory"))
        t0, cpu0, wrk0, busy0 = time.monotonic(), m.cpu_seconds(gw.pid), m.children_cpu_seconds(), m.busy_cpu_seconds()
        with profile.record(gw.pid, args.seconds) if args.profile else nullcontext() as perf_data:
            res = m.wrk(gw.url, args.seconds, args.connections, cpus=wrk_cpus)
            cpu, wall = m.cpu_seconds(gw.pid) - cpu0, time.monotonic() - t0
            busy = m.busy_cpu_seconds() - busy0
        wrk_cpu = m.children_cpu_seconds() - wrk0  # wrk (and perf, with --profile)
    out = {"startup_s": gw.startup_s, "rss_c1_kib": rss, "wrk": res.as_dict(), "envoy_cpu_s": cpu,
           "envoy_cpu_util": cpu / wall, "cpu_us_per_request": cpu / max(res.requests, 1) * 1e6,
           "wrk_cpu_util": wrk_cpu / wall, "other_cpu_util": max(busy - cpu - wrk_cpu, 0) / wall,
           "malloc": {k: int(v) for k, v in heap.items()}}
    if perf_data is not None:
        out["profile_us_per_request"] = {k: v * out["cpu_us_per_request"] for k, v in profile.shares(perf_data).items()}
    return out


def rss_after_warmup(kind: str, concurrency: int, args: argparse.Namespace) -> int:
    with gateway(kind, concurrency) as gw:
        m.wrk(gw.url, args.warmup, args.connections)
        return m.rss_kib(gw.pid)


def row(metric: str, value: str, target: str = "", ok: bool | None = None) -> dict[str, Any]:
    return {"metric": metric, "value": value, "target": target,
            "result": "info" if ok is None else ("PASS" if ok else "FAIL")}


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def build_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    size = r["module"]["mib"]
    ve, vw = r["vm_start"]["envoy"], r["vm_start"]["wasmtime"]
    mem, tp = r["memory"], r["throughput"]
    p, n = tp["plugin"], tp["noplugin"]

    def lat(t: dict[str, Any]) -> str:
        w = t["wrk"]
        return f"{w['rps']:,.0f} req/s (p50 {w['p50_ms']:.2f} ms, p99 {w['p99_ms']:.2f} ms)"

    return [
        row("Module size (dist/showcase.wasm)", f"{size:.2f} MiB", f"< {MODULE_MAX_MIB:g} MiB", size < MODULE_MAX_MIB),
        row(f"VM start in Envoy: median of {len(ve['vms'])} VMs (concurrency {ve['concurrency']})",
            f"{ve['median_ms']:.1f} ms", f"< {VM_START_MAX_MS:g} ms", ve["median_ms"] < VM_START_MAX_MS),
        row("VM start in Envoy: max", f"{ve['max_ms']:.1f} ms", f"< {VM_START_MAX_MS:g} ms",
            ve["max_ms"] < VM_START_MAX_MS),
        row(f"VM start in wasmtime: instantiate + start, median of {vw['runs']}",
            f"{vw['median_ms']:.1f} ms (in-VM {vw['ready_in_median_ms'] or 0:.1f} ms)", "reference"),
        row("Envoy process start → LIVE, plugin vs no plugin (concurrency 1)",
            f"{p['startup_s']:.2f} s vs {n['startup_s']:.2f} s"),
        row("Linear memory per VM (at start)", f"{ve['linear_memory_kib'] / 1024:.1f} MiB"),
        row("Envoy RSS with plugin: concurrency 1 → 4",
            f"{mem['plugin_c1_kib'] / 1024:.1f} → {mem['plugin_c4_kib'] / 1024:.1f} MiB"),
        row("Envoy RSS without plugin: concurrency 1 → 4",
            f"{mem['noplugin_c1_kib'] / 1024:.1f} → {mem['noplugin_c4_kib'] / 1024:.1f} MiB"),
        row("RSS per extra plugin VM: (Δplugin - Δno-plugin) / 3", f"{mem['per_vm_kib'] / 1024:.1f} MiB"),
        row("Fixed RSS of the plugin at concurrency 1 (plugin - no plugin)",
            f"{(mem['plugin_c1_kib'] - mem['noplugin_c1_kib']) / 1024:.1f} MiB"),
        row("Envoy malloc at concurrency 1: live / heap, plugin vs no plugin",
            f"{mib(p['malloc']['allocated'])} / {mib(p['malloc']['heap_size'])} MiB vs "
            f"{mib(n['malloc']['allocated'])} / {mib(n['malloc']['heap_size'])} MiB"),
        row("Throughput with plugin (1 worker)", lat(p)),
        row("Throughput without plugin (1 worker)", lat(n)),
        row("Plugin / no-plugin throughput", f"{tp['ratio']:.0%}", f"≥ {RATIO_MIN:.0%}", tp["ratio"] >= RATIO_MIN),
        row("Envoy CPU per request, plugin vs no plugin",
            f"{p['cpu_us_per_request']:.0f} µs vs {n['cpu_us_per_request']:.0f} µs "
            f"(+{p['cpu_us_per_request'] - n['cpu_us_per_request']:.0f} µs)"),
        row("Throughput ratio implied by CPU per request (less sensitive to other load)",
            f"{n['cpu_us_per_request'] / p['cpu_us_per_request']:.0%}", f"≥ {RATIO_MIN:.0%}"),
    ] + [row(f"Profile: {kind} µs per request in {', '.join(prof)}", " / ".join(f"{v:.0f}" for v in prof.values()))
         for kind, prof in (("plugin", p.get("profile_us_per_request")),
                            ("no plugin", n.get("profile_us_per_request"))) if prof]


def notes(r: dict[str, Any]) -> list[str]:
    out = []
    for kind in ("plugin", "noplugin"):
        t = r["throughput"][kind]
        w = t["wrk"]
        if w["non_2xx"] or w["socket_errors"]:
            out.append(f"{kind}: {w['non_2xx']} non-2xx responses, {w['socket_errors']} socket errors")
        out += m.noise_notes(kind, t["envoy_cpu_util"], t["wrk_cpu_util"], t["other_cpu_util"], "Envoy")
    return out


def markdown(r: dict[str, Any]) -> str:
    a = r["args"]
    e = r["env"]
    lines = [f"Benchmark {r['time']} · Envoy {e['envoy']} · {e['cpus']} CPUs · load avg {e['loadavg_1m_at_start']:.2f} "
             f"at start · pinning: {e['pinning']} · wrk -t1 -c{a['connections']} -d{a['seconds']}s "
             f"after {a['warmup']}s warm-up, GET /anything", "",
             "| Metric | Value | Target | Result |", "|---|---|---|---|"]
    lines += [f"| {x['metric']} | {x['value']} | {x['target']} | {x['result']} |" for x in r["rows"]]
    lines += [""] + [f"- note: {x}" for x in r["notes"]]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5, help="measured wrk run (default 5)")
    ap.add_argument("--warmup", type=float, default=1, help="wrk warm-up before each measurement (default 1)")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--pin", action="store_true", help="pin Envoy and wrk to separate CPUs (quiet machines only)")
    ap.add_argument("--profile", action="store_true", help="perf-profile Envoy during the measured runs")
    ap.add_argument("--no-build", action="store_true", help="skip `pwbuild examples.showcase`")
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    started = time.monotonic()

    m.ensure_wrk()
    if args.profile and not profile.available():
        raise SystemExit("bench: --profile needs perf (apt-get install -y linux-perf)")
    if not args.no_build:
        built = subprocess.run([sys.executable, str(REPO / "build" / "pwbuild"), "examples.showcase"], cwd=REPO,
                               capture_output=True, text=True)
        if built.returncode != 0:
            raise SystemExit(f"bench: pwbuild failed:\n{built.stdout}{built.stderr}")
        log((built.stdout.strip().splitlines() or ["pwbuild: ok"])[-1])
    cpus = sorted(os.sched_getaffinity(0))
    envoy_cpus, wrk_cpus = ({cpus[0]}, {cpus[1]}) if len(cpus) >= 2 and args.pin else (None, None)
    r: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"), "args": {k: str(v) for k, v in vars(args).items()},
        "env": {"envoy": m.envoy_version(envoy_binary()), "cpus": len(cpus),
                "pinning": f"envoy→cpu{cpus[0]}, wrk→cpu{cpus[1]}" if envoy_cpus else "off",
                "machine": platform.machine(), "loadavg_1m_at_start": os.getloadavg()[0]},
        "module": {"bytes": MODULE.stat().st_size, "mib": MODULE.stat().st_size / 2**20},
    }
    log("VM start in Envoy (concurrency 2) ...")
    r["vm_start"] = {"envoy": vm_start_envoy(2)}
    log("VM start in wasmtime ...")
    r["vm_start"]["wasmtime"] = vm_start_wasmtime()
    tp: dict[str, Any] = {}
    for kind in ("plugin", "noplugin"):
        log(f"throughput, {kind} (concurrency 1) ...")
        tp[kind] = throughput(kind, args, envoy_cpus, wrk_cpus)
    tp["ratio"] = tp["plugin"]["wrk"]["rps"] / tp["noplugin"]["wrk"]["rps"]
    r["throughput"] = tp
    mem = {"plugin_c1_kib": tp["plugin"]["rss_c1_kib"], "noplugin_c1_kib": tp["noplugin"]["rss_c1_kib"]}
    for kind in ("plugin", "noplugin"):
        log(f"RSS, {kind} (concurrency 4) ...")
        mem[f"{kind}_c4_kib"] = rss_after_warmup(kind, 4, args)
    mem["per_vm_kib"] = m.rss_per_extra_vm((mem["plugin_c1_kib"], mem["plugin_c4_kib"]),
                                           (mem["noplugin_c1_kib"], mem["noplugin_c4_kib"]), 3)
    r["memory"] = mem
    r["rows"], r["notes"] = build_rows(r), notes(r)
    r["elapsed_s"] = round(time.monotonic() - started, 1)

    text = markdown(r)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(r, indent=2) + "\n")
    (args.out / "latest.md").write_text(text)
    log(f"done in {r['elapsed_s']} s; wrote {args.out}/latest.json and latest.md")
    return 1 if args.strict and any(x["result"] == "FAIL" for x in r["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
