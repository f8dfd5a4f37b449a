"""AI gateway upstream API-key pools — on both hosts, plus two wasm VMs as Envoy workers."""

from __future__ import annotations

import json

import pytest

from ai_gateway.config import parse
from proxywasm import Action, ConfigError
from proxywasm.testing import SharedState
from proxywasm.testing.wasm import WasmHost

from .conftest import wasm_path
from .gateway import chat, chat_body

KEYS = ["sk-alpha-0001", "sk-bravo-0002", "sk-charlie-0003"]


def config(**pool: object) -> dict:
    return {"models": [
        {"name": "gpt", "cluster": "provider", "api_keys": {"keys": KEYS, **pool}},
        {"name": "backup", "cluster": "backup"},
    ]}


def start(make_host, **pool):
    h = make_host("ai_gateway")
    assert h.start(config(**pool)), h.logs
    return h


def used_key(s) -> str:
    auth = s.request_header("authorization")
    assert auth and auth.startswith("Bearer ")
    return auth.removeprefix("Bearer ")


def answer(s, status: int, **headers: str) -> Action:
    return s.send_response_headers({":status": str(status), **headers})


def assert_no_secrets(h) -> None:
    text = "\n".join(m for _, m in h.logs) + "\n".join(h.metric_names)
    for k in KEYS:
        assert k not in text


def test_client_credential_replaced_and_keys_rotate(make_host) -> None:
    h = start(make_host)
    used = []
    for _ in range(6):
        s = chat(h, chat_body("gpt"), {"authorization": "Bearer client-secret"})
        used.append(used_key(s))
        answer(s, 200)
    assert used == KEYS[1:] + KEYS[:1] + KEYS[1:] + KEYS[:1]  # round robin over all keys
    assert_no_secrets(h)


def test_custom_header_and_no_client_credential_forwarded(make_host) -> None:
    h = start(make_host, header="api-key")
    s = chat(h, chat_body("gpt"), {"authorization": "Bearer client", "api-key": "client-key"})
    assert s.request_header("authorization") is None
    assert s.request_header("api-key") in KEYS


def test_401_ejects_key_and_retries_once_with_another(make_host) -> None:
    h = start(make_host)
    s = chat(h, chat_body("gpt"))
    bad = used_key(s)
    assert answer(s, 401) == Action.PAUSE
    (call,) = h.callouts
    retry_key = call.header("authorization").removeprefix("Bearer ")
    assert retry_key != bad and retry_key in KEYS and call.cluster == "provider"
    h.respond_callout(call.token, 200, body=b'{"ok": true}')
    assert s.local_response.status == 200 and ("x-ai-served-model", "gpt") in s.local_response.headers
    for _ in range(10):  # the bad key stays out during its cooldown
        s2 = chat(h, chat_body("gpt"))
        assert used_key(s2) != bad
        answer(s2, 200)
    h.advance(30_001)  # default cooldown is 30 s
    assert bad in {used_key(chat(h, chat_body("gpt"))) for _ in range(3)}
    assert_no_secrets(h)


def test_retry_that_fails_too_lets_the_error_through(make_host) -> None:
    h = start(make_host)
    s = chat(h, chat_body("gpt", stream=True))
    answer(s, 403)
    call = h.callouts[0]
    assert json.loads(call.body)["stream"] is True
    h.respond_callout(call.token, 403)
    assert not h.callouts  # retried once only
    assert s.response_header(":status") == "403" and s.response_header("x-ai-fallback-exhausted") == "1"


def test_429_honours_retry_after(make_host) -> None:
    h = start(make_host, consecutive_5xx=0)
    s = chat(h, chat_body("gpt"))
    bad = used_key(s)
    answer(s, 429, **{"retry-after": "2"})
    h.respond_callout(h.callouts[0].token, 200)
    h.advance(1_500)
    assert bad not in {used_key(chat(h, chat_body("gpt"))) for _ in range(4)}
    h.advance(600)
    assert bad in {used_key(chat(h, chat_body("gpt"))) for _ in range(3)}


