"""VM instructions per request (wasmtime fuel) for W1-W3: a cost measure the machine's load does not move.

Run from the repo root: ``.venv/bin/python bench/ai/instructions.py [--module dist/ai-gateway.wasm] [W1 W2 W3]``.
The plugin runs with bench/ai/run.py's configuration under wasmtime (fuel metering on), fed the same request and
response bodies as the wrk workloads (bodies in 16 KiB chunks, as Envoy hands them over); each callback's fuel
is summed over 100 requests after 30 warm-up ones. Fuel counts wasm instructions: it says nothing about host
calls or V8's code quality, but a change that lowers it lowers the plugin's CPU in Envoy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.ai.systems import PLUGIN_CONFIG, canned_json, canned_sse  # noqa: E402
from proxywasm.testing.wasm_fast import FastWasmHost  # noqa: E402  (raw wasmtime calls)

FUEL = 10**15
CHUNK = 16384
PAD = "lorem ipsum dolor sit amet "
BODIES = {  # as w1.lua, w2.lua, w3.lua send them
    "W1": ('{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful assistant."},'
           '{"role":"user","content":"' + PAD * 68 + '"}],"temperature":0.2,"max_tokens":256}').encode(),
    "W2": ('{"model":"bench-model","stream":true,"stream_options":{"include_usage":true},"messages":'
           '[{"role":"user","content":"' + PAD * 8 + '"}]}').encode(),
    "W3": ('{"model":"bench-model","messages":[{"role":"user","content":"' + PAD * 2420 + '"}],"max_tokens":256}'
           ).encode(),
}
HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", ":scheme": "http",
           "content-type": "application/json", "x-mse-consumer": "bench", "user-agent": "wrk",
           "x-request-id": "0b6c1e4e-1", "x-forwarded-proto": "http"}


class MeteredHost(FastWasmHost):
    """FastWasmHost with fuel metering, summing fuel per exported callback."""

    def __init__(self, module: Path, fuel_clock: bool = False) -> None:
        super().__init__(module, fuel=FUEL, fuel_clock=fuel_clock)
        self.fuel_per: dict[str, int] = {}
        self.extra_headers: dict[str, str] = {}

    def _export(self, name: str, *args: int) -> int | None:
        before = self.fuel_used()
        try:
            return super()._export(name, *args)
        finally:
            self.fuel_per[name] = self.fuel_per.get(name, 0) + self.fuel_used() - before


def one(host: MeteredHost, wl: str) -> None:
    s = host.http_stream()
    body = BODIES[wl]
    s.send_request_headers({**HEADERS, **host.extra_headers, "content-length": str(len(body))})
    parts = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
    for i, part in enumerate(parts):
        s.send_request_body(part, i == len(parts) - 1)
    if wl == "W2":
        sse = canned_sse().encode()
        s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
        for i in range(0, len(sse), CHUNK):
            s.send_response_body(sse[i : i + CHUNK], i + CHUNK >= len(sse))
    else:
        s.send_response_headers({":status": "200", "content-type": "application/json"})
        s.send_response_body(canned_json().encode(), False)
        s.send_response_body(b"", True)
    s.complete()


def measure(module: Path, workloads: list[str], n: int = 100, config: dict | None = None,
            headers: dict[str, str] | None = None, redis_port: int = 0) -> dict[str, dict[str, float]]:
    """VM instructions per request; ``config`` / ``headers`` change the plugin's configuration and the requests'
    headers; ``redis_port``: the cluster "redis" is that real redis-server (the Higress build's Redis calls)."""
    host = MeteredHost(module)
    if redis_port:
        host.use_redis("redis", redis_port)
    if headers:
        host.extra_headers = headers
    assert host.start(config or PLUGIN_CONFIG), host.logs
    out = {}
    for wl in workloads:
        for _ in range(30):
            one(host, wl)
        host.fuel_per.clear()
        for _ in range(n):
            one(host, wl)
        per = {k.removeprefix("proxy_on_"): v / n for k, v in host.fuel_per.items()}
        out[wl] = {"total": sum(per.values()), **dict(sorted(per.items(), key=lambda kv: -kv[1]))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--module", type=Path, default=REPO / "dist" / "ai-gateway.wasm")
    ap.add_argument("workloads", nargs="*", default=list(BODIES))
    args = ap.parse_args()
    for wl, per in measure(args.module, [w.upper() for w in args.workloads]).items():
        rest = " ".join(f"{k} {v / 1e3:,.1f}k" for k, v in per.items() if k != "total")
        print(f"{wl}: {per['total'] / 1e3:,.1f}k VM instructions per request ({rest})")


if __name__ == "__main__":
    main()
