"""What translating to a hosted provider's protocol costs, against the OpenAI pass-through in the same run.

    .venv/bin/python bench/ai/providers.py [--requests 100] [--rounds 3] [--runs 10]

1. VM instructions per request (wasmtime fuel; the machine's load does not move it): the plugin fed a chat request
   and its answer as each provider sends it (bodies from e2e/mock_providers; streams one event per chunk, as
   servers send them), JSON and streamed with 20 and 200 tokens; per streamed token = the difference / 180.
2. Envoy CPU per request in a real Envoy (wasm-config/envoy/ai-gateway-providers.yaml, 2 workers): mock vLLM
   (pass-through) and the provider mocks on loopback, requests one after another on a keep-alive connection,
   JSON and streamed with 10 and 60 tokens 1 ms apart (per token: the difference / 50); the median of --rounds
   interleaved rounds of --requests requests.
3. Time to the first content chunk of a stream through a fallback vLLM -> Anthropic (qwen2-1-5b answers 503;
   Envoy retry through the attempt filter, and HTTP callout) against asking Anthropic directly; the Anthropic
   mock sends one token every 20 ms; the median of --runs interleaved requests.

Writes bench/results/ai-providers.{md,json}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin", REPO / "build"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench.ai.instructions import MeteredHost  # noqa: E402
from e2e import mock_providers  # noqa: E402
from e2e.ai_stack import HELLO, QWEN, running_ai_stack  # noqa: E402
from e2e.mock_providers import anthropic, azure, gemini  # noqa: E402
from e2e.mock_providers.server import Fault, Request  # noqa: E402

CONFIG = REPO / "wasm-config/envoy/ai-gateway-providers.yaml"
RESULTS = REPO / "bench/results/ai-providers.md"  # and .json
PROVIDER_PORTS = {"anthropic": 18111, "gemini": 18112, "azure": 18113}
KEYS = {"anthropic": "sk-ant-mock-1", "gemini": "AIza-mock-1", "azure": "azure-mock-1"}
MODELS = {"openai": QWEN, "azure-openai": "gpt-4o", "anthropic": "claude-sonnet", "gemini": "gemini-flash"}
MOCK = {"azure-openai": "azure", "anthropic": "anthropic", "gemini": "gemini"}
TOKEN_MS = 1  # between streamed events in the Envoy CPU cells
QUESTION = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "lorem ipsum dolor sit amet " * 68}]


# -- 1. VM instructions --


class _Mock:
    keys: tuple = ()
    models: tuple = ()


def provider_answer(provider: str, body: dict[str, Any], path: str, tokens: int) -> tuple[str, list[bytes]]:
    """(content type, the answer's bytes in the chunks a server sends) for the request the plugin sent."""
    if provider == "openai":  # an OpenAI-compatible server's answer: the same bytes as Azure's below
        reply = azure.handle(_Mock(), Request("POST", "/openai/deployments/d/chat/completions", {"api-version": "1"},
                                              {}, json.dumps(body).encode()), Fault(tokens=tokens))
    else:
        api = {"azure-openai": azure, "anthropic": anthropic, "gemini": gemini}[provider]
        route, _, q = path.partition("?")
        query = dict(p.partition("=")[::2] for p in q.split("&") if p)
        reply = api.handle(_Mock(), Request("POST", route, query, {"anthropic-version": "2023-06-01"},
                                            json.dumps(body).encode()), Fault(tokens=tokens))
    assert reply.status == 200, (provider, reply.doc)
    if reply.events is None:
        return reply.content_type, [json.dumps(reply.doc).encode()]
    return reply.content_type, reply.events


def fuel_cell(host: MeteredHost, provider: str, stream: bool, tokens: int, n: int) -> float:
    body = {"model": MODELS[provider], "messages": QUESTION, "max_tokens": 256}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    raw = json.dumps(body).encode()

    def one() -> None:
        s = host.http_stream()
        s.send_request_headers({":method": "POST", ":path": "/v1/chat/completions", ":authority": "gw",
                                "content-type": "application/json", "content-length": str(len(raw))})
        s.send_request_body(raw, True)
        sent = json.loads(s.request_body)
        ctype, chunks = provider_answer(provider, sent, s.request_header(":path") or "", tokens)
        s.send_response_headers({":status": "200", "content-type": ctype})
        for i, c in enumerate(chunks):
            s.send_response_body(c, i == len(chunks) - 1)
        assert b"Hello" in s.response_body, s.response_body[:200]
        s.complete()

    for _ in range(10):
        one()
    host.fuel_per.clear()
    for _ in range(n):
        one()
    return sum(host.fuel_per.values()) / n


def vm_instructions(module: Path, n: int) -> dict[str, dict[str, float]]:
    host = MeteredHost(module)
    cfg = json.loads(_plugin_config())
    assert host.start(cfg), host.logs
    out = {}
    for provider in MODELS:
        j = fuel_cell(host, provider, False, 150, n)
        s20 = fuel_cell(host, provider, True, 20, n)
        s200 = fuel_cell(host, provider, True, 200, n)
        out[provider] = {"json": j, "stream_20": s20, "stream_200": s200, "per_token": (s200 - s20) / 180}
    return out


def _plugin_config() -> str:
    text = CONFIG.read_text()
    block = text.split("value: |\n", 1)[1].split("vm_config:", 1)[0]
    return block


# -- 2. Envoy CPU, 3. TTFT --


def cpu_s(pid: int) -> float:
    """The process's CPU time in seconds, at nanosecond resolution (every thread's schedstat; /proc/<pid>/stat
    counts in 10 ms ticks, too coarse for 100 requests)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that just ended
    return total / 1e9


def envoy_cpu(stack: Any, mocks: dict[str, Any], requests: int, rounds: int) -> dict[str, dict[str, float]]:
    host, port = stack.ai_url.rsplit("/", 1)[-1].split(":")
    pid = stack.envoy.proc.pid

    def cell(provider: str, stream: bool, tokens: int) -> float:
        body = {"model": MODELS[provider], "messages": HELLO, "max_tokens": tokens, "ignore_eos": True}
        delay = TOKEN_MS if stream else 0  # one event per chunk, as model servers stream (not coalesced reads)
        if provider == "openai":
            stack.qwen.reset()
            if delay:
                stack.qwen.fault(token_delay_ms=delay)
        else:
            del body["ignore_eos"]  # vLLM's; the providers' APIs reject unknown fields (the plugin drops it)
            mocks[MOCK[provider]].fault(tokens=tokens, token_delay_ms=delay)
        if stream:
            body["stream"] = True
        raw = json.dumps(body).encode()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        c0 = cpu_s(pid)
        for _ in range(requests):
            conn.request("POST", "/v1/chat/completions", raw, {"content-type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            assert r.status == 200, (provider, r.status, data[:300])
        cpu = cpu_s(pid) - c0
        conn.close()
        return cpu / requests * 1e6

    cells = [(p, s, t) for p in MODELS for (s, t) in ((False, 10), (True, 10), (True, 60))]
    got: dict[tuple[str, bool, int], list[float]] = {c: [] for c in cells}
    for _ in range(rounds):
        for c in cells:
            got[c].append(cell(*c))
    out = {}
    for p in MODELS:
        med = {k: statistics.median(got[(p, *k)]) for k in ((False, 10), (True, 10), (True, 60))}
        out[p] = {"json": med[(False, 10)], "stream_10": med[(True, 10)], "stream_60": med[(True, 60)],
                  "per_token": (med[(True, 60)] - med[(True, 10)]) / 50}
    return out


def ttft(stack: Any, model: str, tokens: int) -> tuple[float, float]:
    t0 = time.monotonic()
    first = 0.0
    with stack.client.chat.completions.with_streaming_response.create(
            model=model, messages=HELLO, stream=True, max_tokens=tokens) as r:
        assert r.headers.get("x-ai-served-model") == MODELS["anthropic"], r.headers
        for chunk in r.iter_bytes():
            if not first and b'"content":"' in chunk.replace(b'"content":""', b""):
                first = time.monotonic() - t0
    return first, time.monotonic() - t0


def fallback_ttft(stack: Any, mocks: dict[str, Any], runs: int) -> dict[str, dict[str, float]]:
    mocks["anthropic"].fault(tokens=30, token_delay_ms=20)
    stack.qwen.reset()
    stack.qwen.fault(status=503)
    rows = {"direct": MODELS["anthropic"], "retry": QWEN, "callout": "qwen-callout"}
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in rows}
    for _ in range(runs):
        for k, model in rows.items():
            got[k].append(ttft(stack, model, 30))
    stack.qwen.reset()
    mocks["anthropic"].fault()
    return {k: {"ttft_ms": statistics.median(f for f, _ in v) * 1000, "total_ms": statistics.median(t for _, t in v)
                * 1000} for k, v in got.items()}


class _Stack:
    def __init__(self, ai: Any) -> None:
        self.ai, self.ai_url, self.envoy, self.client, self.qwen = ai, ai.url, ai.envoy, ai.client, ai.qwen


def report(vm: dict, cpu: dict, fb: dict, args: argparse.Namespace) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    names = {"openai": "openai (pass-through, vLLM)", "azure-openai": "azure-openai", "anthropic": "anthropic",
             "gemini": "gemini"}
    base_vm, base_cpu = vm["openai"], cpu["openai"]
    lines = [f"# Upstream providers: translation cost vs the OpenAI pass-through ({now})", "",
             "`bench/ai/providers.py` (see its docstring for the method). VM instructions per request (wasmtime "
             "fuel: exact, load-independent); Envoy CPU per request (all threads' schedstat) in a real Envoy with 2 "
             "workers (median of "
             f"{args.rounds} interleaved rounds of {args.requests} requests; the mocks run on the same 2 cores, so "
             "these move by ~10% from run to run).", "",
             "| provider | VM instr. JSON | streamed, 200 tokens | per streamed token | Envoy CPU µs JSON | "
             "streamed, 60 tokens | per streamed token |", "|---|---:|---:|---:|---:|---:|---:|"]
    for p in MODELS:
        v, c = vm[p], cpu[p]
        rel = "" if p == "openai" else f" ({v['json'] / base_vm['json']:.2f}x)"
        rels = "" if p == "openai" else f" ({v['stream_200'] / base_vm['stream_200']:.2f}x)"
        lines.append(f"| {names[p]} | {v['json'] / 1e3:,.0f}k{rel} | {v['stream_200'] / 1e3:,.0f}k{rels} | "
                     f"{v['per_token'] / 1e3:,.1f}k | {c['json']:,.0f} | {c['stream_60']:,.0f} | "
                     f"{c['per_token']:,.1f} |")
    lines += ["", "JSON: a ~2 KB question (VM) or a short one (Envoy), the answer 150 (VM) or 10 (Envoy) tokens; the "
                  "OpenAI-compatible answer is the same bytes for openai and azure-openai (Azure's chunks, with their "
                  "content-filter members, are what makes its 25k per token: the pass-through's C path on larger "
                  "events). Per streamed token: the marginal cost over the stream, one provider event per chunk; Anthropic sends "
                  "one token per event, Gemini (and its mock) a few (3 here), so Gemini's events cost ~3x its per-token "
                  "figure."]
    lines += ["", f"Time to the first content chunk, streaming, Anthropic mock sending a token every 20 ms (median "
                  f"of {args.runs}):", "", "| path | TTFT ms | total ms |", "|---|---:|---:|"]
    label = {"direct": "claude-sonnet asked directly", "retry": "qwen2-1-5b answers 503 -> Envoy retry to Anthropic",
             "callout": "qwen-callout answers 503 -> HTTP callout to Anthropic (answer comes whole)"}
    for k, v in fb.items():
        lines.append(f"| {label[k]} | {v['ttft_ms']:.1f} | {v['total_ms']:.0f} |")
    lines += ["", f"Pass-through per streamed token: {base_vm['per_token'] / 1e3:.1f}k VM instructions, "
                  f"{base_cpu['per_token']:.1f} µs Envoy CPU.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--module", type=Path, default=REPO / "dist" / "ai-gateway.wasm")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    vm = vm_instructions(args.module, 50)
    print(json.dumps(vm, indent=1), flush=True)
    mocks = {k: mock_providers.serve(k, keys=[KEYS[k]]) for k in PROVIDER_PORTS}
    ports = {f"port_value: {p}}}": f"port_value: {mocks[k].port}}}" for k, p in PROVIDER_PORTS.items()}
    try:
        with running_ai_stack(replace=ports, config=CONFIG, model_ports={QWEN: 18101}) as ai:
            stack = _Stack(ai)
            cpu = envoy_cpu(stack, mocks, args.requests, args.rounds)
            print(json.dumps(cpu, indent=1), flush=True)
            fb = fallback_ttft(stack, mocks, args.runs)
            print(json.dumps(fb, indent=1), flush=True)
    finally:
        for m in mocks.values():
            m.shutdown()
    text = report(vm, cpu, fb, args)
    RESULTS.write_text(text)
    RESULTS.with_suffix(".json").write_text(json.dumps({"vm": vm, "envoy_cpu": cpu, "fallback_ttft": fb}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