def test_consecutive_5xx_eject(make_host) -> None:
    h = start(make_host, keys=KEYS[:2], consecutive_5xx=2)
    first = []
    for _ in range(4):  # keys alternate: each key gets two 503s
        s = chat(h, chat_body("gpt"))
        first.append(used_key(s))
        answer(s, 503)
    s = chat(h, chat_body("gpt"))
    assert s.local_response.status == 503
    assert json.loads(s.local_response.body)["error"]["code"] == "no_available_key"


def test_success_resets_the_5xx_streak(make_host) -> None:
    h = start(make_host, keys=KEYS[:1], consecutive_5xx=2)
    for status in (503, 200, 503, 200, 503):
        answer(chat(h, chat_body("gpt")), status)
    assert chat(h, chat_body("gpt")).local_response is None  # never two 5xx in a row


def test_all_out_soonest_uses_the_key_back_first(make_host) -> None:
    h = start(make_host, keys=KEYS[:2], when_all_out="soonest", consecutive_5xx=0, cooldown_ms=10_000)
    s = chat(h, chat_body("gpt"))
    k1 = used_key(s)
    answer(s, 401)
    h.advance(1000)
    h.fail_callout(h.callouts[0].token)  # the retry (other key) gets no answer
    s = chat(h, chat_body("gpt"))
    k2 = used_key(s)
    answer(s, 401)
    h.respond_callout(h.callouts[0].token, 401) if h.callouts else None
    s = chat(h, chat_body("gpt"))  # both out: k1's cooldown ends first
    assert s.local_response is None and used_key(s) == k1 != k2


def test_retry_inside_fallback_budget(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = config()
    cfg["models"][0]["fallback"] = {"models": ["backup"], "max_attempts": 3}
    assert h.start(cfg)
    s = chat(h, chat_body("gpt"))
    answer(s, 401)
    assert h.callouts[0].cluster == "provider"
    h.respond_callout(h.callouts[0].token, 401)
    backup = h.callouts[0]
    assert backup.cluster == "backup" and backup.header("authorization") is None  # no pool key leaks
    h.respond_callout(backup.token, 200)
    assert ("x-ai-fallback-from", "gpt") in s.local_response.headers


def test_mirror_does_not_get_the_primary_key(make_host) -> None:
    h = make_host("ai_gateway")
    cfg = config()
    cfg["models"][0]["mirror"] = {"model": "backup", "percent": 100}
    assert h.start(cfg)
    chat(h, chat_body("gpt"))
    (call,) = h.callouts
    assert call.cluster == "backup" and call.header("authorization") is None


def test_key_metrics_use_fingerprints(make_host) -> None:
    h = start(make_host)
    s = chat(h, chat_body("gpt"))
    answer(s, 401)
    names = [n for n in h.metric_names if n.startswith("keypool.gpt.key.")]
    assert any(n.endswith(".metric.ejections") for n in names)
    assert all(len(n.split(".key.")[1].split(".")[0]) == 8 for n in names)
    assert sum(h.metric(n) for n in names if n.endswith(".metric.requests")) == 2
    assert_no_secrets(h)


def test_key_metrics_label_the_model_like_every_metric(make_host) -> None:
    """The model's segment of keypool.<model>.key... goes through metric_names.label like the model segment of every
    other metric: no spaces or parentheses in a stat name, at most 64 characters (it used to be the raw name)."""
    name = "team a/" + "m" * 80 + " (beta)"
    h = make_host("ai_gateway")
    assert h.start({"models": [{"name": name, "cluster": "provider", "api_keys": {"keys": KEYS}}]}), h.logs
    answer(chat(h, chat_body(name)), 200)
    names = [n for n in h.metric_names if n.startswith("keypool.")]
    assert names and all(n.startswith("keypool.team_a/" + "m" * 57 + ".key.") for n in names), names
    assert sum(h.metric(n) for n in names if n.endswith(".metric.requests")) == 1


@pytest.mark.parametrize(("pool", "message"), [
    ({"keys": []}, "api_keys.keys: must be a non-empty list"),
    ({"keys": ["a", "a"]}, "api_keys.keys: has duplicates"),
    ({"keys": ["a"], "selection": "lru"}, "api_keys.selection: must be one of round_robin, random"),
    ({"keys": ["a"], "eject_on": ["x"]}, "api_keys.eject_on: must be a list of error statuses"),
    ({"keys": ["a"], "when_all_out": "wait"}, "api_keys.when_all_out: must be one of fail, soonest"),
])
def test_pool_config_errors(pool: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"models": [{"name": "m", "cluster": "c", "api_keys": pool}]})
    assert message in str(e.value)
    assert "sk-" not in repr(parse(config()).models["gpt"].keys)


