"""What a Python plugin costs inside Envoy before it does any work: the floor under the 70 % throughput target.

    .venv/bin/python bench/ai/floor.py [--workloads W1,W2] [--seconds 5]     (just bench-floor)

Builds three Python plugins from bench/ai/floor_plugins/ and runs each as system b of bench/ai/run.py (same Envoy, mock,
wrk and pinning), next to a (Envoy alone) and the real ai-gateway:

- noop: overrides no stream callback (Envoy still creates and deletes a context per stream);
- pause: holds the request headers until the body is complete (what body-based routing needs), nothing more;
- minimal: the least Python work the workloads need, written flat against the raw host calls (see its
  docstring); no configuration, rules, fallback or error handling;
- native: the same work in C (floor_plugins/native_minimal.c, no Python, built with zig): what any compiled plugin doing
  it costs.

Per system and workload: req/s, % of a, Envoy CPU µs per request and, from bench/ai/instructions.py, the VM
instructions per request (wasmtime fuel). Writes bench/results/ai-floor.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.ai import instructions, run, systems  # noqa: E402

FLOORS = {
    "noop": "Python plugin overriding no stream callback",
    "pause": "Python plugin holding the headers until the body is in",
    "minimal": "Python plugin doing the least work of the workloads (flat, raw host calls)",
    "native": "the same work in C, no Python",
}


def build(name: str) -> Path:
    out = REPO / "dist" / f"floor-{name}.wasm"
    if name == "native":
        from pwbuild.toolchain import Toolchain

        cmd = Toolchain.locate().zig("cc", "--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-s",
                                     str(Path(__file__).parent / "floor_plugins" / "native_minimal.c"), "-o", str(out))
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return out
    subprocess.run([sys.executable, str(REPO / "build" / "pwbuild"), f"floor_{name}", "-o", str(out),
                    "--path", str(Path(__file__).parent / "floor_plugins")], check=True, stdout=subprocess.DEVNULL)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", default="W1,W2")
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--out", type=Path, default=run.RESULTS)
    a = ap.parse_args(argv)
    workloads = [w.strip().upper() for w in a.workloads.split(",") if w.strip()]
    args = run.parse_args(["--only", "a", *workloads, "--seconds", str(a.seconds)])
    modules = {name: build(name) for name in FLOORS} | {"ai-gateway": systems.MODULE}
    ncpu = os.cpu_count() or 1
    cpus, wrk_cpus = ({0}, {1}) if ncpu >= 2 else (None, None)
    r: dict = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "workloads": workloads,
               "loadavg_1m_at_start": os.getloadavg()[0], "systems": {}}
    systems.log("system a")
    r["systems"]["a"] = run.measure("a", args, cpus, wrk_cpus)
    for name, module in modules.items():
        args.module = module
        systems.log(f"system b with {module.name}")
        cell = run.measure("b", args, cpus, wrk_cpus)
        fuel = instructions.measure(module, workloads, n=30)
        for wl in workloads:
            cell[wl]["vm_instructions"] = fuel[wl]["total"]
        r["systems"][name] = cell
    r["loadavg_1m_at_end"] = os.getloadavg()[0]
    m.write_results(a.out, "ai-floor", r, markdown(r))


def markdown(r: dict) -> str:
    base = r["systems"]["a"]
    rows = ["| Workload | System | req/s | vs a | CPU µs/req | over a, µs/req | VM instructions/req |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for wl in r["workloads"]:
        a_rps, a_us = base[wl]["wrk"]["rps"], base[wl]["cpu_us_per_request"]
        rows.append(f"| {wl} | a: Envoy alone | {a_rps:,.0f} | — | {a_us:.0f} | — | — |")
        for name, cell in r["systems"].items():
            if name == "a":
                continue
            c = cell[wl]
            label = f"{name}: {FLOORS.get(name, 'the AI gateway (bench/ai/run.py system b)')}"
            rows.append(f"| | {label} | {c['wrk']['rps']:,.0f} | {c['wrk']['rps'] / a_rps:.0%} | "
                        f"{c['cpu_us_per_request']:.0f} | {c['cpu_us_per_request'] - a_us:+.0f} | "
                        f"{c['vm_instructions'] / 1e3:,.0f}k |")
    head = (f"# What a plugin costs in Envoy (bench/ai/floor.py)\n\n{r['when']} · one run per cell, "
            f"load average {r['loadavg_1m_at_start']:.2f} at start, {r['loadavg_1m_at_end']:.2f} at end · "
            "Envoy --concurrency 1 on CPU 0, wrk -t1 -c16 on CPU 1, as bench/ai/run.py\n")
    return head + "\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
