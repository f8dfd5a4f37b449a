"""Fixes of the security probe (issue 23) and of the request side of issue 16, on both hosts: routing headers
stripped wherever the plugin is off, a fallback's key retry, Retry-After over the probe, a trusted and bounded
consumer label, normalised paths, content types, ``GET /v1/models/{id}`` and capped echoes.

The configuration table (every field's bad values) is in tests/test_config_table.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from proxywasm import Action, LogLevel

from .gateway import CHAT, CONFIG, chat, chat_body, error_of

PICKER = "x-gateway-destination-endpoint"


def start(make_host: Any, config: dict[str, Any]) -> Any:
    h = make_host("ai_gateway")
    assert h.start(config), h.logs
    return h


# ------------------------------------------------------------------ 23.1 routing headers, plugin on or off


def test_custom_routing_headers_removed_where_a_rule_turns_the_plugin_off(make_host: Any) -> None:
    """The probe's bypass: a non-default ``route_header`` and a rule that only matches (plugin off there)."""
    h = start(make_host, {**CONFIG, "route_header": "x-route", "model_header": "x-route-model",
                          "_rules_": [{"_match_domain_": ["off.example"]}]})
    s = h.http_stream()
    forged = {**CHAT, ":authority": "off.example", "x-route": "secret", "x-route-model": "m", PICKER: "127.0.0.1:9",
              "x-ai-upstream": "x", "x-ai-model": "y"}
    assert s.send_request_headers(forged) == Action.CONTINUE
    s.send_request_body(chat_body())
    assert s.local_response is None
    assert [k for k, _ in s.request_headers] == list(CHAT)  # every routing/model/endpoint header gone


def test_headers_of_other_rules_removed_where_the_plugin_routes(make_host: Any) -> None:
    """A rule with its own route header: a client cannot use the global one's header on that domain."""
    rule = {**CONFIG, "_match_domain_": ["b.example"], "route_header": "x-b-route"}
    h = start(make_host, {**CONFIG, "route_header": "x-route", "_rules_": [rule]})
    s = chat(h, chat_body(), {":authority": "b.example", "x-route": "secret", PICKER: "10.0.0.1:80"})
    assert s.request_header("x-b-route") == "qwen"
    assert s.request_header("x-route") is None and s.request_header(PICKER) is None


def test_endpoint_header_removed_without_a_picker(make_host: Any) -> None:
    h = start(make_host, CONFIG)
    s = chat(h, chat_body(), {PICKER: "127.0.0.1:1"})
    assert s.request_header("x-ai-upstream") == "qwen" and s.request_header(PICKER) is None
    s = h.http_stream()
    s.send_request_headers({**CHAT, ":path": "/other", PICKER: "127.0.0.1:1"}, end_of_stream=True)
    assert s.request_header(PICKER) is None


# ------------------------------------------------------------------ 23.2 a fallback attempt rotates keys


POOLED_FALLBACK = {"models": [
    {"name": "local", "cluster": "local", "fallback": {"models": ["hosted"]}},
    {"name": "hosted", "cluster": "hosted", "api_keys": {"keys": ["sk-bad-0001", "sk-good-0002"], "probe": None}},
]}


@pytest.mark.parametrize("bad_status", [401, 403, 429])
def test_fallback_attempt_retries_another_key(make_host: Any, bad_status: int) -> None:
    h = start(make_host, POOLED_FALLBACK)
    for _ in range(4):  # each key comes first at least once
        s = chat(h, chat_body("local"))
        assert s.send_response_headers({":status": "503"}) == Action.PAUSE
        first = h.callouts[0]
        assert first.cluster == "hosted"
        key = first.header("authorization")
        if key == "Bearer sk-bad-0001":
            h.respond_callout(first.token, bad_status)
            (retry,) = h.callouts
            assert retry.cluster == "hosted" and retry.header("authorization") == "Bearer sk-good-0002"
            h.respond_callout(retry.token, 200, {"content-type": "application/json"}, b'{"ok":1}')
        else:
            h.respond_callout(first.token, 200, {"content-type": "application/json"}, b'{"ok":1}')
        assert s.local_response is not None and s.local_response.status == 200, s.local_response
        assert ("x-ai-fallback-from", "local") in s.local_response.headers
        assert not h.callouts
        s.complete()


