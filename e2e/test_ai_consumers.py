"""Consumers in real Envoys: two Envoy processes (replicas) share one redis-server through webdis (stock Envoy's
way to Redis: an HTTP callout), the official openai client sees one limit enforced across both, errors it can
tell apart, and its key never reaches the model server. The Higress build does not load in stock Envoy."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI

from e2e.ai_stack import GEMMA, HELLO, MODEL_PORTS, QWEN, Mock, ai_config, plugin_config, send
from e2e.client import request, wait_for
from e2e.envoy import REPO, Envoy, free_port
from tests.redis_server import Redis, redis_server, webdis

CLUSTERS_LINE = "  clusters:\n"
WEBDIS_CLUSTER = """  - name: webdis
    type: STATIC
    connect_timeout: 0.25s
    load_assignment:
      cluster_name: webdis
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}
"""
RPM = 4  # team-a's requests a minute, across both replicas


@dataclass
class Replicas:
    urls: list[str]
    envoys: list[Envoy]
    mocks: dict[str, Mock]
    redis: Redis
    keys: dict[str, str]

    def client(self, i: int, who: str = "team-a") -> OpenAI:
        return OpenAI(base_url=f"{self.urls[i]}/v1", api_key=self.keys[who], max_retries=0, timeout=15,
                      default_headers={"connection": "close"})


def gateway(keys: dict[str, str]) -> dict[str, Any]:
    return {
        "models": [{"name": QWEN, "cluster": QWEN, "fallback": {"models": [GEMMA]}}, {"name": GEMMA, "cluster": GEMMA}],
        "consumers": [
            {"name": "team-a", "keys": [keys["team-a"]], "limits": [{"requests": RPM, "per": "minute"}]},
            {"name": "team-b", "keys": [keys["team-b"]], "limits": [{"tokens": 10**6, "per": "day"}], "quota": True},
            {"name": "ops", "keys": [keys["ops"]], "admin": True},
        ],
        "store": {"backend": "redis", "on_error": "deny", "timeout_ms": 1000,
                  "redis": {"transport": "webdis", "cluster": "webdis", "prefix": "e2e:"}},
    }


@pytest.fixture(scope="module")
def replicas(ai_gateway_wasm: Path) -> Iterator[Replicas]:
    keys = {n: f"sk-{n}-{secrets.token_hex(12)}" for n in ("team-a", "team-b", "ops")}
    with ExitStack() as stack:
        redis = stack.enter_context(redis_server())
        webdis_port = stack.enter_context(webdis(redis.port))
        mocks = {m: Mock(m) for m in MODEL_PORTS}
        stack.callback(lambda: [m.stop() for m in mocks.values()])
        urls, envoys = [], []
        for _ in range(2):
            url, envoy = envoy_with_webdis(stack, gateway(keys), mocks, webdis_port)
            urls.append(url)
            envoys.append(envoy)
        yield Replicas(urls, envoys, mocks, redis, keys)


def envoy_with_webdis(stack: ExitStack, doc: dict[str, Any], mocks: dict[str, Mock], webdis_port: int,
                      access_log: bool = False) -> tuple[str, Envoy]:
    """An Envoy running the gateway with ``doc``, a ``webdis`` cluster, the mocks' ports (and the AI log written
    to ``envoy.dir / "ai_log.txt"``), stopped when ``stack`` closes; (its URL, the Envoy)."""
    listener, admin = free_port(), free_port()
    envoy = Envoy("", admin, 2)
    replace = {**plugin_config(json.dumps(doc)), CLUSTERS_LINE: CLUSTERS_LINE + WEBDIS_CLUSTER.format(port=webdis_port)}
    envoy.config = ai_config(listener, admin, {m: mk.port for m, mk in mocks.items()},
                             envoy.dir / "ai_log.txt" if access_log else None, replace)
    stack.callback(shutil.rmtree, envoy.dir, True)
    stack.callback(envoy.stop)
    envoy.start()
    return f"http://127.0.0.1:{listener}", envoy


def test_one_limit_across_two_envoys(replicas: Replicas) -> None:
    seen = []
    for i in range(RPM):
        raw = replicas.client(i % 2).chat.completions.with_raw_response.create(model=QWEN, messages=HELLO)
        assert raw.http_response.status_code == 200
        seen.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert seen == [RPM - 1 - i for i in range(RPM)]  # counted across both replicas
    for i in range(2):  # either replica refuses the next one
        with pytest.raises(openai.RateLimitError) as e:
            replicas.client(i).chat.completions.create(model=QWEN, messages=HELLO)
        assert e.value.code == "rate_limit_exceeded" and e.value.type == "requests"
        assert 1 <= int(e.value.response.headers["retry-after"]) <= 60
    for envoy in replicas.envoys:  # per consumer and reason, as Prometheus labels (the shipped stats_tags)
        assert wait_for(lambda envoy=envoy: re.search(
            r'^aigw_consumer_reason_rejected\{ai_consumer="team-a",ai_reason="rate_limit_exceeded"\} 1$',
            envoy.prometheus(), re.M) is not None, timeout=5), envoy.prometheus()[-2000:]


def test_bad_keys_and_no_key_upstream(replicas: Replicas) -> None:
    bad = OpenAI(base_url=f"{replicas.urls[0]}/v1", api_key="sk-not-a-consumer-000", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model=GEMMA, messages=HELLO)
    assert e.value.code == "invalid_api_key" and "sk-not" not in str(e.value)
    assert e.value.response.headers["www-authenticate"].startswith("Bearer")
    replicas.mocks[GEMMA].reset()
    set_quota(replicas, 1, {"set": 1000})
    replicas.client(1, "team-b").chat.completions.create(model=GEMMA, messages=HELLO)
    (rec,) = replicas.mocks[GEMMA].requests()
    assert "authorization" not in rec["headers"]  # the client's key stayed in the gateway
    assert rec["headers"]["x-mse-consumer"] == "team-b"
    for envoy in replicas.envoys:
        assert replicas.keys["team-b"] not in envoy.log_text()


def set_quota(replicas: Replicas, i: int, body: dict[str, int]) -> int:
    r = send(f"{replicas.urls[i]}/ai-gateway/consumers/team-b/quota", "POST", body,
             {"authorization": f"Bearer {replicas.keys['ops']}"})
    assert r.status == 200, r
    return r.json()["quota"]


def quota(replicas: Replicas, i: int) -> int:
    r = send(f"{replicas.urls[i]}/ai-gateway/consumers/team-b/quota", "GET", None,
             {"authorization": f"Bearer {replicas.keys['ops']}"})
    assert r.status == 200, r
    return r.json()["quota"]


@pytest.mark.parametrize("stream", [False, True])
def test_tokens_charged_once_through_fallback_and_seen_by_both(replicas: Replicas, stream: bool) -> None:
    set_quota(replicas, 0, {"set": 5000})
    replicas.mocks[QWEN].fault(status=500)  # qwen fails: the gateway falls back to gemma
    try:
        c = replicas.client(0, "team-b")
        if stream:
            raw = c.chat.completions.with_raw_response.create(model=QWEN, messages=HELLO, stream=True,
                                                              stream_options={"include_usage": True})
            used = list(raw.parse())[-1].usage.total_tokens
        else:
            raw = c.chat.completions.with_raw_response.create(model=QWEN, messages=HELLO)
            used = raw.parse().usage.total_tokens
    finally:
        replicas.mocks[QWEN].reset()
    assert raw.headers["x-ai-served-model"] == GEMMA and raw.headers["x-ai-fallback-from"] == QWEN
    assert raw.headers["x-ratelimit-limit-tokens"] == str(10**6)
    assert used > 0
    assert wait_quota(replicas, 1, 5000 - used)  # charged once, to team-b, seen from the other replica
    day = [k for k in replicas.redis.cli("--scan", "--pattern", "e2e:rl:team-b*").split()]
    assert day and int(replicas.redis.cli("GET", day[0])) >= used


def wait_quota(replicas: Replicas, i: int, want: int) -> bool:
    """The charge is written after the answer reached the client: wait (bounded) until it shows."""
    for _ in range(50):
        if quota(replicas, i) == want:
            return True
        time.sleep(0.05)
    return quota(replicas, i) == want


def test_hostile_spellings_are_authenticated_and_charged(replicas: Replicas) -> None:
    url, port = replicas.urls[0], int(replicas.urls[0].rsplit(":", 1)[1])
    body = {"model": GEMMA, "messages": HELLO}
    for path in ("//v1/chat/completions", "/v1/chat/completions/", "/v1/%63hat/completions", "/v1/./chat/completions",
                 "/v1/chat/completions?stream=false"):
        r = send(url + path, "POST", body)
        assert r.status == 401 and r.json()["error"]["code"] == "invalid_api_key", (path, r.status)
    r = send(url + "/v1/chat/completions", "POST", b"not json", {"content-type": "text/plain"})
    assert r.status == 401  # authentication first, whatever the content type
    set_quota(replicas, 0, {"set": 5000})
    key = {"authorization": f"Bearer {replicas.keys['team-b']}"}
    raw = json.dumps(body).encode()
    got = request(port, "//v1/chat/completions/?x=1", "POST", [raw[:10], raw[10:]], key)  # chunked, odd path
    assert got.status == 200, got.body
    used = got.json()["usage"]["total_tokens"]
    assert wait_quota(replicas, 1, 5000 - used)  # charged like the usual spelling


def test_quota_exhausted_is_insufficient_quota(replicas: Replicas) -> None:
    set_quota(replicas, 0, {"set": 0})
    with pytest.raises(openai.RateLimitError) as e:
        replicas.client(1, "team-b").chat.completions.create(model=GEMMA, messages=HELLO)
    assert e.value.code == "insufficient_quota"


def test_redis_down_fails_closed_as_configured(replicas: Replicas) -> None:
    replicas.redis.stop()
    with pytest.raises(openai.InternalServerError) as e:
        replicas.client(0, "team-b").chat.completions.create(model=GEMMA, messages=HELLO)
    assert e.value.status_code == 503 and e.value.code == "rate_limit_unavailable"
    stats = replicas.envoys[0].stats("wasmcustom.aigw.consumers.store_unavailable")
    assert sum(stats.values()) >= 1


def test_higress_build_does_not_load_in_stock_envoy(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, str(REPO / "build/pwbuild"), "ai_gateway", "--variant", "higress"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    listener, admin = free_port(), free_port()
    replace = {"dist/ai-gateway.wasm": str(REPO / "dist/ai-gateway-higress.wasm")}
    envoy = Envoy(ai_config(listener, admin, {}, None, replace), admin, 1)
    try:
        with pytest.raises(RuntimeError) as e:
            envoy.start(timeout=30)
        # Envoy 1.40: "Failed to load Wasm module due to a missing import: env.proxy_redis_init"
        assert "missing import: env.proxy_redis" in str(e.value) + envoy.log_text()
    finally:
        envoy.stop()
        shutil.rmtree(envoy.dir, ignore_errors=True)
