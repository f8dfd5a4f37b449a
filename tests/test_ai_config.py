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
