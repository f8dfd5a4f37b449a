"""Command line: ``python -m e2e.mock_vllm --model M --port P [...]`` (see the package docstring)."""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading

from .generation import MAX_MODEL_LEN
from .metrics import DEFAULT_MAX_NUM_SEQS
from .server import MockServer

READY_RE = re.compile(r"^mock-vllm (\S+) listening on ([0-9.]+):(\d+)$")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.mock_vllm", description="Mock OpenAI-compatible vLLM server.")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="IPv4 loopback address only")
    p.add_argument("--api-key", action="append", default=[], dest="api_keys", help="accepted key (repeatable)")
    p.add_argument("--max-num-seqs", type=int, default=DEFAULT_MAX_NUM_SEQS, help="requests running at once")
    p.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    p.add_argument("--token-delay-ms", type=int, default=0, help="sleep between streamed tokens")
    p.add_argument("--keepalive-timeout", type=float, default=None, help="close idle connections after N s")
    a = p.parse_args(argv)
    try:
        server = MockServer(a.model, a.port, tuple(a.api_keys), host=a.host, max_num_seqs=a.max_num_seqs,
                            token_delay_ms=a.token_delay_ms, max_model_len=a.max_model_len,
                            keepalive_timeout=a.keepalive_timeout)
    except (OSError, ValueError) as e:
        print(f"mock-vllm {a.model}: cannot listen on {a.host}:{a.port}: {e}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"mock-vllm {a.model} listening on {server.host}:{server.port}", flush=True)
    while not stop.wait(1.0):
        pass
    server.shutdown()
    return 0
