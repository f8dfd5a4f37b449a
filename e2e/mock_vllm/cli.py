"""Command line: ``python -m e2e.mock_vllm --model M --port P [...]`` (see the package docstring).

The engine flags are ``EngineConfig``'s fields (``--kv-capacity-tokens``); they shape the load model, which
``--load-model`` turns on (``--max-num-seqs`` and ``--max-loras`` count without it too).
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from dataclasses import fields

from .engine import EngineConfig
from .generation import MAX_MODEL_LEN
from .server import MockServer

READY_RE = re.compile(r"^mock-vllm (\S+) listening on ([0-9.]+):(\d+)$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m e2e.mock_vllm", description="Mock OpenAI-compatible vLLM server.")
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="IPv4 loopback address only")
    p.add_argument("--api-key", action="append", default=[], dest="api_keys", help="accepted key (repeatable)")
    p.add_argument("--max-model-len", type=int, default=MAX_MODEL_LEN)
    p.add_argument("--token-delay-ms", type=int, default=0, help="sleep between streamed tokens")
    p.add_argument("--keepalive-timeout", type=float, default=None, help="close idle connections after N s")
    p.add_argument("--load-model", action="store_true", help="queueing, batching and KV-cache load model (engine.py)")
    p.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME[=PATH]",
                   help="LoRA adapters the request's model may name (vLLM's syntax; JSON objects too)")
    p.add_argument("--enable-lora", action="store_true", help="accepted for vLLM compatibility (no effect)")
    defaults = EngineConfig()
    for f in fields(EngineConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=EngineConfig.HELP[f.name])
        else:
            p.add_argument(flag, type=type(default), default=default,
                           help=f"{EngineConfig.HELP[f.name]} (default {default})")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    engine = {f.name: getattr(a, f.name) for f in fields(EngineConfig)}
    try:
        server = MockServer(a.model, a.port, tuple(a.api_keys), host=a.host, token_delay_ms=a.token_delay_ms,
                            max_model_len=a.max_model_len, keepalive_timeout=a.keepalive_timeout,
                            load_model=a.load_model, lora_modules=a.lora_modules, **engine)
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
