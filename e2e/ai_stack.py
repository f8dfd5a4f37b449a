"""The AI gateway in a real Envoy for e2e tests: mock vLLM processes + Envoy rendered from the shipped config.

``running_ai_stack()`` spawns one mock vLLM process per model on free ports and an Envoy (2 workers) running
``wasm-config/envoy/ai-gateway.yaml`` with those ports, a 0.25 s stats flush and a file access log of the AI log
(``%REQ(X-TEST-ID)%<TAB>%FILTER_STATE(wasm.ai_log:PLAIN)%`` per request, read with ``AiStack.ai_log()``).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openai import OpenAI

from e2e import mock_vllm
from e2e.client import Reply, request, wait_for
from e2e.envoy import REPO, Envoy, build_plugin, free_port, render

CONFIG = REPO / "wasm-config/envoy/ai-gateway.yaml"
WASM = REPO / "dist/ai-gateway.wasm"
QWEN, GEMMA, CANARY = "qwen2-1-5b", "gemma-2-2b", "chat-canary"
MODEL_PORTS = {QWEN: 18101, GEMMA: 18102}  # the mock ports written in CONFIG
LISTENER, ADMIN = 18000, 19000
FLUSH = "stats_flush_interval: 0.25s\n"  # histograms reach the admin API only at a stats flush
METRIC = "route_upstream_model_consumer_metric_"
ROUTE_LINE = "route: {cluster_header: x-ai-upstream, timeout: 120s}"
BUFFER_LINE = "per_connection_buffer_limit_bytes: 10485760"
HCM_ANCHOR = "          stat_prefix: ai_gateway\n"
ACCESS_LOG = """          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {path}
              log_format:
                text_format_source: {{inline_string: "%REQ(X-TEST-ID)%\\t%FILTER_STATE(wasm.ai_log:PLAIN)%\\n"}}
"""
HELLO = [{"role": "user", "content": "hello there"}]
# A ``replace`` for tests whose clients name their consumer themselves: x-mse-consumer declared trusted (the shipped
# demo config trusts no header; production puts an authentication in front, see the README)
TRUST_CONSUMER_HEADER = {'"aliases": [': '"consumer_header": "x-mse-consumer", "aliases": ['}
Labels = tuple[str, str, str, str]  # (ai_route, ai_cluster, ai_model, ai_consumer)


def build_wasm() -> Path:
    """Build dist/ai-gateway.wasm (a no-op when up to date); raise RuntimeError with the build output."""
    return build_plugin("ai_gateway")


def send(url: str, method: str = "GET", body: bytes | Any = None, headers: Mapping[str, str] | None = None,
         timeout: float = 15) -> Reply:
    """One request on a fresh connection; a non-bytes ``body`` is sent as JSON (with that content type)."""
    u = urllib.parse.urlsplit(url)
    path = u.path + (f"?{u.query}" if u.query else "")
    return request(u.port or 80, path, method, body, headers, timeout, u.hostname or "127.0.0.1")


class Mock:
    """A mock vLLM process, driven over its HTTP control API."""

    def __init__(self, model: str, port: int = 0) -> None:
        self.model = model
        self.proc = mock_vllm.spawn(model, port)
        self.port, self.url = self.proc.port, self.proc.url

    def fault(self, **keys: Any) -> None:
        r = send(f"{self.url}/mock/fault", "POST", keys)
        assert r.status == 200, r

    def requests(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        """Recorded requests to ``path`` (the last 50), oldest first."""
        return send(f"{self.url}/mock/requests?path={path}").json()["requests"]

    def count(self) -> int:
        """Requests received (any path) since the last reset."""
        return int(send(f"{self.url}/mock/requests").json()["count"])

    def finished(self) -> Counter[str]:
        """The mock's ``vllm:request_success_total`` by finished_reason (``abort``: the peer went away mid-answer).

        Not cleared by ``reset()``: compare before and after."""
        text = send(f"{self.url}/metrics").body.decode()
        found = re.findall(r'^vllm:request_success_total\{finished_reason="(\w+)",[^}]*\} (\S+)$', text, re.M)
        return Counter({reason: int(float(n)) for reason, n in found})

    def reset(self) -> None:
        send(f"{self.url}/mock/fault", "DELETE")
        send(f"{self.url}/mock/requests", "DELETE")

    def stop(self) -> None:
        self.proc.stop()

    def restart(self) -> None:
        """Start the process again on the same port (after ``stop()``)."""
        self.proc = mock_vllm.spawn(self.model, self.port)


@dataclass
class AiStack:
    url: str  # listener base URL
    envoy: Envoy
    mocks: dict[str, Mock]
    access_log: Path
    _client: OpenAI | None = field(default=None, repr=False)

    @property
    def qwen(self) -> Mock:
        return self.mocks[QWEN]

    @property
    def gemma(self) -> Mock:
        return self.mocks[GEMMA]

    @property
    def client(self) -> OpenAI:
        """The official client, without retries so every fault is visible."""
        if self._client is None:
            self._client = OpenAI(base_url=f"{self.url}/v1", api_key="sk-test", max_retries=0, timeout=15)
        return self._client

    def post(self, path: str, body: bytes | Any, headers: Mapping[str, str] | None = None) -> Reply:
        return send(self.url + path, "POST", body, headers)

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return send(self.url + path, "GET", None, headers)

    def reset(self) -> None:
        """Clear every mock's fault and recorded requests."""
        for m in self.mocks.values():
            m.reset()

    def ai_log(self) -> dict[str, str]:
        """X-Test-Id -> the AI log filter state of that request (``-`` when the plugin set none)."""
        if not self.access_log.exists():
            return {}
        lines = (line.split("\t", 1) for line in self.access_log.read_text().splitlines() if "\t" in line)
        return {tid: state for tid, state in lines if tid != "-"}

    def wait_ai_log(self, ids: set[str], timeout: float = 5.0) -> dict[str, str]:
        """The AI log lines of ``ids`` once all are written (the log file is flushed every 100 ms)."""
        wait_for(lambda: ids <= set(self.ai_log()), timeout)
        return self.ai_log()

    def metrics(self) -> dict[str, dict[Labels, float]]:
        """The plugin's metrics from /stats/prometheus: short name -> labels -> value."""
        return parse_metrics(self.envoy.prometheus())


