"""Every configuration field's bad values fail plugin start with the field named (issue 23.7, 16.8).

One table over a configuration that uses every field: each row sets one field (by path) to a bad value and names
what the error must say. The rows cover the malformed configurations the security probe saw accepted (``probe``)
(issue 23.7 names 25 of its 30; the rest are among the other rows). The whole table runs through ``parse`` and, on one VM per host, through plugin start (the VM
refuses each and keeps serving with its good configuration). Keys never appear in an error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from ai_gateway.config import parse
from proxywasm import ConfigError, LogLevel

from .gateway import CHAT, chat_body

KEY_A, KEY_B = "sk-table-key-0001", "sk-table-key-0002"
BASE: dict[str, Any] = {
    "models": [
        {"name": "a", "cluster": "ca", "upstream_model": "org/a", "authority": "a.example",
         "fallback": {"models": ["b"], "on_status": ["5xx", 429], "mode": "SEQ", "max_attempts": 2, "timeout_ms": 1000},
         "mirror": {"model": "b", "percent": 10},
         "api_keys": {"keys": [KEY_A, KEY_B], "header": "authorization", "prefix": "Bearer ", "selection": "random",
                      "eject_on": [401, 429], "consecutive_5xx": 3, "cooldown_ms": 1000, "when_all_out": "fail",
                      "forward_client_credential": False,
                      "probe": {"path": "/v1/models", "interval_ms": 1000, "timeout_ms": 100}}},
        {"name": "b", "cluster": "cb", "endpoint_picker": {"endpoints": ["10.0.0.1:8000"], "metrics_path": "/metrics"}},
    ],
    "aliases": [{"name": "al", "sticky_header": "x-user", "targets": [{"model": "a", "weight": 1}]}],
    "fallback": {"on_status": ["5xx"]},
    "route_header": "x-ai-upstream", "model_header": "x-ai-model", "consumer_header": "x-mse-consumer",
    "max_consumers": 10, "max_body_bytes": 2048, "paths": ["/v1/chat/completions", "/v1/embeddings"],
    "models_endpoint": True, "inject_stream_usage": True, "strip_injected_usage": True, "ai_log": "both",
    "metrics": True,
}
M0, M1, KEYS, PROBE, FB = "models/0", "models/1", "models/0/api_keys", "models/0/api_keys/probe", "models/0/fallback"

# (path, bad value, what the error says, named in issue 23.7 as silently accepted by the security probe)
TABLE: list[tuple[str, Any, str, bool]] = [
    # API keys: a secret file's single trailing newline is removed; any other control character is refused
    (f"{KEYS}/keys", [KEY_A + "\nX"], "models[0].api_keys.keys[0]: must not contain control characters", True),
    (f"{KEYS}/keys", [KEY_A + "\r\n\n"], "models[0].api_keys.keys[0]: must not contain control characters", True),
    (f"{KEYS}/keys", [KEY_A + "\x00"], "models[0].api_keys.keys[0]: must not contain control characters", True),
    (f"{KEYS}/keys", [KEY_A, "\r" + KEY_B], "models[0].api_keys.keys[1]: must not contain control characters", False),
    (f"{KEYS}/keys", [" " + KEY_A], "models[0].api_keys.keys[0]: must not begin or end with spaces", False),
    (f"{KEYS}/keys", [KEY_A, ""], "models[0].api_keys.keys[1]: must not be empty", False),
    (f"{KEYS}/keys", [], "models[0].api_keys.keys: must be a non-empty list", False),
    (f"{KEYS}/keys", [KEY_A, KEY_A + "\n"], "models[0].api_keys.keys: has duplicates", False),
    (f"{KEYS}/keys", KEY_A, "models[0].api_keys.keys: must be a list of strings", False),
    (f"{KEYS}/header", "x-ai-upstream", "models[0].api_keys.header: must not be 'x-ai-upstream'", True),
    (f"{KEYS}/header", "x-ai-model", "models[0].api_keys.header: must not be 'x-ai-model'", False),
    (f"{KEYS}/header", "x-mse-consumer", "models[0].api_keys.header: must not be 'x-mse-consumer'", False),
    (f"{KEYS}/header", "x-gateway-destination-endpoint", "models[0].api_keys.header: must not be", False),
    (f"{KEYS}/header", "", "models[0].api_keys.header: must not be empty", True),
    (f"{KEYS}/header", ":authority", "models[0].api_keys.header: must not be a pseudo-header", True),
    (f"{KEYS}/header", "api key", "models[0].api_keys.header: must be an HTTP header name", True),
    (f"{KEYS}/header", "api-key\r\nx: y", "models[0].api_keys.header: must be an HTTP header name", False),
    (f"{KEYS}/header", "content-length", "models[0].api_keys.header: must not be 'content-length'", False),
    (f"{KEYS}/prefix", "Bearer\r\n", "models[0].api_keys.prefix: must not contain control characters", True),
    (f"{KEYS}/eject_on", [200], "models[0].api_keys.eject_on: must be a list of error statuses", True),
    (f"{KEYS}/eject_on", [302], "models[0].api_keys.eject_on: must be a list of error statuses", False),
    (f"{KEYS}/eject_on", ["401"], "models[0].api_keys.eject_on: must be a list of error statuses", False),
    (f"{KEYS}/eject_on", [True], "models[0].api_keys.eject_on: must be a list of error statuses", False),
    (f"{KEYS}/selection", "lru", "models[0].api_keys.selection: must be one of", False),
    (f"{KEYS}/consecutive_5xx", -1, "models[0].api_keys.consecutive_5xx: must be between", False),
    (f"{KEYS}/cooldown_ms", 0, "models[0].api_keys.cooldown_ms: must be between", False),
    (f"{KEYS}/when_all_out", "wait", "models[0].api_keys.when_all_out: must be one of", False),
    (f"{KEYS}/forward_client_credential", "yes", "models[0].api_keys.forward_client_credential: must be true", False),
    (f"{KEYS}/colour", 1, "models[0].api_keys.colour: unknown field", False),
    (f"{PROBE}/path", "v1/models", "models[0].api_keys.probe.path: must be an absolute path", True),
    (f"{PROBE}/path", "", "models[0].api_keys.probe.path: must be an absolute path", True),
    (f"{PROBE}/path", "/v1/models\r\nX: y", "models[0].api_keys.probe.path: must be an absolute path", True),
    (f"{PROBE}/path", "http://x/v1/models", "models[0].api_keys.probe.path: must be an absolute path", False),
    (f"{PROBE}/interval_ms", 10, "models[0].api_keys.probe.interval_ms: must be between", False),
    (f"{PROBE}/timeout_ms", 0, "models[0].api_keys.probe.timeout_ms: must be between", False),
    # fallback
    (f"{FB}/on_status", ["2xx"], "models[0].fallback.on_status[0]: must be an error status", True),
    (f"{FB}/on_status", [200], "models[0].fallback.on_status[0]: must be an error status", False),
    (f"{FB}/on_status", ["3xx"], "models[0].fallback.on_status[0]: must be an error status", False),
    (f"{FB}/on_status", ["0503"], "models[0].fallback.on_status[0]: must be an error status", False),
    (f"{FB}/on_status", [], "models[0].fallback.on_status: must be a non-empty list", False),
    (f"{FB}/models", ["b", "b"], "models[0].fallback.models: has duplicates", True),
    (f"{FB}/models", ["a"], "models[0].fallback.models: must not contain the model itself", False),
    (f"{FB}/models", ["zz"], "models[0].fallback.models: unknown model 'zz'", True),
    (f"{FB}/models", [], "models[0].fallback.models: must name at least one model", False),
    (f"{FB}/mode", "ROUND", "models[0].fallback.mode: must be one of SEQ, RAND", False),
    (f"{FB}/max_attempts", 11, "models[0].fallback.max_attempts: must be between 2 and 10", False),
    (f"{FB}/timeout_ms", 99, "models[0].fallback.timeout_ms: must be between", False),
    ("fallback/models", ["b"], "fallback.models: unknown field", False),
    ("fallback/on_status", ["1xx"], "fallback.on_status[0]: must be an error status", False),
    # mirror
    (f"{M0}/mirror/model", "a", "models[0].mirror.model: must not be the model itself", True),
    (f"{M0}/mirror/model", "zz", "models[0].mirror.model: unknown model 'zz'", True),
    (f"{M0}/mirror/percent", 101, "models[0].mirror.percent: must be between", False),
    (f"{M0}/mirror/percent", "10", "models[0].mirror.percent: must be a number", False),
    # a model's own fields
    (f"{M0}/name", "", "models[0].name: must not be empty", False),
    (f"{M0}/name", "a\nb", "models[0].name: must not contain control characters", False),
    (f"{M1}/name", "a", "models[1].name: duplicate model 'a'", False),
    (f"{M0}/upstream_model", "", "models[0].upstream_model: must not be empty", True),
    (f"{M0}/upstream_model", " ", "models[0].upstream_model: must not be empty", False),
    (f"{M0}/cluster", "", "models[0].cluster: must not be empty", False),
    (f"{M0}/cluster", "ca\r\n", "models[0].cluster: must be non-empty, without spaces or control characters", True),
    (f"{M0}/cluster", "c a", "models[0].cluster: must be non-empty, without spaces or control characters", False),
    (f"{M0}/authority", "a.example\r\nx: y", "models[0].authority: must be non-empty, without spaces or control", True),
    (f"{M0}/authority", 5, "models[0].authority: must be a string", False),
    (f"{M1}/endpoint_picker/header", ":path", "models[1].endpoint_picker.header: must not be a pseudo-header", False),
    (f"{M1}/endpoint_picker/header", "x-ai-upstream", "models[1].endpoint_picker.header: must differ", False),
    (f"{M1}/endpoint_picker/criticality_header", "a b", "endpoint_picker.criticality_header: must be an HTTP header",
     False),
    # aliases
    ("aliases/0/sticky_header", ":path", "aliases[0].sticky_header: must not be a pseudo-header", False),
    ("aliases/0/sticky_header", "x-user\n", "aliases[0].sticky_header: must be an HTTP header name", False),
    ("aliases/0/targets/0/model", "zz", "aliases[0].targets[0].model: unknown model 'zz'", False),
    ("aliases/0/targets/0/weight", True, "aliases[0].targets[0].weight: must be an integer", False),
    ("aliases/0/name", "b", "aliases[0].name: 'b' is already a model or alias name", False),
    # top-level headers
    ("route_header", "", "route_header: must not be empty", True),
    ("route_header", ":path", "route_header: must not be a pseudo-header", True),
    ("route_header", ":authority", "route_header: must not be a pseudo-header", True),
    ("route_header", "authorization", "route_header: must not be authorization", True),
    ("route_header", "Authorization", "route_header: must not be authorization", False),
    ("route_header", "x-route\r\nx: y", "route_header: must be an HTTP header name", True),
    ("route_header", "x-ai-model", "model_header: must differ from route_header", True),
    ("route_header", "x route", "route_header: must be an HTTP header name", False),
    ("route_header", "x-route\u00e9", "route_header: must be an HTTP header name", False),
    ("route_header", "host", "route_header: must not be 'host'", False),
    ("route_header", "transfer-encoding", "route_header: must not be 'transfer-encoding'", False),
    ("model_header", "authorization", "model_header: must not be authorization", False),
    ("model_header", ":method", "model_header: must not be a pseudo-header", False),
    ("model_header", "", "model_header: must not be empty", False),
    ("consumer_header", ":path", "consumer_header: must not be a pseudo-header", False),
    ("consumer_header", "authorization", "consumer_header: must not be 'authorization'", False),
    ("consumer_header", "x-ai-upstream", "consumer_header: must not be 'x-ai-upstream'", False),
    ("consumer_header", "x consumer", "consumer_header: must be an HTTP header name", False),
    # paths and the rest
    ("paths", [], "paths: must list at least one path", True),
    ("paths", ["v1/chat/completions"], "paths[0]: must be an absolute path", True),
    ("paths", ["/v1/chat/completions", ""], "paths[1]: must be an absolute path", False),
    ("paths", ["/v1/chat/completions?x=1"], "paths[0]: must be an absolute path", False),
    ("paths", ["/v1//chat/completions"], "paths[0]: must be a normalised path", False),
    ("paths", ["/v1/chat/completions/"], "paths[0]: must be a normalised path", False),
    ("paths", ["/v1/./chat/completions"], "paths[0]: must be a normalised path", False),
    ("paths", "/v1/chat/completions", "paths: must be a list of strings", False),
    ("max_consumers", 0, "max_consumers: must be between", False),
    ("max_body_bytes", 10, "max_body_bytes: must be between", False),
    ("ai_log", "stdout", "ai_log: must be one of", False),
    ("metrics", "yes", "metrics: must be true or false", False),
    ("models_endpoint", 1, "models_endpoint: must be true or false", False),
    ("inject_stream_usage", None, "", False),  # null: the default (valid), kept as a control row
]


def with_value(path: str, value: Any) -> dict[str, Any]:
    cfg = json.loads(json.dumps(BASE))
    *parents, last = path.split("/")
    node = cfg
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[last] = value
    return cfg


def test_base_is_valid_and_keeps_one_trailing_newline_out() -> None:
    cfg = parse(with_value(f"{KEYS}/keys", [KEY_A + "\n", KEY_B + "\r\n"]))
    assert cfg.models["a"].keys.keys == (KEY_A, KEY_B)  # what a secret file's last line gives


@pytest.mark.parametrize(("path", "value", "message", "probe"), TABLE,
                         ids=[f"{p}={json.dumps(v)[:30]}" for p, v, *_ in TABLE])
def test_bad_value_names_the_field(path: str, value: Any, message: str, probe: bool) -> None:
    doc = with_value(path, value)
    if not message:
        parse(doc)
        return
    with pytest.raises(ConfigError) as e:
        parse(doc)
    text = str(e.value)
    assert message in text, text
    assert KEY_A not in text and KEY_B not in text


def test_every_bad_value_fails_plugin_start(make_host: Any) -> None:
    """The same table through the plugin's start on one VM: each refused with its reason logged, the VM keeps
    serving with its good configuration."""
    h = make_host("ai_gateway")
    assert h.start(BASE), h.logs
    for path, value, message, _ in TABLE:
        if not message:
            continue
        since = len(h.logs)
        assert h.configure(with_value(path, value)) is False, (path, value)
        errors = [m for lv, m in h.logs[since:] if lv >= LogLevel.ERROR]
        assert len(errors) == 1 and message in errors[0], (path, errors)
        assert KEY_A not in errors[0] and KEY_B not in errors[0]
    s = h.http_stream()
    s.send_request_headers(CHAT)
    s.send_request_body(chat_body("al"))
    assert s.request_header("x-ai-upstream") == "ca"
