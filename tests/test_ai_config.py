"""AI gateway configuration: every mistake fails plugin start with the field named."""

from __future__ import annotations

import json

import pytest

from ai_gateway.config import parse
from proxywasm import ConfigError, LogLevel

from .gateway import CONFIG


def with_(path: str, value: object) -> dict:
    cfg = json.loads(json.dumps(CONFIG))
    *parents, last = path.split("/")
    node = cfg
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return cfg


@pytest.mark.parametrize(("cfg", "message"), [
    ({"models": {}}, "models: must be a list of objects"),
    ({"models": [{"cluster": "c"}]}, "models[0].name: required"),
    ({"models": [{"name": "m"}]}, "models[0].cluster: required"),
    ({"models": [{"name": "m", "cluster": "c", "colour": 1}]}, "models[0].colour: unknown field"),
    (with_("models/1/name", "qwen2-1-5b"), "models[1].name: duplicate model"),
    (with_("models/0/fallback/models", ["nope"]), "fallback.models: unknown model 'nope'"),
    (with_("models/0/fallback/models", ["qwen2-1-5b"]), "must not contain the model itself"),
    (with_("models/0/fallback/mode", "ROUND"), "models[0].fallback.mode: must be one of SEQ, RAND"),
    (with_("models/0/fallback/on_status", ["6xx"]), "models[0].fallback.on_status[0]: must be an error status"),
    (with_("models/0/fallback/max_attempts", 0), "models[0].fallback.max_attempts: must be between 2 and 10"),
    (with_("models/0/mirror", {"model": "x"}), "mirror.model: unknown model 'x'"),
    (with_("models/0/mirror", {"model": "llama-3", "percent": 150}), "models[0].mirror.percent: must be between"),
    (with_("aliases/0/name", "llama-3"), "aliases[0].name: 'llama-3' is already a model or alias name"),
    (with_("aliases/0/targets/0/model", "x"), "aliases[0].targets[0].model: unknown model 'x'"),
    (with_("aliases/0/targets/0/weight", -1), "aliases[0].targets[0].weight: must be between"),
    (with_("aliases/0/targets", [{"model": "llama-3", "weight": 0}]), "aliases[0].targets: needs at least one"),
    ({"fallback": {"models": ["a"]}}, "fallback.models: unknown field"),
    ({"max_body_bytes": "big"}, "max_body_bytes: must be an integer, got string"),
    ({"modles": []}, "modles: unknown field"),
    (with_("models/0/fallback", {"models": ["gemma-2-2b"], "cluster": "agg", "mode": "RAND"}),
     "models[0].fallback.mode: must be SEQ with cluster"),
    (with_("models/0/fallback/first_byte_timeout_ms", -1), "models[0].fallback.first_byte_timeout_ms: must be between"),
    (with_("models/0/fallback/cluster", 7), "models[0].fallback.cluster: must be a string"),
    ({"fallback": {"cluster": "agg"}}, "fallback.cluster: unknown field (set models per model)"),
    ({"attempt_filter": True, "models": []}, "models: the attempt filter takes no other field"),
    ({"attempt_filter": "yes"}, "attempt_filter: must be true or false"),
])
def test_config_errors_name_the_field(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse(cfg)
    assert message in str(e.value)


def test_bad_config_fails_plugin_start_with_reason(make_host) -> None:
    h = make_host("ai_gateway")
    assert not h.start(with_("aliases/0/targets/0/model", "ghost"))
    assert any("aliases[0].targets[0].model: unknown model 'ghost'" in m for m in h.logs_at(LogLevel.CRITICAL))


def test_defaults() -> None:
    cfg = parse(CONFIG)
    qwen = cfg.models["qwen2-1-5b"]
    assert (qwen.upstream_model, qwen.fallback.mode, qwen.fallback.max_attempts) == ("qwen2-1-5b", "SEQ", 3)
    assert 503 in qwen.fallback.on_status and 504 in qwen.fallback.on_status and 429 not in qwen.fallback.on_status
    assert (cfg.route_header, cfg.model_header, cfg.max_body_bytes) == ("x-ai-upstream", "x-ai-model", 10 << 20)
    assert not parse({}).enabled


def test_fallback_cluster_becomes_envoy_retry_headers() -> None:
    """The retry policy Envoy gets for a fallback cluster, computed once: statuses, key statuses, attempts, timeout."""
    fb = parse(with_("models/0/fallback", {"models": ["gemma-2-2b", "llama-3"], "cluster": "agg", "on_status": ["5xx", 429],
                                         "first_byte_timeout_ms": 2500})).models["qwen2-1-5b"].fallback
    assert dict(fb.retry_headers) == {
        "x-envoy-retry-on": "connect-failure,refused-stream,reset,5xx,retriable-status-codes",
        "x-envoy-retriable-status-codes": "429", "x-envoy-max-retries": "2",
        "x-envoy-upstream-rq-per-try-timeout-ms": "2500"}
    cfg = with_("models/0/fallback", {"models": ["gemma-2-2b"], "cluster": "agg", "on_status": [504, "4xx"]})
    cfg["models"][0]["api_keys"] = {"keys": ["k"]}
    h = dict(parse(cfg).models["qwen2-1-5b"].fallback.retry_headers)
    assert h["x-envoy-retry-on"] == "connect-failure,refused-stream,reset,gateway-error,retriable-status-codes"
    assert h["x-envoy-retriable-status-codes"].split(",") == [str(c) for c in range(400, 500)] + ["504"]
    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in h and h["x-envoy-max-retries"] == "1"
    assert parse(CONFIG).models["qwen2-1-5b"].fallback.retry_headers == ()  # callouts: no Envoy retries
    attempt = parse({"attempt_filter": True})
    assert attempt.attempt_filter and not attempt.enabled
