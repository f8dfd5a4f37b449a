"""Consumers: the gateway's own API keys, allow-lists, token/request limits, quotas and the admin API, on both
test hosts; the Redis store through Higress's Redis host calls (the "higress" build) and through webdis, both
against a real redis-server, with two replicas (separate hosts) sharing one limit."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from proxywasm.testing import Host, SharedState, Stream
from tests.conftest import HostFactory
from tests.gateway import CHAT, chat, chat_body, error_of
from tests.redis_server import Redis, webdis

KEY_A, KEY_B, KEY_ADMIN = "sk-team-a-0123456789", "sk-team-b-9876543210", "sk-admin-5555555555"
MODELS = [{"name": "qwen", "cluster": "qwen"}, {"name": "gemma", "cluster": "gemma"}]


def config(**extra: Any) -> dict[str, Any]:
    return {
        "models": MODELS,
        "consumers": [
            {"name": "team-a", "keys": [KEY_A], "limits": [{"requests": 3, "per": "minute"}]},
            {"name": "team-b", "keys": ["sha256:" + hashlib.sha256(KEY_B.encode()).hexdigest()],
             "models": ["gemma"], "limits": [{"tokens": 100, "per": "minute"}], "quota": True},
            {"name": "ops", "keys": [KEY_ADMIN], "admin": True},
        ],
        **extra,
    }


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def answer(s: Stream, usage: dict[str, int] | None = None, status: int = 200) -> None:
    body: dict[str, Any] = {"choices": [{"message": {"content": "hi"}}]}
    if usage is not None:
        body["usage"] = usage
    s.send_response_headers({":status": str(status), "content-type": "application/json"})
    s.send_response_body(json.dumps(body).encode())
    s.complete()


def tokens(n: int) -> dict[str, int]:
    return {"prompt_tokens": n // 2, "completion_tokens": n - n // 2, "total_tokens": n}


# Every host's clock starts at the same second, just after a day began: no window turns during a test unless
# the test advances the clock (replicas' clocks agree; the counters' windows in Redis are the same for both).
BASE_NS = (int(time.time()) // 86_400 * 86_400 + 1) * 1_000_000_000


def started(make_host: HostFactory, cfg: dict[str, Any], shared: SharedState | None = None, variant: str = "",
            redis: Redis | None = None) -> Host:
    host = make_host("ai_gateway", shared, variant)
    if shared is None or not host.state.shared.data:
        host.state.shared.clock_ns = BASE_NS
    if redis is not None:
        host.use_redis("redis", redis.port)
    assert host.start(cfg), host.logs
    return host


# -- authentication --


def test_missing_unknown_and_several_keys_are_401(make_host: HostFactory) -> None:
    host = started(make_host, config())
    for headers in ({}, bearer("sk-nobody-000000000"), {**bearer(KEY_A), "x-api-key": KEY_B},
                    {"authorization": f"Bearer {KEY_A}, Bearer {KEY_A}"}):
        s = chat(host, chat_body("qwen"), headers)
        err = error_of(s)
        assert s.local_response.status == 401 and err["code"] == "invalid_api_key", headers
        assert ("www-authenticate", 'Bearer realm="ai-gateway"') in s.local_response.headers
        assert "sk-" not in s.local_response.body.decode()  # the key is never echoed
    assert host.metric("aigw.consumer.none.reason.invalid_api_key.rejected") == 4


def test_key_is_taken_off_and_the_consumer_set(make_host: HostFactory) -> None:
    host = started(make_host, config(auth={"headers": ["authorization", "x-api-key"], "query": "key"}))
    s = chat(host, chat_body("qwen"), {**bearer(KEY_A), "x-mse-consumer": "someone-else"})
    assert s.local_response is None
    assert s.request_header("authorization") is None  # the client's key never goes upstream
    assert s.request_header("x-mse-consumer") == "team-a"  # a client-sent consumer is not trusted
    s = chat(host, chat_body("gemma"), {"x-api-key": KEY_B})  # the config holds only its sha256
    assert s.local_response.status == 429  # authenticated (team-b has no balance yet)
    assert s.request_header("x-api-key") is None
    assert s.request_header("x-mse-consumer") == "team-b"
    s = host.http_stream()
    s.send_request_headers({**CHAT, ":path": f"/v1/chat/completions?x=1&key={KEY_A}&y=2"})
    s.send_request_body(chat_body("qwen"))
    assert s.local_response is None
    assert s.request_header(":path") == "/v1/chat/completions?x=1&y=2"
    assert s.request_header("x-mse-consumer") == "team-a"


def test_allow_lists_give_403(make_host: HostFactory) -> None:
    host = started(make_host, config(auth={"allow": ["team-b", "ops"]}))
    s = chat(host, chat_body("gemma"), bearer(KEY_A))
    assert s.local_response.status == 403 and error_of(s)["code"] == "permission_denied"
    s = chat(host, chat_body("qwen"), {"authorization": f"Bearer {KEY_B}"})  # team-b may use only gemma
    assert s.local_response.status == 403 and "qwen" in error_of(s)["message"]
    assert host.metric("aigw.consumer.team-b.reason.permission_denied.rejected") == 1


def test_trusted_consumer_header_only_when_configured(make_host: HostFactory) -> None:
    host = started(make_host, config(auth={"trust_consumer_header": True}))
    s = chat(host, chat_body("qwen"), {"x-mse-consumer": "from-key-auth"})
    assert s.local_response is None and s.request_header("x-mse-consumer") == "from-key-auth"
    host = started(make_host, config())
    s = chat(host, chat_body("qwen"), {"x-mse-consumer": "from-key-auth"})
    assert s.local_response.status == 401


@pytest.mark.parametrize("bad, field", [
    ({"consumers": [{"name": "a", "keys": []}]}, "consumers[0].keys"),
    ({"consumers": [{"name": "a", "keys": ["sha256:xyz"]}]}, "consumers[0].keys[0]"),
    ({"consumers": [{"name": "a", "keys": ["sk-aaaaaaaa"], "limits": [{"tokens": 5}]}]}, "consumers[0].limits[0].per"),
    ({"consumers": [{"name": "a", "keys": ["sk-aaaaaaaa"]}], "store": {"backend": "redis"}}, "store.redis"),
    ({"consumers": [{"name": "a", "keys": ["sk-aaaaaaaa"]}], "auth": {"allow": ["b"]}}, "auth.allow[0]"),
])
def test_config_mistakes_name_the_field(make_host: HostFactory, bad: dict[str, Any], field: str) -> None:
    host = make_host("ai_gateway")
    assert not host.start({"models": MODELS, **bad})
    assert any(field in m for m in host.logs_at(5)), host.logs


def test_higress_transport_needs_the_higress_build(make_host: HostFactory) -> None:
    if make_host.kind != "wasm":  # type: ignore[attr-defined]
        pytest.skip("the in-process host always offers the Redis calls")
    host = make_host("ai_gateway")
    assert not host.start(config(store={"backend": "redis", "redis": {"transport": "higress", "cluster": "redis"}}))
    assert any("store.redis.transport" in m for m in host.logs_at(5))


# -- limits and quotas, shared-data store --


def test_request_limit_then_429_with_headers_and_next_window(make_host: HostFactory) -> None:
    host = started(make_host, config())
    for i in range(3):
        s = chat(host, chat_body("qwen"), bearer(KEY_A))
        assert s.local_response is None
        s.send_response_headers({":status": "200", "content-type": "application/json"})
        assert s.response_header("x-ratelimit-limit-requests") == "3"
        assert s.response_header("x-ratelimit-remaining-requests") == str(2 - i)
        assert s.response_header("x-ratelimit-reset-requests").endswith("s")
    s = chat(host, chat_body("qwen"), bearer(KEY_A))
    err = error_of(s)
    assert s.local_response.status == 429 and err["code"] == "rate_limit_exceeded" and err["type"] == "requests"
    headers = dict(s.local_response.headers)
    assert 1 <= int(headers["retry-after"]) <= 60 and headers["x-ratelimit-remaining-requests"] == "0"
    assert host.metric("aigw.consumer.team-a.reason.rate_limit_exceeded.rejected") == 1
    host.advance(60_000)
    assert chat(host, chat_body("qwen"), bearer(KEY_A)).local_response is None


def test_token_limit_overshoot_is_charged_then_refused(make_host: HostFactory) -> None:
    host = started(make_host, config())
    host_b = bearer(KEY_B)
    s = chat(host, chat_body("gemma"), host_b)
    assert s.local_response.status == 429 and error_of(s)["code"] == "insufficient_quota"  # no balance yet
    admin = set_quota(host, "team-b", {"set": 1000})
    assert admin == {"consumer": "team-b", "quota": 1000}
    s = chat(host, chat_body("gemma"), host_b)
    assert s.local_response is None
    answer(s, tokens(150))  # over the 100 tokens a minute: charged in full
    s = chat(host, chat_body("gemma"), host_b)
    assert s.local_response.status == 429 and error_of(s)["type"] == "tokens"
    assert dict(s.local_response.headers)["x-ratelimit-remaining-tokens"] == "0"
    assert get_quota(host, "team-b") == 850
    host.advance(60_000)
    s = chat(host, chat_body("gemma"), host_b)
    assert s.local_response is None
    answer(s, None)  # no usage from the server: an estimate is charged, never zero
    assert get_quota(host, "team-b") < 850


def test_quota_runs_out(make_host: HostFactory) -> None:
    host = started(make_host, config())
    set_quota(host, "team-b", {"set": 60})
    for used in (50, 30):
        s = chat(host, chat_body("gemma"), bearer(KEY_B))
        assert s.local_response is None
        answer(s, tokens(used))
        host.advance(60_000)
    assert get_quota(host, "team-b") == -20
    s = chat(host, chat_body("gemma"), bearer(KEY_B))
    assert s.local_response.status == 429 and error_of(s)["code"] == "insufficient_quota"
    assert set_quota(host, "team-b", {"add": 100}) == {"consumer": "team-b", "quota": 80}
    assert chat(host, chat_body("gemma"), bearer(KEY_B)).local_response is None


def admin_call(host: Host, method: str, path: str, key: str, body: Any = None) -> Stream:
    s = host.http_stream()
    s.send_request_headers({":method": method, ":path": path, ":authority": "gw", **bearer(key),
                            **({"content-type": "application/json"} if body is not None else {})},
                           end_of_stream=body is None)
    if body is not None:
        s.send_request_body(json.dumps(body).encode())
    return s


def set_quota(host: Host, name: str, body: dict[str, int]) -> dict[str, Any]:
    s = admin_call(host, "POST", f"/ai-gateway/consumers/{name}/quota", KEY_ADMIN, body)
    assert s.local_response is not None and s.local_response.status == 200, s.local_response
    return json.loads(s.local_response.body)


def get_quota(host: Host, name: str) -> int:
    s = admin_call(host, "GET", f"/ai-gateway/consumers/{name}/quota", KEY_ADMIN)
    assert s.local_response is not None and s.local_response.status == 200, s.local_response
    return json.loads(s.local_response.body)["quota"]


def test_admin_api_needs_an_admin_and_ignores_route_allow_lists(make_host: HostFactory) -> None:
    host = started(make_host, config(auth={"allow": ["team-a"]}))  # the admin is not on the AI route's list
    assert set_quota(host, "team-b", {"set": 5}) == {"consumer": "team-b", "quota": 5}
    s = admin_call(host, "POST", "/ai-gateway/consumers/team-b/quota", KEY_A, {"set": 10**6})
    assert s.local_response.status == 403 and error_of(s)["code"] == "permission_denied"
    s = admin_call(host, "GET", "/ai-gateway/consumers/team-b/quota", "sk-nobody-000000000")
    assert s.local_response.status == 401
    s = admin_call(host, "POST", "/ai-gateway/consumers/nobody/quota", KEY_ADMIN, {"set": 1})
    assert s.local_response.status == 404
    s = admin_call(host, "POST", "/ai-gateway/consumers/team-b/quota", KEY_ADMIN, {"set": "lots"})
    assert s.local_response.status == 400
    assert get_quota(host, "team-b") == 5


def several_vms(make_host: HostFactory) -> None:
    if make_host.kind != "wasm":  # type: ignore[attr-defined]
        pytest.skip("the in-process host runs one VM at a time (one dispatcher per Python process)")


def test_workers_share_limits_exactly(make_host: HostFactory) -> None:
    several_vms(make_host)
    shared = SharedState()
    vms = [started(make_host, config(), shared) for _ in range(2)]
    admitted = [chat(vms[i % 2], chat_body("qwen"), bearer(KEY_A)).local_response is None for i in range(6)]
    assert admitted == [True, True, True, False, False, False]


def test_hostile_spellings_are_still_authenticated_and_counted(make_host: HostFactory) -> None:
    host = started(make_host, config())
    for path in ("//v1/chat/completions", "/v1/chat/completions/", "/v1/./chat/completions",
                 "/v1%2Fchat%2Fcompletions", "/v1/chat/completions?stream=true"):
        s = host.http_stream()
        s.send_request_headers({**CHAT, ":path": path})
        assert s.local_response is not None and s.local_response.status == 401, path
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):  # not JSON: refused, never passed on
        s = chat(host, chat_body("qwen"), {**bearer(KEY_A), "content-type": ctype})
        assert s.local_response.status == 415 and s.request_header("x-ai-model") is None
    s = host.http_stream()
    s.send_request_headers({**CHAT, "content-type": "text/plain"})  # no key: authentication comes first
    assert s.local_response.status == 401
    s = host.http_stream()
    s.send_request_headers({**CHAT, ":path": "//v1/chat/completions/", **bearer(KEY_A)})
    s.send_request_body(chat_body("qwen"), end_of_stream=True)
    assert s.request_header("x-ai-model") == "qwen"  # routed and counted like the usual spelling
    for _ in range(2):  # the 2nd and 3rd requests of 3 a minute, chunked
        assert chat(host, chat_body("qwen"), bearer(KEY_A), chunks=5).local_response is None
    s = chat(host, chat_body("qwen", stream=True), bearer(KEY_A))
    assert s.local_response.status == 429


def test_fallback_is_charged_once_for_the_model_that_answered(make_host: HostFactory) -> None:
    cfg = config()
    cfg["models"] = [{"name": "qwen", "cluster": "qwen", "fallback": {"models": ["gemma"]}},
                     {"name": "gemma", "cluster": "gemma"}]
    cfg["consumers"][1]["models"] = ["qwen"]
    cfg["consumers"][1]["limits"] = [{"tokens": 1000, "per": "minute", "model": "gemma"},
                                     {"tokens": 1000, "per": "minute", "model": "qwen"}]
    host = started(make_host, cfg)
    set_quota(host, "team-b", {"set": 500})
    s = chat(host, chat_body("qwen"), bearer(KEY_B))
    assert s.local_response is None
    s.send_response_headers({":status": "500", "content-type": "application/json"})
    (c,) = host.callouts
    assert c.cluster == "gemma"
    host.respond_callout(c.token, 200, {"content-type": "application/json"},
                         json.dumps({"choices": [], "usage": tokens(40)}).encode())
    assert s.local_response.status == 200
    assert dict(s.local_response.headers)["x-ratelimit-limit-tokens"] == "1000"
    s.send_response_body(b"", end_of_stream=True)
    s.complete()
    assert get_quota(host, "team-b") == 460  # once
    counters = {k: v for k, v in host.state.shared.data.items() if k.startswith("aigw.c.rl.team-b")}
    charged = {k.split("|")[1]: int.from_bytes(v[0][8:], "little") for k, v in counters.items()}
    assert charged == {"gemma": 40}  # to the model that answered, not the one asked for


# -- Redis: Higress's host calls and webdis, against a real redis-server --


def redis_cfg(transport: str, prefix: str, **store: Any) -> dict[str, Any]:
    cluster = "redis" if transport == "higress" else "webdis"
    return config(store={"backend": "redis", "redis": {"transport": transport, "cluster": cluster, "prefix": prefix},
                         **store})


class WebdisBridge:
    """Envoy's part for http_call: callouts to the webdis cluster go to the real webdis over HTTP."""

    def __init__(self, port: int) -> None:
        self.port = port

    def serve(self, hosts: list[Host]) -> None:
        for host in hosts:
            while host.callouts:
                c = host.callouts[0]
                assert c.cluster == "webdis" and c.header(":method") == "GET" and not c.body
                req = urllib.request.Request(f"http://127.0.0.1:{self.port}{c.header(':path')}")
                with urllib.request.urlopen(req, timeout=5) as r:
                    host.respond_callout(c.token, r.status, list(r.headers.items()), r.read())