def chat(stack: AiStack, model: str, messages: list[dict[str, str]] = HELLO, **kw: Any) -> Any:
    """A chat completion through the openai client; returns the raw response (``.headers``, ``.parse()``)."""
    return stack.client.chat.completions.with_raw_response.create(model=model, messages=messages, **kw)  # type: ignore[arg-type]


def streamed_text(raw: Any) -> tuple[str, list[Any]]:
    """(the concatenated delta contents, every chunk) of a streamed raw response."""
    chunks = list(raw.parse())
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def parse_metrics(text: str) -> dict[str, dict[Labels, float]]:
    out: dict[str, dict[Labels, float]] = {}
    for m in re.finditer(rf"^{METRIC}(\w+)\{{([^}}]*)\}} (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
        if "le" in labels:
            continue  # histogram buckets: tests use _count
        key = (labels["ai_route"], labels["ai_cluster"], labels["ai_model"], labels["ai_consumer"])
        out.setdefault(m[1], {})[key] = float(m[3])
    return out




def plugin_config(doc: Mapping[str, Any] | str) -> dict[str, str]:
    """A ``replace`` mapping that swaps CONFIG's whole plugin configuration for ``doc`` (JSON text or object)."""
    text = CONFIG.read_text()
    m = re.search(r"(                  value: \|\n)((?:                    .*\n)+)", text)
    assert m, "plugin configuration block not found in " + str(CONFIG)
    value = doc if isinstance(doc, str) else json.dumps(doc)
    return {m[0]: f"                  value: {json.dumps(value)}\n"}


def ai_config(listener: int, admin: int, ports: Mapping[str, int], access_log: Path | None = None,
              replace: Mapping[str, str] | None = None, route_timeout: str | None = None,
              buffer_limit: int | None = None, config: Path = CONFIG,
              model_ports: Mapping[str, int] = MODEL_PORTS) -> str:
    """CONFIG with test ports, fast stats flush and optional edits (``replace`` first, on the original text)."""
    edits = dict(replace or {})
    if route_timeout:
        edits[ROUTE_LINE] = ROUTE_LINE.replace("120s", route_timeout)
    if buffer_limit:
        edits[BUFFER_LINE] = f"per_connection_buffer_limit_bytes: {buffer_limit}"
    if access_log:
        edits[HCM_ANCHOR] = HCM_ANCHOR + ACCESS_LOG.format(path=access_log)
    text = config.read_text()
    for old in edits:
        assert old in text, f"{old!r} not in {config}"
    port_map = {LISTENER: listener, ADMIN: admin, **{model_ports[m]: p for m, p in ports.items()}}
    return FLUSH + render(text, port_map, edits)


@contextmanager
def running_ai_stack(replace: Mapping[str, str] | None = None, route_timeout: str | None = None,
                     buffer_limit: int | None = None, concurrency: int = 2, config: Path = CONFIG,
                     model_ports: Mapping[str, int] = MODEL_PORTS) -> Iterator[AiStack]:
    """Mock vLLM processes + Envoy on free ports. Raises RuntimeError (with Envoy's log tail) if Envoy refuses.

    ``config``: another shipped config, whose mock models and their fixed ports are ``model_ports``."""
    mocks: dict[str, Mock] = {}
    envoy: Envoy | None = None
    try:
        for model in model_ports:
            mocks[model] = Mock(model)
        listener, admin = free_port(), free_port()
        envoy = Envoy("", admin, concurrency)
        log = envoy.dir / "ai_log.txt"
        envoy.config = ai_config(listener, admin, {m: mk.port for m, mk in mocks.items()}, log, replace,
                                 route_timeout, buffer_limit, config, model_ports)
        envoy.start()
        yield AiStack(f"http://127.0.0.1:{listener}", envoy, mocks, log)
    finally:
        if envoy is not None:
            envoy.stop()
            shutil.rmtree(envoy.dir, ignore_errors=True)
        for m in mocks.values():
            m.stop()