def workers(n: int = 2, **pool: object) -> list[WasmHost]:
    shared = SharedState()
    vms = [WasmHost(wasm_path("ai_gateway"), shared) for _ in range(n)]
    for vm in vms:
        assert vm.start(config(**pool))
    return vms


def test_ejection_by_one_worker_is_honoured_by_all() -> None:
    a, b = workers()
    s = chat(a, chat_body("gpt"))
    bad = used_key(s)
    answer(s, 401)
    for _ in range(20):
        for vm in (a, b):
            s2 = chat(vm, chat_body("gpt"))
            assert used_key(s2) != bad
            answer(s2, 200)


def test_concurrent_reports_lose_no_update() -> None:
    a, b = workers(consecutive_5xx=2, keys=KEYS[:1])
    sa, sb = chat(a, chat_body("gpt")), chat(b, chat_body("gpt"))  # both in flight with the one key
    answer(sa, 503)
    answer(sb, 503)  # the second 5xx, from another worker, completes the streak
    assert chat(a, chat_body("gpt")).local_response.status == 503


def test_probe_returns_key_and_only_one_worker_probes() -> None:
    a, b = workers(probe={"path": "/v1/models", "interval_ms": 1000}, cooldown_ms=600_000)
    assert a.state.tick_period_ms == 1000
    s = chat(a, chat_body("gpt"))
    bad = used_key(s)
    answer(s, 401)
    a.respond_callout(a.callouts[0].token, 200)
    a.tick()
    b.tick()  # b sees a's lease and does not probe
    (probe,) = a.callouts
    assert not b.callouts
    assert probe.header(":path") == "/v1/models" and probe.header("authorization") == f"Bearer {bad}"
    a.respond_callout(probe.token, 200)
    assert bad in {used_key(chat(b, chat_body("gpt"))) for _ in range(3)}


def test_rotation_is_even_over_healthy_keys(make_host) -> None:
    h = start(make_host)
    s = chat(h, chat_body("gpt"))
    bad = used_key(s)
    answer(s, 401)
    h.respond_callout(h.callouts[0].token, 200)
    from collections import Counter as Tally

    seen = Tally(used_key(chat(h, chat_body("gpt"))) for _ in range(40))
    assert bad not in seen and sorted(seen.values()) == [20, 20]


def test_available_gauge_follows_the_key(make_host) -> None:
    h = start(make_host, keys=KEYS[:2], cooldown_ms=1000)
    s = chat(h, chat_body("gpt"))
    bad = used_key(s)
    answer(s, 401)
    h.respond_callout(h.callouts[0].token, 200)
    gauges = {n: h.metric(n) for n in h.metric_names if n.endswith(".available")}
    assert sorted(gauges.values()) == [0, 1]
    h.advance(1001)
    assert bad in {used_key(chat(h, chat_body("gpt"))) for _ in range(2)}
    assert all(h.metric(n) == 1 for n in gauges)
    assert any("back in rotation (cooldown over)" in m for _, m in h.logs)