def test_fallback_key_retry_happens_once(make_host: Any) -> None:
    cfg = json.loads(json.dumps(POOLED_FALLBACK))
    cfg["models"][1]["api_keys"]["keys"] = ["sk-bad-0001", "sk-bad-0002", "sk-bad-0003"]
    h = start(make_host, cfg)
    s = chat(h, chat_body("local"))
    s.send_response_headers({":status": "503"})
    h.respond_callout(h.callouts[0].token, 401)
    h.respond_callout(h.callouts[0].token, 401)
    assert not h.callouts  # one retry with another key, not every key
    assert s.local_response.status == 401


# ------------------------------------------------------------------ 23.3 Retry-After beats the probe


def test_probe_leaves_a_key_held_by_retry_after(make_host: Any) -> None:
    keys = ["sk-one-0001", "sk-two-0002"]
    h = start(make_host, {"models": [{"name": "gpt", "cluster": "p", "api_keys": {
        "keys": keys, "probe": {"interval_ms": 1000}, "cooldown_ms": 600_000}}]})
    s = chat(h, chat_body("gpt"))
    limited = s.request_header("authorization")
    s.send_response_headers({":status": "429", "retry-after": "60"})
    h.respond_callout(h.callouts[0].token, 200)  # the retry with the other key
    for _ in range(5):  # a minute of probe intervals: the rate-limited key is never asked
        h.advance(1000)
        h.tick()
        assert not h.callouts, "the probe asked the provider with a key it rate-limited"
        s = chat(h, chat_body("gpt"))
        assert s.request_header("authorization") != limited
        s.send_response_headers({":status": "200"}, end_of_stream=True)
    h.advance(55_001)  # the provider's minute is over: back in rotation without a probe
    assert limited in {chat(h, chat_body("gpt")).request_header("authorization") for _ in range(3)}


def test_probe_still_returns_a_key_ejected_without_retry_after(make_host: Any) -> None:
    h = start(make_host, {"models": [{"name": "gpt", "cluster": "p", "api_keys": {
        "keys": ["sk-one-0001", "sk-two-0002"], "probe": {"interval_ms": 1000}, "cooldown_ms": 600_000}}]})
    s = chat(h, chat_body("gpt"))
    bad = s.request_header("authorization")
    s.send_response_headers({":status": "429"})  # no Retry-After: the cooldown, shortened by a good probe
    h.respond_callout(h.callouts[0].token, 200)
    h.advance(1000)
    h.tick()
    (probe,) = h.callouts
    assert probe.header("authorization") == bad
    h.respond_callout(probe.token, 200)
    assert bad in {chat(h, chat_body("gpt")).request_header("authorization") for _ in range(3)}


# ------------------------------------------------------------------ 23.4 / 23.5 the consumer label


def consumers(h: Any) -> set[str]:
    return {n.split(".consumer.")[1].split(".metric.")[0] for n in h.metric_names if ".consumer." in n}


def served(h: Any, headers: dict[str, str]) -> Any:
    s = chat(h, chat_body(), headers)
    s.send_response_headers({":status": "200", "content-type": "application/json"}, end_of_stream=True)
    return s


def test_consumer_header_is_not_trusted_by_default(make_host: Any) -> None:
    h = start(make_host, CONFIG)
    for name in ("alice", "bob"):
        s = served(h, {"x-mse-consumer": name})
        assert json.loads(s.get_property("ai_log"))["consumer"] == "none"
    assert consumers(h) == {"none"}