@pytest.fixture(scope="module")
def webdis_port(redis: Redis) -> Iterator[int]:
    with webdis(redis.port) as port:
        yield port


_prefix = iter(range(10**6))


@pytest.mark.parametrize("transport", ["higress", "webdis"])
def test_two_replicas_share_one_limit_in_redis(make_host: HostFactory, redis: Redis, webdis_port: int,
                                               transport: str) -> None:
    several_vms(make_host)
    prefix = f"t{next(_prefix)}:"
    cfg = redis_cfg(transport, prefix)
    variant = "higress" if transport == "higress" else ""
    replicas = [started(make_host, cfg, SharedState(), variant, redis) for _ in range(2)]  # no shared memory
    bridge = WebdisBridge(webdis_port)
    got = []
    for i in range(5):
        host = replicas[i % 2]
        s = chat(host, chat_body("qwen"), bearer(KEY_A))
        if transport == "webdis":
            assert s.local_response is None and not s.continued  # held until webdis answers
            bridge.serve([host])
        got.append(s.local_response.status if s.local_response else 200)
        if s.local_response is None:
            assert s.continued, "the request resumes once Redis admitted it"
    assert got == [200, 200, 200, 429, 429]
    counters = [k for k in redis.cli("--scan", "--pattern", prefix + "rl:*").split()]
    assert len(counters) == 1 and redis.cli("GET", counters[0]) == "3"
    assert 0 < int(redis.cli("TTL", counters[0])) <= 65
    # tokens and quota: charged on one replica, seen by the other
    set_b = admin_call(replicas[0], "POST", "/ai-gateway/consumers/team-b/quota", KEY_ADMIN, {"set": 500})
    bridge.serve([replicas[0]])
    assert json.loads(set_b.local_response.body) == {"consumer": "team-b", "quota": 500}
    s = chat(replicas[0], chat_body("gemma"), bearer(KEY_B))
    bridge.serve([replicas[0]])
    assert s.local_response is None
    answer(s, tokens(120))
    bridge.serve([replicas[0]])
    assert redis.cli("GET", prefix + "quota:team-b") == "380"
    s = chat(replicas[1], chat_body("gemma"), bearer(KEY_B))
    bridge.serve([replicas[1]])
    assert s.local_response.status == 429 and error_of(s)["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("on_error, status", [("allow", None), ("deny", 503)])
def test_redis_down_fails_open_or_closed_and_is_counted(make_host: HostFactory, on_error: str,
                                                        status: int | None) -> None:
    with __import__("tests.redis_server", fromlist=["redis_server"]).redis_server() as dead:
        port = dead.port
    host = make_host("ai_gateway", None, "higress")
    host.use_redis("redis", port)  # nothing listens there any more
    assert host.start(redis_cfg("higress", "x:", on_error=on_error, timeout_ms=200))
    s = chat(host, chat_body("qwen"), bearer(KEY_A))
    assert (s.local_response.status if s.local_response else None) == status
    if status is None:
        assert s.continued
        answer(s, tokens(10))
    else:
        assert error_of(s)["code"] == "rate_limit_unavailable"
    assert host.metric("aigw.consumers.store_unavailable") == 1
    s = chat(host, chat_body("gemma"), bearer(KEY_B))  # team-b: quota and token limit
    if status is None:
        answer(s, tokens(10))
        assert host.metric("aigw.consumers.charge_failed") == 1  # the charge could not be written: counted


def test_slow_redis_is_a_bounded_wait_then_fail_open(make_host: HostFactory) -> None:
    import socket

    with socket.socket() as silent:  # accepts connections, never answers: a Redis stuck in a slow command
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = make_host("ai_gateway", None, "higress")
        host.use_redis("redis", silent.getsockname()[1])
        assert host.start(redis_cfg("higress", "slow:", timeout_ms=100))
        s = chat(host, chat_body("qwen"), bearer(KEY_A))  # the host gives up after the bound: the request goes on
        assert s.local_response is None and s.continued
        assert host.state.redis_clients["redis"].timeout_ms == 100  # proxy_redis_init got the bound
    assert host.metric("aigw.consumers.store_unavailable") == 1


def test_redis_answer_after_the_client_left_is_ignored(make_host: HostFactory, redis: Redis) -> None:
    host = started(make_host, redis_cfg("higress", f"t{next(_prefix)}:"), variant="higress", redis=redis)
    host.redis_auto = False
    s = chat(host, chat_body("qwen"), bearer(KEY_A))
    assert s.local_response is None and not s.continued and len(host.state.redis_calls) == 1
    s.complete()  # the client went away while Redis was asked
    host.answer_redis(host.state.redis_calls[0])
    assert not host.logs_at(4)  # no error: the late answer found no stream and was dropped


def test_higress_example_holds_the_digests_of_its_secret() -> None:
    import yaml

    from ai_gateway.consumers.config import digest
    from tests.conftest import REPO

    docs = list(yaml.safe_load_all((REPO / "wasm-config/higress/consumers.yaml").read_text()))
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    (plugin,) = [d for d in docs if d["kind"] == "WasmPlugin"]
    for cfg in (plugin["spec"]["defaultConfig"], *(r["config"] for r in plugin["spec"]["matchRules"])):
        for c in cfg["consumers"]:
            assert c["keys"] == ["sha256:" + digest(secret["stringData"][c["name"]])], c["name"]
