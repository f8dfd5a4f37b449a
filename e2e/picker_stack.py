"""Private helpers of e2e/test_endpoint_picker.py: the AI gateway with an endpoint picker in a real Envoy.

Three mock vLLM processes serve one model ("llama") and sit behind ``wasm-config/envoy/ai-gateway-endpoint-picker.yaml``'s
ORIGINAL_DST cluster ``llama-pool``; the plugin configuration is swapped for a fast-scraping one on the mocks' ports.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from e2e import mock_vllm
from e2e.ai_stack import send
from e2e.client import Reply
from e2e.envoy import REPO, Envoy, free_port, render

CONFIG = REPO / "wasm-config/envoy/ai-gateway-endpoint-picker.yaml"
MODEL, BATCH = "llama", "llama-batch"
DEST = "x-gateway-destination-endpoint"
HELLO = [{"role": "user", "content": "hello there"}]
PICKER = {"scrape_interval_ms": 100, "stale_after_ms": 500, "scrape_timeout_ms": 300,
          # saturated at 2 running requests (the mock's KV usage is running / 8): easy to reach in a test
          "queue_threshold": 2, "kv_cache_threshold": 0.25}


def plugin_config(ports: list[int]) -> dict[str, Any]:
    eps = [f"127.0.0.1:{p}" for p in ports]
    return {"models": [
        {"name": MODEL, "cluster": "llama-pool", "endpoint_picker": {"endpoints": eps, **PICKER}},
        {"name": BATCH, "cluster": "llama-pool", "upstream_model": MODEL, "criticality": "sheddable"},
    ]}


def envoy_config(listener: int, admin: int, doc: Mapping[str, Any]) -> str:
    text = CONFIG.read_text()
    m = re.search(r"(                  value: \|\n)((?:                    .*\n)+)", text)
    assert m, "plugin configuration block not found in " + str(CONFIG)
    return render(text, {18000: listener, 19000: admin}, {m[0]: f"                  value: {json.dumps(json.dumps(doc))}\n"})


class Pod:
    """One mock vLLM process (a model server pod)."""

    def __init__(self, port: int = 0) -> None:
        self.proc = mock_vllm.spawn(MODEL, port)
        self.port = self.proc.port
        self.addr = f"127.0.0.1:{self.port}"
        self.url = self.proc.url
        self.busy: list[threading.Thread] = []

    def chats(self) -> list[dict[str, Any]]:
        """Chat completions received (the last 50), oldest first."""
        return send(f"{self.url}/mock/requests?path=/v1/chat/completions").json()["requests"]

    def count(self, path: str) -> int:
        return int(send(f"{self.url}/mock/requests?path={path}").json()["count"])

    def occupy(self, n: int, ms: int) -> None:
        """``n`` requests sent straight to the pod (not through the gateway) that run for ``ms`` each."""
        body = {"model": MODEL, "messages": HELLO}
        for _ in range(n):
            t = threading.Thread(target=send, args=(f"{self.url}/v1/chat/completions", "POST", body,
                                                    {"x-mock-delay-ms": str(ms)}, 30), daemon=True)
            t.start()
            self.busy.append(t)

    def release(self) -> None:
        """Wait for the occupying requests to end."""
        for t in self.busy:
            t.join(30)
        self.busy.clear()

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        self.proc = mock_vllm.spawn(MODEL, self.port)


@dataclass
class PickerStack:
    url: str
    envoy: Envoy
    pods: list[Pod]

    def chat(self, model: str = MODEL, headers: Mapping[str, str] | None = None,
             messages: list[dict[str, str]] | None = None) -> Reply:
        """A chat completion through the gateway on a fresh connection (so both workers serve some)."""
        return send(f"{self.url}/v1/chat/completions", "POST", {"model": model, "messages": messages or HELLO},
                    headers)

    def gauges(self, name: str) -> dict[str, int]:
        """ip:port -> the picker's gauge ``name`` (up, waiting, running, kv_cache_percent)."""
        stats = self.envoy.stats("wasmcustom.picker.")
        suffix = f".metric.{name}"
        out = {}
        for k, v in stats.items():
            if k.endswith(suffix) and ".endpoint." in k:
                out[k.split(".endpoint.", 1)[1].removesuffix(suffix)] = v
        return out

    def prometheus(self, metric: str) -> dict[tuple[tuple[str, str], ...], float]:
        """Samples of ``<prefix>picker_<metric>`` in /stats/prometheus, by their label pairs."""
        out = {}
        for m in re.finditer(rf"^\w*picker_{metric}\{{([^}}]*)\}} (\S+)$", self.envoy.prometheus(), re.M):
            out[tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m[1])))] = float(m[2])
        return out


@contextmanager
def running_picker_stack(pods: int = 3, concurrency: int = 2) -> Iterator[PickerStack]:
    started: list[Pod] = []
    envoy: Envoy | None = None
    try:
        started = [Pod() for _ in range(pods)]
        listener, admin = free_port(), free_port()
        envoy = Envoy(envoy_config(listener, admin, plugin_config([p.port for p in started])), admin, concurrency)
        envoy.start()
        yield PickerStack(f"http://127.0.0.1:{listener}", envoy, started)
    finally:
        if envoy is not None:
            envoy.stop()
            shutil.rmtree(envoy.dir, ignore_errors=True)
        for p in started:
            p.release()
            p.stop()
