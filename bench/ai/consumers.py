"""What consumers cost per request: authentication and limit checking, shared-data and Redis (webdis) stores,
against the same gateway without consumers, in one run.

    .venv/bin/python bench/ai/consumers.py [--workloads W1,W2] [--seconds 5] [--rounds 3]   (just bench-consumers)

Systems (bench/ai/systems.py's system b, one Envoy worker, canned upstream answers, wrk -c16):
- ``gateway``: ai-gateway as benchmarked in bench/ai/run.py (no consumers);
- ``shared``: + one consumer (Bearer key, sha256 lookup) with a request limit and a token limit per minute, counters
  in Envoy shared data (check before upstream, charge after the answer);
- ``redis``: the same limits in a real redis-server through webdis (stock Envoy's transport): one HTTP callout
  before upstream (the request waits for it) and one after the answer.
Limits are set high enough never to refuse. Rounds interleave the systems; the median round is reported.
Writes bench/results/ai-consumers.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.ai import instructions, run, systems  # noqa: E402
from e2e.envoy import Envoy, envoy_binary, free_port  # noqa: E402
from tests.redis_server import redis_server, webdis  # noqa: E402

KEY = "sk-bench-consumer-0123456789"
HUGE = 10**12
CONSUMERS = {"consumers": [{"name": "bench", "keys": [KEY],
                            "limits": [{"requests": HUGE, "per": "minute"}, {"tokens": HUGE, "per": "minute"}]}]}
SYSTEMS = {"gateway": "ai-gateway, no consumers",
           "shared": "+ consumer auth, request and token limits in shared data",
           "redis": "+ the same limits in Redis via webdis (one callout before, one after)"}


def config(system: str, admin: int, listen: int, upstream: int, webdis_port: int) -> str:
    cfg = json.loads(systems.envoy_config("b", admin, listen, upstream))
    plugin = dict(systems.PLUGIN_CONFIG)
    if system != "gateway":
        plugin.update(CONSUMERS)
    if system == "redis":
        plugin["store"] = {"backend": "redis", "timeout_ms": 1000,
                           "redis": {"transport": "webdis", "cluster": "webdis", "prefix": "bench:"}}
        addr = {"socket_address": {"address": "127.0.0.1", "port_value": webdis_port}}
        cfg["static_resources"]["clusters"].append({
            "name": "webdis", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "webdis", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": addr}}]}]}})
    (hcm,) = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"]
    wasm = hcm["typed_config"]["http_filters"][0]["typed_config"]["config"]
    wasm["configuration"]["value"] = json.dumps(plugin)
    return json.dumps(cfg, indent=1)


@contextmanager
def running(system: str, webdis_port: int) -> Iterator[tuple[str, Envoy]]:
    admin, listen, upstream = free_port(), free_port(), free_port()
    with Envoy(config(system, admin, listen, upstream, webdis_port), admin, 1) as envoy:
        yield f"http://127.0.0.1:{listen}", envoy


def script(workload: str, tmp: Path) -> Path:
    """The workload's wrk script with the consumer's key (the gateway without consumers ignores it)."""
    out = tmp / f"{workload}-key.lua"
    out.write_text(systems.WORKLOADS[workload][1].read_text() + f'\nwrk.headers["authorization"] = "Bearer {KEY}"\n')
    return out


def once(url: str, envoy: Envoy, lua: Path, seconds: float) -> dict[str, Any]:
    pid = envoy.proc.pid  # type: ignore[union-attr]
    run.run_wrk(url, lua, 1, 16, None)  # warm-up
    m.wait_idle([pid])
    t0, cpu0 = time.monotonic(), m.cpu_seconds(pid)
    res = run.run_wrk(url, lua, seconds, 16, None)
    cpu = m.cpu_seconds(pid) - cpu0
    bad = res.as_dict()
    if res.errors or res.requests == 0:
        raise RuntimeError(f"{url}: errors in the run: {bad}")
    return {"rps": res.rps, "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
            "cpu_us_per_request": cpu / max(res.requests, 1) * 1e6, "wall_s": time.monotonic() - t0}


FUEL_SYSTEMS = {"gateway": SYSTEMS["gateway"], "shared": SYSTEMS["shared"],
                "redis-higress": "+ the same limits in Redis via Higress's Redis calls"}


def vm_instructions(workloads: list[str], redis_port: int) -> dict[str, dict[str, float]]:
    build = subprocess.run([sys.executable, str(REPO / "build/pwbuild"), "ai_gateway", "--variant", "higress"],
                           capture_output=True, text=True, cwd=REPO)
    if build.returncode != 0:
        raise RuntimeError(build.stderr)
    key = {"authorization": f"Bearer {KEY}"}
    redis = {**systems.PLUGIN_CONFIG, **CONSUMERS,
             "store": {"backend": "redis", "redis": {"transport": "higress", "cluster": "redis", "prefix": "fuel:"}}}
    runs = {"gateway": (systems.MODULE, systems.PLUGIN_CONFIG, 0),
            "shared": (systems.MODULE, {**systems.PLUGIN_CONFIG, **CONSUMERS}, 0),
            "redis-higress": (REPO / "dist/ai-gateway-higress.wasm", redis, redis_port)}
    return {s: {w: v["total"] for w, v in instructions.measure(mod, workloads, 50, cfg, key, port).items()}
            for s, (mod, cfg, port) in runs.items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="W1,W2")
    p.add_argument("--seconds", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    workloads = a.workloads.split(",")
    got: dict[str, dict[str, list[dict[str, Any]]]] = {s: {w: [] for w in workloads} for s in SYSTEMS}
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        webdis_port = stack.enter_context(webdis(redis.port))
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        for r in range(a.rounds):
            for system in SYSTEMS:
                with running(system, webdis_port) as (url, envoy):
                    for w in workloads:
                        got[system][w].append(once(url, envoy, script(w, tmp), a.seconds))
                        systems.log(f"round {r + 1} {system} {w}: {got[system][w][-1]['rps']:,.0f} req/s")
        fuel = vm_instructions(workloads, redis.port)
    med = {s: {w: sorted(v, key=lambda x: x["rps"])[len(v) // 2] for w, v in ws.items()} for s, ws in got.items()}
    lines = ["# What consumers cost per request (auth + limits)", "",
             f"Envoy {m.envoy_version(envoy_binary())}, "
             f"1 worker, wrk -c16, {a.seconds:g} s per run, median of {a.rounds} interleaved rounds.", "",
             "| workload | system | req/s | % of gateway | Envoy CPU µs/req | + µs/req vs gateway | p50 ms | p99 ms |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for w in workloads:
        base = med["gateway"][w]
        for s, name in SYSTEMS.items():
            r = med[s][w]
            lines.append(f"| {w} | {name} | {r['rps']:,.0f} | {100 * r['rps'] / base['rps']:.0f}% | "
                         f"{r['cpu_us_per_request']:.0f} | {r['cpu_us_per_request'] - base['cpu_us_per_request']:+.0f} | "
                         f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} |")
    lines += ["", "VM instructions per request (wasmtime fuel: independent of the machine's load; the Redis row is "
              "the Higress build with its Redis host calls answered by a real redis-server):", "",
              "| workload | system | VM instructions/request | + vs gateway |", "| --- | --- | ---: | ---: |"]
    for w in workloads:
        for s, name in FUEL_SYSTEMS.items():
            lines.append(f"| {w} | {name} | {fuel[s][w]:,.0f} | {fuel[s][w] - fuel['gateway'][w]:+,.0f} |")
    lines += ["", "Envoy CPU excludes redis-server and webdis (their own processes); the Redis row's latency includes "
              "the admission round trip to webdis and Redis on loopback."]
    m.write_results(REPO / "bench" / "results", "ai-consumers", {"median": med, "rounds": got, "vm_instructions": fuel}, "\n".join(lines))


if __name__ == "__main__":
    main()
