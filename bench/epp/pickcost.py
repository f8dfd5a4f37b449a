"""What endpoint picking costs per request, in VM instructions (wasmtime fuel): a measure the machine's load does
not move.

Run from the repo root: ``.venv/bin/python bench/epp/pickcost.py [--module dist/ai-gateway.wasm] [-n 200]``.
The plugin runs under wasmtime with fuel metering, 4 endpoints scraped (vLLM pages with LoRA info and the time
per output token), and serves bench/epp's chat-session requests (their request bodies, through to the end of the
stream) in three configurations: the model on a plain cluster (no picker), with the picker but no prefix affinity
(``prefix_chars: 0``), and with the picker's defaults. Each request's instructions (request headers to the end of
the stream) are averaged after ``--warmup`` requests; the differences are the picker's and the prefix affinity's
cost.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.epp import load  # noqa: E402
from proxywasm.testing.wasm import WasmHost  # noqa: E402
from tests.picker import page, scrape_round  # noqa: E402

FUEL = 10**15
EPS = [f"10.0.0.{i}:8000" for i in range(1, 5)]
ANSWER = (b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'  # with the usage vLLM sends when asked
          b'data: {"choices":[],"usage":{"prompt_tokens":1900,"completion_tokens":1,"total_tokens":1901}}\n\n'
          b"data: [DONE]\n\n")
HEADERS = {":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw", ":scheme": "http",
           "content-type": "application/json"}


def config(picker: dict[str, Any] | None) -> dict[str, Any]:
    if picker is None:
        return {"models": [{"name": load.BASE_MODEL, "cluster": "pool"}]}
    return {"models": [{"name": load.BASE_MODEL, "cluster": "pool", "endpoint_picker": {"endpoints": EPS, **picker}}]}


def measure(module: Path, picker: dict[str, Any] | None, bodies: list[bytes], warmup: int) -> float:
    h = WasmHost(module, fuel=FUEL)
    assert h.start(config(picker)), h.logs
    used, n = 0, 0
    for i, body in enumerate(bodies):
        if picker is not None and i % 20 == 0:  # a scrape round now and then, as every 200 ms in Envoy
            scrape_round(h, {ep: page(k % 3, 4 + k, lora=(2, "", ""), itl=(0.02 * (i + 1), i + 1))
                             for k, ep in enumerate(EPS)})
        before = h.fuel_used()
        s = h.http_stream()
        s.send_request_headers(HEADERS)
        s.send_request_body(body, end_of_stream=True)
        assert s.local_response is None, s.local_response
        s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
        s.send_response_body(ANSWER, end_of_stream=True)
        s.complete()
        if i >= warmup:
            used += h.fuel_used() - before
            n += 1
    return used / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", default=str(REPO / "dist" / "ai-gateway.wasm"))
    ap.add_argument("-n", type=int, default=200, help="requests per configuration (measured after --warmup)")
    ap.add_argument("--warmup", type=int, default=40)
    args = ap.parse_args()
    specs = load.chat(18, 60, 5, seed=7)[: args.n + args.warmup]
    bodies = [s.body for s in specs]
    words = sum(sum(len(m["content"].split()) for m in json.loads(b)["messages"]) for b in bodies) / len(bodies)
    out = {name: measure(Path(args.module), picker, bodies, args.warmup)
           for name, picker in (("no picker", None), ("picker, no prefix affinity", {"prefix_chars": 0}),
                                ("picker (defaults)", {}))}
    base = out["no picker"]
    print(f"VM instructions per chat-session request (mean of {len(bodies) - args.warmup}, "
          f"{words:,.0f} prompt words on average):")
    for name, v in out.items():
        print(f"  {name}: {v:,.0f}" + (f" (+{v - base:,.0f})" if v != base else ""))


if __name__ == "__main__":
    main()
