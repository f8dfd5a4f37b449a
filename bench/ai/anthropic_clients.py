"""What an Anthropic Messages API client costs over an OpenAI client on the same model (issue 21, part 2): VM
instructions and Envoy CPU per request, JSON and streamed (and per streamed token), in one run.

    .venv/bin/python bench/ai/anthropic_clients.py      # ~1 min; writes bench/results/ai-anthropic-clients.{md,json}

Both clients ask the same thing of the benchmark's canned upstream (bench/ai/systems.py): the W1 question (~2 KB,
answered by a ~1 KB chat completion with usage) and the W2 question streamed (200 SSE events, the usage chunk,
``[DONE]``). The Anthropic request is the same question in the Messages API (``system``, ``max_tokens``).

* VM instructions (wasmtime fuel, load-independent), the plugin fed as Envoy feeds it; a streamed answer one event
  per chunk (as vLLM sends them). Per streamed token: the difference between 200 and 20 events, over 180.
* Envoy CPU per request (its process, the canned upstream listener included), one request in flight on a keep-alive
  connection, clients interleaved, median of ROUNDS rounds; the Envoy's canned upstream sends a stream in one piece.
"""

from __future__ import annotations

import http.client
import json
import statistics
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import systems  # noqa: E402
from cache import cpu_s  # noqa: E402

REQUESTS = 500
ROUNDS = 3
PAD = "lorem ipsum dolor sit amet "
SYSTEM = "You are a helpful assistant."
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def body(client: str, stream: bool) -> bytes:
    user = PAD * (8 if stream else 68)
    if client == "openai":
        doc: dict[str, Any] = {"model": "bench-model", "messages": [{"role": "system", "content": SYSTEM},
                                                                    {"role": "user", "content": user}],
                               "temperature": 0.2, "max_tokens": 256}
        if stream:
            doc.update(stream=True, stream_options={"include_usage": True})
    else:
        doc = {"model": "bench-model", "system": SYSTEM, "messages": [{"role": "user", "content": user}],
               "temperature": 0.2, "max_tokens": 256}
        if stream:
            doc["stream"] = True
    return json.dumps(doc).encode()


def _events(n: int) -> list[bytes]:
    return [e + b"\n\n" for e in systems.canned_sse(n).encode().split(b"\n\n") if e]


def fuel(client: str, stream: bool, events: int = 200, n: int = 100) -> float:
    """VM instructions per request."""
    from bench.ai.instructions import HEADERS, MeteredHost

    host = MeteredHost(systems.MODULE)
    assert host.start(systems.PLUGIN_CONFIG), host.logs
    b = body(client, stream)
    chunks = _events(events)

    def one() -> None:
        s = host.http_stream()
        s.send_request_headers({**HEADERS, ":path": PATHS[client], "content-length": str(len(b))})
        s.send_request_body(b, True)
        assert s.local_response is None, s.local_response
        if stream:
            s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
            for i, c in enumerate(chunks):
                s.send_response_body(c, i == len(chunks) - 1)
        else:
            s.send_response_headers({":status": "200", "content-type": "application/json"})
            s.send_response_body(systems.canned_json().encode(), False)
            s.send_response_body(b"", True)
        out = s.response_body
        assert (b"message_stop" in out or b'"type":"message"' in out) if client == "anthropic" else \
            (b'"usage"' in out), out[-300:]
        s.complete()

    for _ in range(30):
        one()
    host.fuel_per.clear()
    for _ in range(n):
        one()
    return sum(host.fuel_per.values()) / n


def run(url: str, pid: int, client: str, stream: bool, n: int) -> dict[str, float]:
    host, port = url.rsplit("/", 1)[-1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    b = body(client, stream)
    headers = {"content-type": "application/json", **({"x-bench-stream": "1"} if stream else {})}
    c0 = cpu_s(pid)
    for _ in range(n):
        conn.request("POST", PATHS[client], b, headers)
        r = conn.getresponse()
        data = r.read()
        assert r.status == 200, (r.status, data[:300])
        assert (b"message_stop" in data or b'"type":"message"' in data) if client == "anthropic" else \
            b'"usage"' in data, data[-300:]
    cpu = cpu_s(pid) - c0
    conn.close()
    return {"cpu_us_per_req": cpu / n * 1e6}


CASES = [(c, s) for s in (False, True) for c in ("openai", "anthropic")]


def main() -> None:
    vm = {f"{c} {'stream' if s else 'json'}": fuel(c, s) for c, s in CASES}
    for c in ("openai", "anthropic"):
        vm[f"{c} per token"] = (vm[f"{c} stream"] - fuel(c, True, events=20)) / 180
    systems.log("VM instructions per request: " + ", ".join(f"{k} {v / 1e3:,.1f}k" for k, v in vm.items()))
    results: dict[str, list[dict[str, float]]] = {f"{c} {'stream' if s else 'json'}": [] for c, s in CASES}
    for rnd in range(ROUNDS):
        with systems.envoy_system("b", 1, None) as sut:
            pid = sut.pids[0]
            for c, s in CASES:
                run(sut.url, pid, c, s, 50)  # warm up
            for c, s in CASES:
                results[f"{c} {'stream' if s else 'json'}"].append(run(sut.url, pid, c, s, REQUESTS))
        systems.log(f"round {rnd + 1}/{ROUNDS} done")
    med = {k: statistics.median(r["cpu_us_per_req"] for r in v) for k, v in results.items()}
    out = HERE.parent / "results"
    (out / "ai-anthropic-clients.json").write_text(json.dumps({"vm_instructions": vm, "envoy_cpu_us_median": med,
                                                               "runs": results}, indent=1))
    lines = ["# Anthropic Messages API clients against OpenAI clients (bench/ai/anthropic_clients.py)", "",
             "The same questions on the same model (the benchmark's canned upstream): W1's (~2 KB, a ~1 KB JSON "
             "answer) and W2's streamed (200 SSE events + usage + [DONE]).", "",
             "| client, answer | VM instructions / request | Envoy CPU µs / request |", "| --- | --- | --- |"]
    for k in results:
        lines.append(f"| {k} | {vm[k] / 1e3:,.0f}k | {med[k]:.0f} |")
    lines += ["", f"- per streamed token (one event per chunk): OpenAI client {vm['openai per token'] / 1e3:,.1f}k VM "
                  f"instructions (the events pass in C, Python sees the end), Anthropic client "
                  f"{vm['anthropic per token'] / 1e3:,.1f}k (each event translated in Python);",
              f"- JSON: the Anthropic client costs {vm['anthropic json'] / vm['openai json']:.2f}x the VM "
              f"instructions of the OpenAI client; streamed (200 events): "
              f"{vm['anthropic stream'] / vm['openai stream']:.2f}x;",
              f"- Envoy CPU ({REQUESTS} requests per case and round, median of {ROUNDS}, one request in flight): "
              f"JSON {med['anthropic json'] / med['openai json']:.2f}x, streamed "
              f"{med['anthropic stream'] / med['openai stream']:.2f}x (the canned stream arrives in one piece: "
              "per-event chunks cost more, see the per-token line); wall-clock CPU moves between runs on a shared "
              "machine, the VM instructions do not."]
    (out / "ai-anthropic-clients.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
