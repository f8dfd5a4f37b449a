"""The benchmark's report: targets, tables and notes of bench/results/ai-gateway.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.ai.systems import SYSTEMS, VM_CONCURRENCY, WORKLOADS, WRK_TIMEOUT_S  # noqa: E402

TARGET_RATIO = {"W1": 0.70, "W2": 0.70}
TARGET_P99_ADDED_MS = {"W1": 1.0}
TARGET_B_OVER_C = 10.0
VM_START_MAX_MS = 50.0


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