def test_trusted_consumer_labels_are_bounded_with_an_overflow_bucket(make_host: Any) -> None:
    h = start(make_host, {**CONFIG, "consumer_header": "x-mse-consumer", "max_consumers": 3})
    for i in range(20):
        s = served(h, {"x-mse-consumer": f"c{i % 10}"})
        assert json.loads(s.get_property("ai_log"))["consumer"] == f"c{i % 10}"  # the log keeps the name
    assert consumers(h) == {"c0", "c1", "c2", "_other"}
    per = "route.none.upstream.qwen.model.qwen2-1-5b.consumer.{}.metric.request_total"
    assert h.metric(per.format("c0")) == 2 and h.metric(per.format("_other")) == 14


def test_consumer_bound_is_shared_by_workers() -> None:
    from proxywasm.testing import SharedState
    from proxywasm.testing.wasm import WasmHost

    from .conftest import wasm_path

    shared = SharedState()
    a, b = (WasmHost(wasm_path("ai_gateway"), shared) for _ in range(2))
    for vm in (a, b):
        assert vm.start({**CONFIG, "consumer_header": "x-mse-consumer", "max_consumers": 2})
    for name, vm in (("a1", a), ("b1", b), ("b2", b), ("a1", b), ("a2", a)):
        served(vm, {"x-mse-consumer": name})
    assert consumers(a) == {"a1", "b1", "_other"}  # one Envoy process: metric names are shared


@pytest.mark.parametrize(("sent", "label"), [
    ("a.metric.input_token", "a_metric_input_token"),
    (".", "_"),
    ("..", "__"),
    ("team a/b\n", "team_a_b_"),
])
def test_consumer_label_has_no_dots(make_host: Any, sent: str, label: str) -> None:
    h = start(make_host, {**CONFIG, "consumer_header": "x-mse-consumer"})
    served(h, {"x-mse-consumer": sent})
    assert consumers(h) == {label}
    for name in h.metric_names:  # no forged segment
        assert name.count(".metric.") == 1 and name.count(".consumer.") == 1, name


# ------------------------------------------------------------------ 23.6 / 16.7 paths and content types


AI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")


def spellings(path: str) -> list[tuple[str, str]]:
    """(as sent, as the upstream must get it)."""
    head, tail = path.rsplit("/", 1)
    return [
        ("/" + path, path),
        (path.replace("/v1/", "/v1//"), path),
        (path.replace("/v1/", "/v1/./"), path),
        (path.replace("/v1/", "/v1/x/../"), path),
        (path.replace("/v1/", "/x/../v1/"), path),
        (path + "/", path),
        (head + "%2F" + tail, path),
        (head + "%2f" + tail.replace(tail[0], "%" + format(ord(tail[0]), "02X"), 1), path),
        ("/../../" + path.lstrip("/"), path),
        ("/" + path + "?api-version=1&x=//y", path + "?api-version=1&x=//y"),
        (path + "?", path + "?"),
        (path + "#x", path),
    ]


@pytest.mark.parametrize("path", AI_PATHS)
def test_every_spelling_of_an_ai_path_is_routed(make_host: Any, path: str) -> None:
    h = start(make_host, CONFIG)
    for sent, upstream in spellings(path):
        s = chat(h, chat_body(), {":path": sent})
        assert s.local_response is None and s.request_header("x-ai-upstream") == "qwen", sent
        assert s.request_header(":path") == upstream, sent


def test_other_paths_pass_untouched(make_host: Any) -> None:
    h = start(make_host, CONFIG)
    for path in ("/v1/chat/completions/x", "/v1/chat/completion", "/v1/chat%3Fcompletions", "/V1/chat/completions",
                 "/v1/chat/completions%00", "//healthz"):
        s = chat(h, b"{not json", {":path": path})
        assert s.local_response is None and s.request_header("x-ai-upstream") is None, path
        assert s.request_header(":path") == path and s.request_body == b"{not json"


