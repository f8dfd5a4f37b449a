"""Time to the first content chunk through a fallback, against asking the fallback model directly.

    .venv/bin/python bench/ai/fallback.py [--runs 20] [--tokens 30] [--token-ms 20]

wasm-config/envoy/ai-gateway-fallback.yaml in a real Envoy (2 workers), mock vLLM servers on loopback, the
official openai client streaming; gemma-2-2b sends one token every --token-ms. Rows:

- direct: gemma-2-2b asked directly;
- retry, after 503 / refused: qwen2-1-5b asked, which answers 503 (or is not listening); the fallback is an
  Envoy retry through the aggregate cluster and the attempt filter (``fallback.cluster``);
- callout, after 503: the same with ``fallback.cluster`` removed: the fallback is an HTTP callout, whose answer
  Envoy buffers (the only path before issue 17, still used for RAND).

Each row: median TTFT and total time over --runs requests (interleaved), the TTFT ratio against direct.
Writes bench/results/ai-fallback.{md,json}.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, REPO / "plugin"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from bench import measure as m  # noqa: E402
from e2e.ai_stack import GEMMA, HELLO, QWEN, AiStack, running_ai_stack  # noqa: E402

CONFIG = REPO / "wasm-config/envoy/ai-gateway-fallback.yaml"
PORTS = {QWEN: 18101, GEMMA: 18102, "llama-3-8b": 18103}
NATIVE = '"cluster": "qwen2-1-5b-fallback",'


def ttft(stack: AiStack, model: str, tokens: int) -> tuple[float, float]:
    """(seconds to the first content chunk, seconds to the end) of one streamed chat."""
    t0 = time.monotonic()
    first = 0.0
    with stack.client.chat.completions.with_streaming_response.create(
            model=model, messages=HELLO, stream=True, max_tokens=tokens, extra_body={"ignore_eos": True}) as r:
        assert r.headers.get("x-ai-served-model") == GEMMA, r.headers
        for chunk in r.iter_bytes():
            if not first and b'"content":"' in chunk.replace(b'"content":""', b""):
                first = time.monotonic() - t0
    return first, time.monotonic() - t0


def measure(stack: AiStack, rows: dict[str, list[tuple[float, float]]], names: tuple[str, ...], args: argparse.Namespace,
            refused: bool = False) -> None:
    stack.reset()
    stack.gemma.fault(token_delay_ms=args.token_ms)
    for _ in range(args.runs):  # interleaved: direct, then through the fallback
        rows[names[0]].append(ttft(stack, GEMMA, args.tokens))
        stack.qwen.fault(status=503)
        rows[names[1]].append(ttft(stack, QWEN, args.tokens))
        stack.qwen.reset()
    if refused:
        stack.qwen.stop()
        try:
            rows[names[2]] += [ttft(stack, QWEN, args.tokens) for _ in range(args.runs)]
        finally:
            stack.qwen.restart()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--tokens", type=int, default=30)
    p.add_argument("--token-ms", type=int, default=20)
    p.add_argument("--out", type=Path, default=REPO / "bench/results")
    args = p.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {k: [] for k in (
        "direct", "retry, after 503", "retry, after refused", "direct (callout run)", "callout, after 503")}
    with running_ai_stack(config=CONFIG, model_ports=PORTS) as stack:
        measure(stack, rows, ("direct", "retry, after 503", "retry, after refused"), args, refused=True)
    with running_ai_stack(config=CONFIG, model_ports=PORTS, replace={NATIVE: ""}) as stack:
        measure(stack, rows, ("direct (callout run)", "callout, after 503"), args)
    med = {k: (statistics.median(a for a, _ in v), statistics.median(b for _, b in v)) for k, v in rows.items()}
    lines = [f"# Fallback TTFT ({args.tokens} tokens, one every {args.token_ms} ms; median of {args.runs})", "",
             "| case | TTFT ms | total ms | TTFT / direct |", "| --- | ---: | ---: | ---: |"]
    for k, (first, total) in med.items():
        base = med["direct (callout run)" if "callout" in k else "direct"][0]
        lines.append(f"| {k} | {first * 1000:.1f} | {total * 1000:.0f} | {first / base:.2f} |")
    m.write_results(args.out, "ai-fallback", {"args": vars(args) | {"out": str(args.out)}, "runs": rows,
                                                "median": med}, "\n".join(lines))


if __name__ == "__main__":
    main()
