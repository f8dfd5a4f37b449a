"""Streaming as model servers send it: one SSE chunk per token. What a stream costs Envoy with and without the
gateway, per request and per chunk (a supplement to W2, whose mock answers 200 events in one body).

    .venv/bin/python bench/ai/tokens.py [--tokens 100] [--seconds 5] [--connections 8]

The upstream is the mock vLLM server (e2e/mock_vllm, one Python process on the wrk CPU; ignore_eos, so every
stream has --tokens tokens) with a 1 ms pause
between tokens, so each token reaches Envoy as its own chunk. The mock is slow, so req/s says nothing here:
the number is Envoy's CPU per request (and per chunk), with Envoy on CPU 0 as in bench/ai/run.py; each case runs
``--repeat`` times, interleaved with the others, and the median run is reported:

- a: Envoy alone;
- b/passthrough: ai-gateway, the client asks for usage itself (stream_options.include_usage): the stream passes
  through untouched and the VM keeps its last bytes (a response tap: C per chunk, Python once at the end);
- b/rewritten: ai-gateway, the client does not ask for usage: the gateway asks on its behalf and removes the
  usage-only event it adds (inject_stream_usage, strip_injected_usage): chunks that cannot hold it pass without
  Python (skip_response_events), the others reach the SSE scanner.

Writes bench/results/ai-tokens.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from bench.ai import run, systems  # noqa: E402
from e2e.envoy import Envoy, free_port  # noqa: E402
from e2e.mock_vllm.process import spawn  # noqa: E402

LUA = """wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["content-type"] = "application/json"
wrk.headers["x-bench-stream"] = "1"  -- status.lua: a complete stream ends with data: [DONE]
wrk.body = '{"model":"bench-model","stream":true,%s"max_tokens":%d,"ignore_eos":true,"messages":[{"role":"user","content":"hi"}]}'
"""
CASES = {"a": ("a", True), "b/passthrough": ("b", True), "b/rewritten": ("b", False)}


def envoy_yaml(system: str, admin: int, listen: int, upstream: int, module: Path = systems.MODULE) -> str:
    """bench/ai/run.py's config for ``system`` with its cluster ``llm`` on the mock, without the canned listener."""
    cfg = json.loads(systems.envoy_config(system, admin, listen, free_port(), module))
    cfg["static_resources"]["listeners"] = cfg["static_resources"]["listeners"][:1]
    for c in cfg["static_resources"]["clusters"]:
        for ep in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            ep["endpoint"]["address"]["socket_address"]["port_value"] = upstream
    return json.dumps(cfg)


def median_run(runs: list[dict]) -> dict:
    """The median of a case's runs (Envoy is mostly idle, waiting for tokens, so one run moves by ±20 %)."""
    runs = sorted(runs, key=lambda c: c["cpu_us_per_request"])
    return {**runs[len(runs) // 2], "cpu_us_per_request_runs": [c["cpu_us_per_request"] for c in runs]}


def one_run(system: str, usage: bool, mock_port: int, a: argparse.Namespace) -> dict:
    admin, listen = free_port(), free_port()
    body = LUA % ('"stream_options":{"include_usage":true},' if usage else "", a.tokens)
    with Envoy(envoy_yaml(system, admin, listen, mock_port, a.module), admin, 1) as envoy, \
            tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        pid = envoy.proc.pid  # type: ignore[union-attr]
        m.pin(pid, {0})
        lua.write(body + "\n" + systems.STATUS_LUA.read_text())
        lua.flush()
        url = f"http://127.0.0.1:{listen}"
        run.run_wrk(url, Path(lua.name), 1, a.connections, {1})
        m.wait_idle([pid])
        cpu0 = m.cpu_seconds(pid)
        res = run.run_wrk(url, Path(lua.name), a.seconds, a.connections, {1})
        cpu = m.cpu_seconds(pid) - cpu0
    us = cpu / max(res.requests, 1) * 1e6
    return {"wrk": res.as_dict(), "requests": res.requests, "errors": res.errors, "cpu_us_per_request": us,
            "cpu_us_per_chunk": us / a.tokens}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5, help="runs per case (interleaved); the median is reported")
    ap.add_argument("--out", type=Path, default=run.RESULTS)
    ap.add_argument("--module", type=Path, default=systems.MODULE,
                    help="the plugin module of b (default dist/ai-gateway.wasm): compare builds")
    a = ap.parse_args(argv)
    a.module = a.module.resolve()
    if a.seconds > 5:
        ap.error("runs are bounded to 5 s")
    m.ensure_wrk()
    mock = spawn("bench-model", args=("--token-delay-ms", "1"))
    try:
        m.pin(mock.pid, {1})
        r = {"when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "tokens": a.tokens,
             "connections": a.connections, "seconds": a.seconds, "loadavg_1m_at_start": os.getloadavg()[0],
             "cases": {}}
        runs: dict[str, list[dict]] = {name: [] for name in CASES}
        for _ in range(a.repeat):  # cases interleaved, so that the machine's drift touches each alike
            for name, (system, usage) in CASES.items():
                runs[name].append(one_run(system, usage, mock.port, a))
        r["cases"] = {name: median_run(each) for name, each in runs.items()}
    finally:
        mock.stop()
    m.write_results(a.out, "ai-tokens", r, markdown(r))


def markdown(r: dict) -> str:
    base, tokens = r["cases"]["a"]["cpu_us_per_request"], r["tokens"]
    rows = ["| System | streams | Envoy CPU µs/stream (median; runs) | over a, µs/stream | over a, µs/chunk | errors |",
            "|---|---:|---:|---:|---:|---|"]
    for name, c in r["cases"].items():
        extra = c["cpu_us_per_request"] - base
        each = ", ".join(f"{x:,.0f}" for x in c["cpu_us_per_request_runs"])
        rows.append(f"| {name} | {c['requests']:,} | {c['cpu_us_per_request']:,.0f} ({each}) | "
                    f"{'—' if name == 'a' else f'{extra:+,.0f}'} | "
                    f"{'—' if name == 'a' else f'{extra / tokens:+.1f}'} | "
                    f"{c['errors']} |")
    return (f"# Streaming one chunk per token (bench/ai/tokens.py)\n\n{r['when']} · {r['tokens']} tokens a stream, "
            f"1 ms apart, {r['connections']} connections, {r['seconds']:.0f} s per run · Envoy on CPU 0, wrk and "
            "the mock on CPU 1\n\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