@pytest.mark.parametrize("sent", ["gzip, deflate", "br", "gzip;q=1.0, identity;q=0.5", "*"])
def test_answers_are_asked_uncompressed_so_usage_is_always_read(make_host: Any, sent: str) -> None:
    """A client asking for a compressed answer (the openai client sends ``gzip, deflate``) must not get one the
    gateway cannot read: its output tokens would go uncounted, past its consumer's token limit."""
    h = start(make_host, {**CONFIG, "consumer_header": "x-mse-consumer"})
    s = chat(h, chat_body(), {"accept-encoding": sent, "x-mse-consumer": "team-a"})
    assert s.local_response is None and s.request_header("accept-encoding") == "identity"
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    usage = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    s.send_response_body(json.dumps({"choices": [], "usage": usage}).encode(), end_of_stream=True)
    log = json.loads(s.get_property("ai_log"))
    assert (log["output_tokens"], log["usage_source"]) == (9, "server")
    other = chat(h, b"{}", {":path": "/healthz", "accept-encoding": sent})  # not the gateway's: untouched
    assert other.request_header("accept-encoding") == sent
    plain = chat(h, chat_body(), {"accept-encoding": "identity"})
    assert plain.request_header("accept-encoding") == "identity"
    none = chat(h, chat_body())
    assert none.request_header("accept-encoding") is None  # nothing added where nothing was asked


@pytest.mark.parametrize("path", AI_PATHS)
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x",
                                   "application/jsonx", "json", "application/octet-stream", "text/html"])
def test_non_json_content_type_gets_415(make_host: Any, path: str, ctype: str) -> None:
    h = start(make_host, CONFIG)
    s = h.http_stream()
    assert s.send_request_headers({**CHAT, ":path": path, "content-type": ctype}) == Action.PAUSE
    assert s.local_response.status == 415
    err = error_of(s)
    assert err["code"] == "unsupported_content_type" and err["type"] == "invalid_request_error"
    assert s.request_header("x-ai-upstream") is None


@pytest.mark.parametrize("path", AI_PATHS)
@pytest.mark.parametrize("ctype", [None, "", "application/json", "Application/JSON; charset=utf-8",
                                   "application/vnd.api+json", "text/json"])
def test_json_or_no_content_type_is_routed(make_host: Any, path: str, ctype: str | None) -> None:
    h = start(make_host, CONFIG)
    headers = {k: v for k, v in CHAT.items() if k != "content-type"} | {":path": path}
    if ctype is not None:
        headers["content-type"] = ctype
    s = h.http_stream()
    s.send_request_headers(headers)
    s.send_request_body(chat_body())
    assert s.local_response is None and s.request_header("x-ai-upstream") == "qwen"
    s = h.http_stream()
    s.send_request_headers(headers)
    s.send_request_body(b"model=qwen2-1-5b")  # a form body without a form content type: still judged as JSON
    assert s.local_response.status == 400 and error_of(s)["code"] == "invalid_json"


# ------------------------------------------------------------------ 16.4 GET /v1/models/{id}


def get(h: Any, path: str) -> Any:
    s = h.http_stream()
    assert s.send_request_headers({":method": "GET", ":path": path, ":authority": "gw"},
                                  end_of_stream=True) == Action.PAUSE
    return s


def test_retrieve_every_listed_model_and_alias(make_host: Any) -> None:
    cfg = {**CONFIG, "models": [*CONFIG["models"], {"name": "org/model.v2", "cluster": "llama"}]}
    h = start(make_host, cfg)
    listed = [m["id"] for m in json.loads(get(h, "/v1/models").local_response.body)["data"]]
    assert listed == ["qwen2-1-5b", "gemma-2-2b", "llama-3", "org/model.v2", "canary", "sticky"]
    for name in listed:
        for path in (f"/v1/models/{name}", f"/v1/models/{name.replace('/', '%2F')}?x=1"):
            lr = get(h, path).local_response
            assert lr.status == 200 and ("content-type", "application/json") in lr.headers
            assert json.loads(lr.body) == {"id": name, "object": "model", "created": 0, "owned_by": "ai-gateway"}


