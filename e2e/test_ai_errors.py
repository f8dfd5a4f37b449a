"""Every error a client of an AI path gets is an OpenAI-style JSON error, in a real Envoy with the shipped config
(issue 16.3): Envoy's own local replies (connect failure, unknown cluster, no healthy upstream, overflow, timeout,
its buffer's 413, no route) through the config's ``local_reply_config``, the gateway's own errors unchanged (not
wrapped twice), fallback exhaustion; plus ``GET /v1/models/{id}`` (16.4), path spellings (23.6) and content types
(16.7), all with the official ``openai`` client where it can send the request.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import openai
import pytest

from e2e.ai_stack import CANARY, GEMMA, HELLO, QWEN, AiStack, chat, send

Launch = Callable[..., AbstractContextManager[AiStack]]
GEMMA_ENTRY = '{"name": "gemma-2-2b", "cluster": "gemma-2-2b"}'
EXTRA_MODELS = ('{"name": "ghost", "cluster": "no-such-cluster"}, {"name": "empty", "cluster": "empty"}, '
                '{"name": "full", "cluster": "full"}')
# a cluster without endpoints (no healthy upstream) and one whose circuit breaker admits no request (overflow)
EXTRA_CLUSTERS = """  clusters:
  - name: empty
    type: STATIC
    connect_timeout: 1s
    load_assignment: {cluster_name: empty, endpoints: []}
  - name: full
    type: STATIC
    connect_timeout: 1s
    circuit_breakers: {thresholds: [{max_requests: 0, max_pending_requests: 0, max_connections: 0}]}
    load_assignment:
      cluster_name: full
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]
"""


@pytest.fixture(scope="module")
def stack(ai_launch: Launch) -> Iterator[AiStack]:
    # A 1 s route timeout, a 64 KiB Envoy buffer (the plugin's own limit stays 10 MiB), models on a cluster Envoy
    # does not have, on one without endpoints and on one that overflows, and a default route for /v1/ only (so
    # other paths have no route).
    replace = {GEMMA_ENTRY: GEMMA_ENTRY + ", " + EXTRA_MODELS, 'match: {prefix: "/"}': 'match: {prefix: "/v1/"}',
               "  clusters:\n": EXTRA_CLUSTERS}
    with ai_launch(replace=replace, route_timeout="1s", buffer_limit=65536) as s:
        yield s


@pytest.fixture
def gw(stack: AiStack) -> AiStack:
    stack.reset()
    return stack


def typed(err: openai.APIStatusError, status: int, code: str, kind: str) -> dict[str, Any]:
    """The openai client saw a typed error: status, ``code`` and ``type`` from an OpenAI-style JSON body."""
    resp = err.response
    assert resp.status_code == status and resp.headers["content-type"].startswith("application/json"), resp.text
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert (err.status_code, err.code, err.type) == (status, code, kind), body
    assert isinstance(err.message, str) and body["error"]["message"] in err.message
    return body["error"]


# ------------------------------------------------------------------------------------ Envoy's own local replies


def test_connect_failure_is_an_openai_error(gw: AiStack) -> None:
    gw.gemma.stop()  # gemma has no fallback: Envoy's own 503
    try:
        with pytest.raises(openai.InternalServerError) as err:
            chat(gw, GEMMA)
    finally:
        gw.gemma.restart()
    e = typed(err.value, 503, "upstream_unavailable", "server_error")
    assert "connection_failure" in e["message"] or "connect" in e["message"], e


def test_all_models_down_exhausted_fallback_is_an_openai_error(gw: AiStack) -> None:
    gw.qwen.stop()
    gw.gemma.stop()
    try:
        with pytest.raises(openai.InternalServerError) as err:
            chat(gw, QWEN)
    finally:
        gw.qwen.restart()
        gw.gemma.restart()
    typed(err.value, 503, "upstream_unavailable", "server_error")
    assert err.value.response.headers["x-ai-fallback-exhausted"] == "1"


def test_fallback_answer_after_a_connect_failure_is_not_rewritten(gw: AiStack) -> None:
    gw.qwen.stop()
    try:
        raw = chat(gw, QWEN)
    finally:
        gw.qwen.restart()
    assert raw.http_response.status_code == 200 and raw.headers["x-ai-fallback-from"] == QWEN
    assert raw.parse().choices[0].message.content  # the fallback model's own answer


def test_upstream_timeout_is_an_openai_error(gw: AiStack) -> None:
    gw.gemma.fault(delay_ms=3000)
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw, GEMMA)
    typed(err.value, 504, "upstream_timeout", "server_error")


@pytest.mark.parametrize(("model", "detail"), [("ghost", "cluster_not_found"), ("empty", "no_healthy_upstream"),
                                               ("full", "overflow")])
def test_unknown_empty_or_full_cluster_is_an_openai_error(gw: AiStack, model: str, detail: str) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        chat(gw, model)
    e = typed(err.value, 503, "upstream_unavailable", "server_error")
    assert detail in e["message"], e


def test_envoy_buffer_limit_is_an_openai_error(gw: AiStack) -> None:
    big = [{"role": "user", "content": "x " * 60_000}]  # over Envoy's 64 KiB buffer, under the plugin's limit
    with pytest.raises(openai.APIStatusError) as err:
        chat(gw, QWEN, big)
    typed(err.value, 413, "request_too_large", "invalid_request_error")
    assert gw.qwen.count() == 0


def test_no_route_is_an_openai_error(gw: AiStack) -> None:
    r = gw.get("/healthz")
    assert r.status == 404 and r.headers["content-type"] == "application/json", r
    assert r.json()["error"]["code"] == "not_found" and r.json()["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------ the gateway's own errors


def test_gateway_errors_are_not_wrapped_twice(gw: AiStack) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        chat(gw, "gpt-5" + "x" * 5000)
    e = typed(err.value, 404, "model_not_found", "invalid_request_error")
    assert e["message"].startswith("The model `gpt-5xxx") and len(e["message"]) < 300  # capped echo
    r = gw.post("/v1/chat/completions", json.dumps({"model": QWEN, "messages": HELLO}).encode(),
                {"content-type": "text/plain"})
    assert r.status == 415 and r.json()["error"]["code"] == "unsupported_content_type", r
    assert gw.qwen.count() == gw.gemma.count() == 0


# ------------------------------------------------------------------------------------ /v1/models/{id}, paths


def test_models_retrieve_answers_every_listed_model(gw: AiStack) -> None:
    listed = [m.id for m in gw.client.models.list()]
    assert listed == [QWEN, GEMMA, "ghost", "empty", "full", CANARY]
    for name in listed:
        m = gw.client.models.retrieve(name)
        assert (m.id, m.object, m.owned_by) == (name, "model", "ai-gateway")
    with pytest.raises(openai.NotFoundError) as err:
        gw.client.models.retrieve("gpt-5")
    typed(err.value, 404, "model_not_found", "invalid_request_error")
    assert gw.qwen.count() == gw.gemma.count() == 0  # answered from the configuration


@pytest.mark.parametrize("path", ["//v1/chat/completions", "/v1//chat/completions", "/v1/./chat/completions",
                                  "/v1/x/../chat/completions", "/v1%2Fchat%2Fcompletions", "/v1/chat/%63ompletions"])
def test_path_spellings_are_routed_and_metered(gw: AiStack, path: str) -> None:
    r = send(gw.url + path, "POST", {"model": GEMMA, "messages": HELLO})
    assert r.status == 200 and r.headers["x-ai-served-model"] == GEMMA, r
    assert len(gw.gemma.requests()) == gw.gemma.count() == 1  # at /v1/chat/completions
    assert gw.qwen.count() == 0
