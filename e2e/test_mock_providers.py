"""The provider mocks behave like the documented APIs, warts included (e2e/mock_providers)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from e2e import mock_providers
from e2e.client import request


@pytest.fixture(scope="module")
def mocks() -> Iterator[dict[str, mock_providers.ProviderMock]]:
    ms = {"anthropic": mock_providers.serve("anthropic", keys=["ka"]),
          "gemini": mock_providers.serve("gemini", keys=["kg"]),
          "azure": mock_providers.serve("azure", keys=["kz"], models=["dep"])}
    yield ms
    for m in ms.values():
        m.shutdown()


def post(mock: mock_providers.ProviderMock, path: str, body: object, headers: dict[str, str]):
    return request(mock.port, path, "POST", body, headers)


MSG = {"model": "claude-x", "max_tokens": 20, "messages": [{"role": "user", "content": "hi there"}]}
ANT = {"x-api-key": "ka", "anthropic-version": "2023-06-01"}


def test_anthropic_checks_like_the_api(mocks) -> None:
    m = mocks["anthropic"]
    r = post(m, "/v1/messages", {**MSG, "stream_options": {"include_usage": True}}, ANT)
    assert r.status == 400 and r.json()["error"] == {"type": "invalid_request_error",
                                                     "message": "stream_options: Extra inputs are not permitted"}
    assert post(m, "/v1/messages", MSG, {"x-api-key": "ka"}).status == 400  # anthropic-version is required
    r = post(m, "/v1/messages", MSG, {**ANT, "x-api-key": "nope"})
    assert r.status == 401 and r.json()["error"]["type"] == "authentication_error"
    r = post(m, "/v1/messages", {k: v for k, v in MSG.items() if k != "max_tokens"}, ANT)
    assert r.status == 400 and "max_tokens" in r.json()["error"]["message"]


def test_anthropic_stream_events_in_the_documented_order(mocks) -> None:
    r = post(mocks["anthropic"], "/v1/messages", {**MSG, "stream": True}, ANT)
    names = [line[7:] for line in r.body.decode().splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[3:-3]) == {"content_block_delta"}


def test_anthropic_overloaded(mocks) -> None:
    mocks["anthropic"].fault(status=529, count=1)
    r = post(mocks["anthropic"], "/v1/messages", MSG, ANT)
    assert r.status == 529 and r.json()["error"]["type"] == "overloaded_error"
    assert post(mocks["anthropic"], "/v1/messages", MSG, ANT).status == 200  # count=1: once


def test_gemini_checks_like_the_api(mocks) -> None:
    m = mocks["gemini"]
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    path = "/v1beta/models/gemini-2.5-flash:generateContent"
    r = post(m, path, body, {"x-goog-api-key": "wrong"})
    assert r.status == 400 and r.json()["error"]["status"] == "INVALID_ARGUMENT"  # a wrong key is a 400 there
    assert post(m, path, body, {}).json()["error"]["status"] == "PERMISSION_DENIED"
    r = post(m, path, {**body, "model": "x"}, {"x-goog-api-key": "kg"})
    assert r.status == 400 and 'Unknown name "model"' in r.json()["error"]["message"]
    r = post(m, path.replace("generateContent", "streamGenerateContent") + "?alt=sse", body, {"x-goog-api-key": "kg"})
    events = [e for e in r.body.split(b"\r\n\r\n") if e]
    assert r.status == 200 and all(e.startswith(b"data: {") for e in events) and b"[DONE]" not in r.body
    assert json.loads(events[-1][6:])["candidates"][0]["finishReason"] == "STOP"


def test_azure_checks_like_the_api(mocks) -> None:
    m = mocks["azure"]
    body = {"messages": [{"role": "user", "content": "hi"}]}
    r = post(m, "/openai/deployments/dep/chat/completions", body, {"api-key": "kz"})
    assert r.status == 404 and r.json()["error"]["message"] == "Resource not found"  # no api-version
    r = post(m, "/openai/deployments/other/chat/completions?api-version=2024-10-21", body, {"api-key": "kz"})
    assert r.status == 404 and r.json()["error"]["code"] == "DeploymentNotFound"
    r = post(m, "/openai/deployments/dep/chat/completions?api-version=2024-10-21", {**body, "stream": True},
             {"api-key": "kz"})
    first = json.loads(r.body.split(b"\n\n")[0][6:])
    assert first["choices"] == [] and "prompt_filter_results" in first and r.body.endswith(b"data: [DONE]\n\n")