def test_retrieve_unknown_model_is_a_capped_404(make_host: Any) -> None:
    h = start(make_host, CONFIG)
    s = get(h, "/v1/models/" + "n" * 5000)
    assert s.local_response.status == 404
    err = error_of(s)
    assert err["code"] == "model_not_found" and err["param"] == "model" and len(err["message"]) < 300


def test_models_endpoint_off_passes_through(make_host: Any) -> None:
    h = start(make_host, {**CONFIG, "models_endpoint": False})
    s = h.http_stream()
    assert s.send_request_headers({":method": "GET", ":path": "/v1/models/qwen2-1-5b", ":authority": "gw"},
                                  end_of_stream=True) == Action.CONTINUE
    assert s.local_response is None


# ------------------------------------------------------------------ 16.8 what an error echoes


def test_unknown_model_error_echo_is_capped(make_host: Any) -> None:
    h = start(make_host, CONFIG)
    s = chat(h, chat_body("m" * 200_000))
    err = error_of(s)
    assert s.local_response.status == 404 and err["code"] == "model_not_found"
    assert len(s.local_response.body) < 600 and err["message"].startswith("The model `mmm")


# ------------------------------------------------------------------ 23.8 keys outside the configuration


ENV_POOL = {"models": [{"name": "gpt", "cluster": "p", "api_keys": {"keys_env": ["AIGW_TEST_KEY_A", "AIGW_TEST_KEY_B"]}}]}
ENV_KEYS = {"AIGW_TEST_KEY_A": "sk-env-0001\n", "AIGW_TEST_KEY_B": "sk-env-0002"}  # a secret file's newline goes


def env_host(make_host: Any, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> Any:
    """A gateway VM whose environment is ``env`` (the in-process host's VM is this process)."""
    if make_host.kind == "wasm":
        from proxywasm.testing.wasm import WasmHost

        from .conftest import wasm_path

        return WasmHost(wasm_path("ai_gateway"), env=env)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return make_host("ai_gateway")


def test_keys_from_the_vm_environment(make_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    h = env_host(make_host, monkeypatch, ENV_KEYS)
    assert h.start(ENV_POOL), h.logs
    used = {chat(h, chat_body("gpt")).request_header("authorization") for _ in range(4)}
    assert used == {"Bearer sk-env-0001", "Bearer sk-env-0002"}
    assert not any("sk-env-000" in m for _, m in h.logs)


def test_missing_key_variable_fails_start_with_the_field_named(make_host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    h = env_host(make_host, monkeypatch, {"AIGW_TEST_KEY_A": "sk-env-0001"})
    assert h.start(ENV_POOL) is False
    (line,) = [m for lv, m in h.logs if lv >= LogLevel.ERROR]
    assert "models[0].api_keys.keys_env[1]: environment variable 'AIGW_TEST_KEY_B' is not set" in line
    assert "sk-env-0001" not in line


def test_client_influenced_labels_stay_bounded(make_host: Any) -> None:
    """The probe's 10,000 random consumers made 70,007 Envoy stats: now the consumer label is bounded, and model
    names, aliases' sticky values and unknown models never make a label at all."""
    h = start(make_host, {**CONFIG, "consumer_header": "x-mse-consumer", "max_consumers": 5})
    for i in range(300):
        s = chat(h, chat_body(["qwen2-1-5b", "sticky", "canary", f"unknown-{i}"][i % 4]),
                 {"x-mse-consumer": f"user-{i}.metric.x", "x-user-id": f"u{i}"})
        if s.local_response is None:
            s.send_response_headers({":status": "200", "content-type": "application/json"}, end_of_stream=True)
    labels = {n.split(".metric.")[0] for n in h.metric_names if n.startswith("route.")}
    assert len(consumers(h)) == 6 and "_other" in consumers(h)
    assert {n.split(".model.")[1].split(".")[0] for n in labels} <= {"qwen2-1-5b", "gemma-2-2b", "llama-3"}
    assert len(labels) <= 6 * 3
