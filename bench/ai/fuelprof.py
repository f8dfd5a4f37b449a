"""Where the plugin's VM instructions go, per Python function (a deterministic profiler on wasmtime fuel).

    .venv/bin/python bench/ai/fuelprof.py [W1|W2|W3] [--top 40] [-n 100]

Builds dist/aigw-fuelprof.wasm (the AI gateway plus ``_lsprof``, entry in bench/ai/fuelprof_entry) and runs the
workload of bench/ai/instructions.py under it. The profiler's clock is the fuel consumed (WASI's clock answers it),
so the times are VM instructions: "own" excludes called functions, "total" includes them. The profiler's own
hooks cost instructions too (charged to the caller), so absolute numbers run high; compare rows, not totals.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.ai import instructions  # noqa: E402

MODULE = REPO / "dist" / "aigw-fuelprof.wasm"


def build() -> None:
    subprocess.run([sys.executable, str(REPO / "build" / "pwbuild"), "aigw_fuelprof", "-o", str(MODULE),
                    "--path", str(Path(__file__).parent / "fuelprof_entry")], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workload", nargs="?", default="W1")
    ap.add_argument("--top", type=int, default=45)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--children", metavar="NAME", help="also list what functions whose label contains NAME call")
    ap.add_argument("--plain", type=float, default=0, help="instructions per request without the profiler "
                    "(bench/ai/instructions.py), to subtract the hooks' cost")
    a = ap.parse_args()
    if not a.no_build:
        build()
    host = instructions.MeteredHost(MODULE, fuel_clock=True)  # the profiler's clock: VM instructions
    assert host.start(instructions.PLUGIN_CONFIG), host.logs
    for _ in range(30):
        instructions.one(host, a.workload)
    host.tick()
    host.fuel_per.clear()
    for _ in range(a.n):
        instructions.one(host, a.workload)
    per_cb = {k: v / a.n for k, v in host.fuel_per.items() if k != "proxy_on_tick"}
    host.state.logs.clear()
    host.tick()
    rows = []
    for _, line in host.state.logs:
        if line.startswith("FUELPROF\t"):
            _, label, calls, total, own, sub = line.split("\t")
            rows.append([int(own) / a.n, int(total) / a.n, int(calls) / a.n, int(sub) / a.n, label])
    with_prof = sum(per_cb.values())
    events = sum(r[2] for r in rows)
    # The hooks' cost per call event, from the difference with an unprofiled run; split between callee and
    # caller as measured on builtins that do almost nothing (len: ~100 instructions unprofiled).
    per_event = (with_prof - a.plain) / events if a.plain else 0
    callee = min((r[0] / r[2] for r in rows if "builtins.len" in r[4] and r[2]), default=0)
    for r in rows:
        r.append(max(0, r[0] - callee * r[2] - (per_event - callee) * r[3]))
    print(f"{a.workload}: {with_prof / 1e3:,.1f}k VM instructions per request with the profiler on, "
          f"{events:.0f} calls; {per_event:,.0f} per call event charged to the hooks ({callee:,.0f} to the callee)")
    print(f"{'own*':>9} {'own':>9} {'total':>9} {'calls':>6}  function (per request; own* = own minus the hooks)")
    for own, total, calls, _, label, corr in sorted(rows, key=lambda r: -r[5])[: a.top]:
        print(f"{corr:9,.0f} {own:9,.0f} {total:9,.0f} {calls:6.1f}  {label}")
    if a.children:
        subs = [line.split("\t")[1:] for _, line in host.state.logs if line.startswith("FUELSUB\t")]
        for parent in sorted({p for p, *_ in subs if a.children in p}):
            print(f"\n{parent} calls (total per request, profiler hooks included):")
            for _, child, calls, total in sorted((s for s in subs if s[0] == parent), key=lambda s: -int(s[3])):
                print(f"  {int(total) / a.n:9,.0f} {int(calls) / a.n:6.1f}  {child}")


if __name__ == "__main__":
    main()
