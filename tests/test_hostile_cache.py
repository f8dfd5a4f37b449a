"""The response cache against hostile or broken inputs, on both test hosts: upstream streams no server sends
(absurd tool-call indexes, wrong types, deep nesting) are passed on but never stored; a stored answer that
cannot be replayed as a stream is a miss, not a crash; entries are split by the path and query, and, without
consumers, by the client's own credential when it is what goes upstream."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from proxywasm import LogLevel
from tests.conftest import HostFactory
from tests.gateway import chat
from tests.test_ai_cache import ANSWER, MODELS, answer_json, body, config, events, hit
from tests.test_ai_consumers import started


def chunk(delta: Any, finish: Any = None, index: Any = 0) -> bytes:
    ev = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "qwen",
          "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(ev).encode() + b"\n\n"


def stream_of(*deltas: Any) -> bytes:
    return b"".join(chunk(d) for d in deltas) + chunk({}, "stop") + b"data: [DONE]\n\n"


DEEP = b"data: " + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"\n\n"
MALFORMED = {
    "tool_call_index_1e9": stream_of({"tool_calls": [{"index": 10**9, "function": {"name": "f", "arguments": ""}}]}),
    "tool_call_index_skips": stream_of({"tool_calls": [{"index": 3, "function": {"name": "f"}}]}),
    "tool_call_index_str": stream_of({"tool_calls": [{"index": "0", "function": {"name": "f"}}]}),
    "tool_calls_not_a_list": stream_of({"tool_calls": {"index": 0}}),
    "content_a_number": stream_of({"content": 7}),
    "content_a_list": stream_of({"content": ["a"]}),
    "delta_a_list": stream_of(["content"]),
    "name_a_dict": stream_of({"tool_calls": [{"index": 0, "function": {"name": {"x": 1}}}]}),
    "choice_index_huge": chunk({"content": "x"}, "stop", 10**12) + b"data: [DONE]\n\n",
    "choice_index_list": chunk({"content": "x"}, "stop", [0]) + b"data: [DONE]\n\n",
    "choices_a_dict": b'data: {"choices": {"0": 1}}\n\n' + stream_of({"content": "x"}),
    "deeply_nested": DEEP + stream_of({"content": "x"}),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_upstream_streams_pass_on_and_are_never_stored(make_host: HostFactory, name: str) -> None:
    host = started(make_host, config(tool_calls=True))
    raw = MALFORMED[name]
    t0 = time.monotonic()
    s = chat(host, body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body(raw[: len(raw) // 3], end_of_stream=False)
    s.send_response_body(raw[len(raw) // 3:], end_of_stream=True)
    s.complete()
    assert time.monotonic() - t0 < 20  # no quadratic or unbounded work on what the upstream sent
    assert s.response_body == raw  # the client gets what the server sent, untouched
    assert "aigw.cache.stored" not in host.metric_names
    again = chat(host, body(stream=True))
    assert not hit(again) and again.local_response is None  # a miss: upstream again
    assert not host.logs_at(LogLevel.ERROR), host.logs_at(LogLevel.ERROR)  # no plugin error (ERROR level)


def test_a_stored_answer_that_cannot_stream_is_a_miss_not_a_crash(make_host: HostFactory) -> None:
    host = started(make_host, config())
    odd = {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": 7}, "finish_reason": "stop"}]}
    answer_json(chat(host, body()), odd)  # stored as the upstream sent it (a JSON answer is not rebuilt)
    assert hit(chat(host, body()))  # replayed as it was to a JSON request
    s = chat(host, body(stream=True))  # a stream cannot be made of it: upstream
    assert s.local_response is None and s.response_header("x-ai-cache") is None
    assert host.metric("aigw.cache.model.qwen.miss") == 2
    assert not host.logs_at(LogLevel.ERROR), host.logs_at(LogLevel.ERROR)


def test_a_lone_surrogate_in_a_stored_answer_replays_escaped(make_host: HostFactory) -> None:
    """``"\\ud800"`` is valid JSON with no UTF-8 form: a replayed stream keeps it escaped, as the server sent it."""
    host = started(make_host, config())
    odd = {**ANSWER, "choices": [{"index": 0, "message": {"role": "assistant", "content": "a\ud800b"},
                                  "finish_reason": "stop"}]}
    answer_json(chat(host, body()), odd)  # json.dumps sends it as "a\\ud800b"
    again = chat(host, body(stream=True))
    assert hit(again)
    assert b"\\ud800" in again.local_response.body
    text = "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in events(again.local_response.body) if isinstance(e, dict) and e["choices"])
    assert text == "a\ud800b"
    assert not host.logs_at(LogLevel.ERROR), host.logs_at(LogLevel.ERROR)


def test_path_and_query_are_part_of_the_key(make_host: HostFactory) -> None:
    host = started(make_host, config())
    answer_json(chat(host, body()))
    assert hit(chat(host, body()))
    assert hit(chat(host, body(), {":path": "/v1//chat/./completions"}))  # the same path, normalised
    q = chat(host, body(), {":path": "/v1/chat/completions?api-version=2024-10-21"})
    assert not hit(q) and q.local_response is None
    answer_json(q)
    assert hit(chat(host, body(), {":path": "/v1/chat/completions?api-version=2024-10-21"}))
    assert not hit(chat(host, body(), {":path": "/v1/chat/completions?api-version=2025-01-01"}))


def test_without_consumers_entries_are_split_by_the_client_credential(make_host: HostFactory) -> None:
    host = started(make_host, config())
    a, b = {"authorization": "Bearer sk-upstream-user-a"}, {"authorization": "Bearer sk-upstream-user-b"}
    answer_json(chat(host, body(), a))
    assert hit(chat(host, body(), a))
    for other in (b, {}):  # another key holder, or no credential at all, never gets a's answer
        s = chat(host, body(), other)
        assert not hit(s) and s.local_response is None
    # the credential is only hashed into the key: never stored or logged
    assert not any("sk-upstream-user" in m for _, m in host.logs)
    assert all(b"sk-upstream-user" not in v and "sk-upstream-user" not in k
               for k, (v, _) in host.state.shared.data.items())


def test_a_key_pool_shares_entries_across_clients(make_host: HostFactory) -> None:
    models = [{**MODELS[0], "api_keys": {"keys": ["sk-pool-0000000001"]}}, MODELS[1]]
    host = started(make_host, {**config(), "models": models})
    answer_json(chat(host, body(), {"authorization": "Bearer client-1"}))
    assert hit(chat(host, body(), {"authorization": "Bearer client-2"}))  # the pool's key answered both
