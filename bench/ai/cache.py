"""The response cache's cost and gain (issue 19): latency of a hit against the upstream, and what a miss costs
over the gateway without a cache, in one run on the benchmark's canned upstream (bench/ai/systems.py).

    .venv/bin/python bench/ai/cache.py            # ~1 min; writes bench/results/ai-cache.{md,json}

Cases, each a fresh Envoy (concurrency 1) with the same ~2 KB deterministic (temperature 0) W1-style request,
one request in flight on a keep-alive connection (the latency the gateway itself adds), rounds interleaved:
  a        Envoy alone, fixed cluster (the upstream's own latency through one proxy hop)
  b        Envoy + ai-gateway without a cache; every body distinct
  b+miss   the same with ``cache`` (shared store): every body distinct, so every request is a miss and stored
  b+hit    the same Envoy, one body: every request answered from the cache
Reported: median and p99 latency, Envoy CPU per request (its process, the canned upstream listener included:
a hit saves the upstream's share too), and Envoy's RSS after 1,000 and after 4,000 stored misses with
``max_entries`` 1,000 (the shared store is bounded: the RSS must not grow with the entries written).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import systems  # noqa: E402

REQUESTS = 1000
ROUNDS = 3
PAD = "lorem ipsum dolor sit amet " * 68
CACHE = {"ttl_s": 600, "max_entries": 1000, "store": {"backend": "shared"}}


def body(i: int | None) -> bytes:
    q = PAD + (f" #{i}" if i is not None else "")
    return json.dumps({"model": "bench-model", "temperature": 0, "max_tokens": 256,
                       "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                    {"role": "user", "content": q}]}).encode()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(url: str, pid: int, bodies: Any, n: int, want_cache: str | None) -> dict[str, float]:
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    lat = []
    c0 = cpu_s(pid)
    for i in range(n):
        b = bodies(i)
        t = time.perf_counter_ns()
        conn.request("POST", "/v1/chat/completions", b, {"content-type": "application/json"})
        r = conn.getresponse()
        data = r.read()
        lat.append(time.perf_counter_ns() - t)
        assert r.status == 200 and b'"usage"' in data, (r.status, data[:200])
        if want_cache is not None:
            assert r.getheader("x-ai-cache") == want_cache, r.getheader("x-ai-cache")
    cpu = cpu_s(pid) - c0
    conn.close()
    lat.sort()
    return {"p50_us": lat[len(lat) // 2] / 1000, "p99_us": lat[int(len(lat) * 0.99)] / 1000,
            "cpu_us_per_req": cpu / n * 1e6}


def fuel(cfg: dict[str, Any], bodies: Any, n: int = 100) -> float:
    """VM instructions per request (wasmtime fuel, the machine's load does not move it): request in, answer out."""
    from bench.ai.instructions import HEADERS, MeteredHost

    host = MeteredHost(systems.MODULE)
    assert host.start(cfg), host.logs

    def one(b: bytes) -> None:
        s = host.http_stream()
        s.send_request_headers({**HEADERS, "content-length": str(len(b))})
        s.send_request_body(b, True)
        if s.local_response is None:
            s.send_response_headers({":status": "200", "content-type": "application/json"})
            s.send_response_body(systems.canned_json().encode(), False)
            s.send_response_body(b"", True)
        s.complete()

    for i in range(30):
        one(bodies(10**8 + i))
    host.fuel_per.clear()
    for i in range(n):
        one(bodies(i))
    return sum(host.fuel_per.values()) / n


def main() -> None:
    plain = dict(systems.PLUGIN_CONFIG)
    with_cache = {**plain, "cache": CACHE}
    vm = {"b": fuel(plain, body), "b+miss": fuel(with_cache, body), "b+hit": fuel(with_cache, lambda i: body(None))}
    systems.log("VM instructions per request: " + ", ".join(f"{k} {v / 1e3:,.0f}k" for k, v in vm.items()))
    results: dict[str, list[dict[str, float]]] = {"a": [], "b": [], "b+miss": [], "b+hit": []}
    memory: list[dict[str, float]] = []
    offset = 0
    for rnd in range(ROUNDS):
        for case in ("a", "b", "cache"):
            systems.PLUGIN_CONFIG = {**plain, "cache": CACHE} if case == "cache" else plain
            with systems.envoy_system("a" if case == "a" else "b", 1, None) as sut:
                pid = sut.pids[0]
                run(sut.url, pid, lambda i: body(10**9 + i), 100, None)  # warm up (distinct from measured bodies)
                offset += REQUESTS
                base = offset
                if case != "cache":
                    results[case].append(run(sut.url, pid, lambda i, b=base: body(b + i), REQUESTS, None))
                    continue
                results["b+miss"].append(run(sut.url, pid, lambda i, b=base: body(b + i), REQUESTS, "miss"))
                rss1 = rss_mb(pid)
                run(sut.url, pid, lambda i: body(None), 1, None)  # stored
                results["b+hit"].append(run(sut.url, pid, lambda i: body(None), REQUESTS, "hit"))
                if rnd == 0:
                    offset += 3 * REQUESTS
                    run(sut.url, pid, lambda i, b=offset: body(b + i), 3 * REQUESTS, "miss")
                    memory.append({"rss_mb_after_1000": rss1, "rss_mb_after_4000": rss_mb(pid)})
            systems.log(f"round {rnd + 1}/{ROUNDS} {case} done")
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    out = HERE.parent / "results"
    (out / "ai-cache.json").write_text(json.dumps({"median": med, "runs": results, "memory": memory,
                                                   "vm_instructions": vm}, indent=1))
    lines = ["# Response cache: hit latency and miss cost (bench/ai/cache.py)", "",
             f"One request in flight, {REQUESTS} requests per case and round, median of {ROUNDS} interleaved rounds;"
             " ~2 KB W1-style request, temperature 0, canned ~1 KB upstream answer.", "",
             "| case | p50 µs | p99 µs | Envoy CPU µs/request |", "| --- | --- | --- | --- |"]
    names = {"a": "a: Envoy alone (the upstream through one hop)", "b": "b: ai-gateway, no cache",
             "b+miss": "b + cache, every request a miss (stored)", "b+hit": "b + cache, every request a hit"}
    for k, v in med.items():
        lines.append(f"| {names[k]} | {v['p50_us']:.0f} | {v['p99_us']:.0f} | {v['cpu_us_per_req']:.0f} |")
    b, miss, hit = med["b"], med["b+miss"], med["b+hit"]
    lines += ["", f"- VM instructions per request (wasmtime fuel, load-independent): b {vm['b'] / 1e3:,.0f}k, "
                  f"b + cache miss {vm['b+miss'] / 1e3:,.0f}k ({vm['b+miss'] / vm['b']:.2f}x), "
                  f"b + cache hit {vm['b+hit'] / 1e3:,.0f}k ({vm['b+hit'] / vm['b']:.2f}x);",
              "- wall-clock figures move by several x between runs on a shared machine (other jobs on the same cores); "
              "the VM instructions above are the stable measure of what the cache adds;",
              f"- this run: a miss {miss['p50_us'] - b['p50_us']:+.0f} µs p50 and "
                  f"{miss['cpu_us_per_req'] - b['cpu_us_per_req']:+.0f} µs Envoy CPU per request over b "
                  f"({miss['cpu_us_per_req'] / b['cpu_us_per_req']:.2f}x CPU);",
              f"- a hit answers in {hit['p50_us'] / b['p50_us']:.2f}x the time of b going upstream "
              f"({hit['p50_us']:.0f} vs {b['p50_us']:.0f} µs p50) and {hit['p50_us'] / med['a']['p50_us']:.2f}x "
              "Envoy alone; against a real model server the upstream's own latency (100s of ms) is saved;",
              f"- Envoy RSS with max_entries 1000: {memory[0]['rss_mb_after_1000']:.1f} MB after 1,000 stored "
              f"misses, {memory[0]['rss_mb_after_4000']:.1f} MB after 4,000 (entries evicted, not accumulated)."]
    (out / "ai-cache.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
