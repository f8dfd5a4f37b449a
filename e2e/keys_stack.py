"""Private helpers of e2e/test_ai_keys.py: the AI gateway (Envoy, 2 workers) with upstream API-key pools.

Each pooled model gets its own Envoy cluster and mock vLLM process, which accepts only some of the pool's keys
(401 ``{"error": "Unauthorized"}`` for the others). Keys are random per run, so grepping for them is meaningful.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e import mock_vllm
from e2e.ai_stack import Reply, ai_config, plugin_config, send
from e2e.envoy import Envoy, free_port

CLUSTERS_LINE = "  clusters:\n"
CLUSTER = """  - name: kp-{model}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: kp-{model}
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
CLIENT_SECRET = "client-secret"
HELLO = [{"role": "user", "content": "hello there"}]


def fingerprint(key: str) -> str:
    """The plugin's key fingerprint: the first 8 hex digits of sha256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Pool:
    model: str
    keys: tuple[str, ...]  # short names, in pool order; the real secrets are in KeyStack.keys
    accepted: tuple[str, ...]  # short names the model's mock accepts (never empty: no keys = accept all)
    options: Mapping[str, Any] = field(default_factory=dict)  # other models[].api_keys fields


class KeyMock:
    """One model's mock vLLM process, driven over its HTTP control API."""

    def __init__(self, model: str, accepted: tuple[str, ...]) -> None:
        self.proc = mock_vllm.spawn(model, 0, api_keys=accepted)
        self.port, self.url = self.proc.port, self.proc.url

    def fault(self, **keys: Any) -> None:
        assert send(f"{self.url}/mock/fault", "POST", keys).status == 200

    def records(self, path: str = "/v1/chat/completions") -> list[dict[str, Any]]:
        """Received requests to ``path`` (the last 50), oldest first."""
        return send(f"{self.url}/mock/requests?path={path}").json()["requests"]

    def reset(self) -> None:
        send(f"{self.url}/mock/fault", "DELETE")
        send(f"{self.url}/mock/requests", "DELETE")


def bearer(rec: Mapping[str, Any]) -> str | None:
    """The key a recorded request carried (its ``api_key`` is None when the mock refused it)."""
    scheme, _, token = (rec["headers"].get("authorization") or "").partition(" ")
    return token if scheme.lower() == "bearer" else None


@dataclass
class KeyStack:
    url: str
    envoy: Envoy
    listener: int
    keys: dict[str, str]  # short name -> secret
    mocks: dict[str, KeyMock]  # model -> its mock
    access_log: Path

    def name_of(self, secret: str | None) -> str | None:
        return next((n for n, k in self.keys.items() if k == secret), secret)

    def used(self, model: str, path: str = "/v1/chat/completions") -> list[str | None]:
        """Short names of the keys the model's mock saw on ``path``, oldest first."""
        return [self.name_of(bearer(r)) for r in self.mocks[model].records(path)]

    def chat(self, model: str, stream: bool = False, headers: Mapping[str, str] | None = None) -> Reply:
        """A chat completion on a fresh connection, with the client's own credential."""
        body = {"model": model, "messages": HELLO, "stream": stream}
        hdrs = {"authorization": f"Bearer {CLIENT_SECRET}", "connection": "close", **(headers or {})}
        return send(f"{self.url}/v1/chat/completions", "POST", body, hdrs)

    def worker_connections(self) -> dict[str, int]:
        """Downstream connections accepted by each Envoy worker on the listener."""
        stats = self.envoy.stats(f"listener.127.0.0.1_{self.listener}.worker_")
        return {k.split(".")[-2]: v for k, v in stats.items() if k.endswith(".downstream_cx_total")}

    def key_metrics(self) -> dict[tuple[str, str, str], float]:
        """(metric, ai_key_pool, ai_key) -> value of the per-key metrics in /stats/prometheus."""
        out = {}
        for m in re.finditer(r"^\w*keypool_key_metric_(\w+)\{([^}]*)\} (\S+)$", self.envoy.prometheus(), re.M):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', m[2]))
            out[(m[1], labels.get("ai_key_pool", ""), labels.get("ai_key", ""))] = float(m[3])
        return out


def gateway_config(pools: list[Pool], keys: Mapping[str, str]) -> dict[str, Any]:
    models = []
    for p in pools:
        api_keys = {"keys": [keys[k] for k in p.keys], **p.options}
        models.append({"name": p.model, "cluster": f"kp-{p.model}", "api_keys": api_keys})
    return {"models": models}


@contextmanager
def running_key_stack(pools: list[Pool], concurrency: int = 2) -> Iterator[KeyStack]:
    names = {k for p in pools for k in (*p.keys, *p.accepted)}
    keys = {n: f"sk-e2e-{n}-{secrets.token_hex(8)}" for n in sorted(names)}
    mocks: dict[str, KeyMock] = {}
    envoy: Envoy | None = None
    try:
        for p in pools:
            assert p.accepted, "a mock without keys accepts every key"
            mocks[p.model] = KeyMock(p.model, tuple(keys[k] for k in p.accepted))
        listener, admin = free_port(), free_port()
        envoy = Envoy("", admin, concurrency)
        log = envoy.dir / "ai_log.txt"
        clusters = "".join(CLUSTER.format(model=p.model, port=mocks[p.model].port) for p in pools)
        replace = {**plugin_config(json.dumps(gateway_config(pools, keys))), CLUSTERS_LINE: CLUSTERS_LINE + clusters}
        envoy.config = ai_config(listener, admin, {}, log, replace)
        envoy.start()
        yield KeyStack(f"http://127.0.0.1:{listener}", envoy, listener, keys, mocks, log)
    finally:
        if envoy is not None:
            envoy.stop()
            shutil.rmtree(envoy.dir, ignore_errors=True)
        for m in mocks.values():
            m.proc.stop()


def wait_until(check: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check()`` until it returns something truthy (returned) or ``timeout`` s pass (the last result)."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got or time.monotonic() >= deadline:
            return got
        time.sleep(interval)
