"""Anthropic Messages API <-> OpenAI chat completions: the pure translations (plugin/ai_gateway/clients/), checked
against golden files made from Anthropic's published examples, and streams split anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ai_gateway.clients import AnthropicClient
from ai_gateway.clients.anthropic_answer import error_body, message_body, to_message
from ai_gateway.clients.anthropic_request import to_openai
from ai_gateway.clients.anthropic_stream import StreamTranslator
from ai_gateway.errors import GatewayError

GOLDEN = Path(__file__).parent / "golden" / "anthropic_clients"


def golden(prefix: str) -> list[Any]:
    files = sorted(GOLDEN.glob(prefix + "*.json"))
    assert files, f"no golden files {prefix}*"
    return [pytest.param(json.loads(f.read_text()), id=f.stem) for f in files]


def events(raw: bytes) -> list[list[Any]]:
    """[event name, data] of an Anthropic SSE body; each event's name is its data's type."""
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            name, data = block.split("\n")
            assert name.startswith("event: ") and data.startswith("data: ")
            doc = json.loads(data[6:])
            assert doc["type"] == name[7:]
            out.append([name[7:], doc])
    return out


@pytest.mark.parametrize("case", golden("request_"))
def test_request_golden(case: dict[str, Any]) -> None:
    assert to_openai(json.dumps(case["anthropic"]).encode()) == case["openai"]


@pytest.mark.parametrize("case", golden("answer_"))
def test_answer_golden(case: dict[str, Any]) -> None:
    stops = tuple(case.get("stop_sequences", ()))
    assert to_message(case["openai"], stops) == case["anthropic"]
    assert json.loads(message_body(json.dumps(case["openai"]).encode(), stops)) == case["anthropic"]


@pytest.mark.parametrize("case", golden("stream_"))
def test_stream_golden(case: dict[str, Any]) -> None:
    tr = StreamTranslator()
    out = b"".join(tr.feed(c.encode()) for c in case["openai"]) + tr.feed(b"", True)
    assert events(out) == case["anthropic"]


@pytest.mark.parametrize("case", golden("stream_"))
def test_whole_stream_translates_the_same(case: dict[str, Any]) -> None:
    """A stream that came whole (a callout fallback, a cache hit) gives the same events."""
    whole = AnthropicClient().whole(200, "".join(case["openai"]).encode(), "text/event-stream")
    assert events(whole) == case["anthropic"]


def _stream_bodies() -> list[bytes]:
    return [b"".join(c.encode() for c in json.loads(f.read_text())["openai"]) for f in
            sorted(GOLDEN.glob("stream_*.json"))]


@settings(max_examples=300, deadline=None)
@given(which=st.integers(0, len(_stream_bodies()) - 1), cuts=st.lists(st.integers(0, 4000), max_size=12),
       crlf=st.booleans(), per_event=st.booleans())
def test_stream_split_anywhere_gives_identical_events(which: int, cuts: list[int], crlf: bool,
                                                      per_event: bool) -> None:
    """Cut anywhere, and (``per_event``) also after every event, as vLLM sends them: the undecoded usual chunk."""
    body = _stream_bodies()[which]
    if crlf:
        body = body.replace(b"\n", b"\r\n")
    whole = StreamTranslator().feed(body, True)
    tr = StreamTranslator()
    ends = {i + 2 for i in range(len(body)) if body.startswith(b"\n\n", i)} if per_event else set()
    points = sorted({c % (len(body) + 1) for c in cuts} | ends)
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    out = [tr.feed(p) for p in pieces] + [tr.feed(b"", True)]
    assert events(b"".join(out)) == events(whole)
    assert events(whole)[-1][0] == "message_stop"


def test_events_leave_as_soon_as_they_are_complete() -> None:
    tr = StreamTranslator()
    first = b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
    assert tr.feed(first[:30]) == b""  # an incomplete event is held, nothing else
    got = events(tr.feed(first[30:]))
    assert [e for e, _ in got] == ["message_start", "content_block_start", "content_block_delta"]
    assert tr.buf == b""


def test_reasoning_then_text_then_parallel_tools() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + json.dumps({"id": "c", "model": "m", "choices": [
            {"index": 0, "delta": delta, "finish_reason": finish}]}).encode() + b"\n\n"

    tr = StreamTranslator()
    out = tr.feed(b"".join([
        chunk({"reasoning_content": "think"}), chunk({"content": "ok"}),
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{\"x\":1}"}}]}),
        chunk({}, "tool_calls"), b"data: [DONE]\n\n"]))
    evs = events(out)
    starts = [d["content_block"] for e, d in evs if e == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""}, {"type": "text", "text": ""},
                      {"type": "tool_use", "id": "a", "name": "f", "input": {}},
                      {"type": "tool_use", "id": "b", "name": "g", "input": {}}]
    assert [d["index"] for e, d in evs if e == "content_block_stop"] == [0, 1, 2, 3]
    assert evs[-2][1]["delta"]["stop_reason"] == "tool_use"
    assert evs[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}  # the server reported none


def test_upstream_error_event_mid_stream() -> None:
    tr = StreamTranslator()
    out = tr.feed(b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
                  b'data: {"error":{"message":"engine died","type":"InternalServerError","code":500}}\n\n'
                  b"data: [DONE]\n\n", True)
    evs = events(out)
    assert [e for e, _ in evs][-2:] == ["content_block_stop", "error"]
    assert evs[-1][1] == {"type": "error", "error": {"type": "api_error", "message": "engine died"}}


def test_stream_without_finish_ends_in_an_error_event() -> None:
    tr = StreamTranslator()
    out = tr.feed(b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', True)
    assert events(out)[-1][1]["error"]["type"] == "api_error"


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (415, "invalid_request_error"),
    (429, "rate_limit_error"), (500, "api_error"), (502, "api_error"), (503, "api_error"), (529, "overloaded_error"),
])
def test_error_types_by_status(status: int, kind: str) -> None:
    body = json.dumps({"error": {"message": "m", "type": "x", "param": None, "code": "c"}}).encode()
    assert json.loads(error_body(status, body)) == {"type": "error", "error": {"type": kind, "message": "m"}}


@pytest.mark.parametrize(("body", "message"), [
    (b'{"object":"error","message":"vLLM says no","type":"BadRequestError","code":400}', "vLLM says no"),
    (b'{"detail":"Not Found"}', "Not Found"),
    (b"upstream connect error or disconnect/reset before headers", "upstream connect error or disconnect/reset "
                                                                    "before headers"),
    (b"", "upstream error"),
])
def test_error_messages_of_every_shape(body: bytes, message: str) -> None:
    assert json.loads(error_body(502, body))["error"]["message"] == message


@pytest.mark.parametrize(("doc", "words"), [
    ({"model": "m", "messages": []}, "max_tokens: Field required"),
    ({"model": "m", "max_tokens": 0, "messages": []}, "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages: Field required"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
     "messages.0.content.0"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tools": [{"type": "bash_20250124", "name": "bash"}]},
     "tools.0"),
    ({"model": "m", "max_tokens": 5, "messages": [], "tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
])
def test_invalid_requests_are_400s(doc: dict[str, Any], words: str) -> None:
    with pytest.raises(GatewayError) as e:
        to_openai(json.dumps(doc).encode())
    assert e.value.status == 400 and words in str(e.value)


def test_error_messages_echo_little_of_the_input() -> None:
    doc = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "x" * 10000}]}]}
    with pytest.raises(GatewayError) as e:
        to_openai(json.dumps(doc).encode())
    assert len(str(e.value)) < 400 and "xxx..." in str(e.value)


def test_tool_arguments_that_are_not_an_object() -> None:
    answer = {"choices": [{"message": {"tool_calls": [
        {"id": "t", "function": {"name": "f", "arguments": "not json"}}]}, "finish_reason": "tool_calls"}]}
    assert to_message(answer)["content"] == [{"type": "tool_use", "id": "t", "name": "f",
                                              "input": {"_raw_arguments": "not json"}}]


def test_a_forced_tool_call_is_tool_use_though_vllm_says_stop() -> None:
    answer = {"choices": [{"message": {"content": "", "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "stop"}]}
    assert to_message(answer)["stop_reason"] == "tool_use"
    tr = StreamTranslator()
    out = tr.feed(b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t",'
                  b'"type":"function","function":{"name":"f","arguments":"{}"}}]}}]}\n\n'
                  b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
                  b"data: [DONE]\n\n", True)
    assert events(out)[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_length_is_max_tokens() -> None:
    answer = {"id": "x", "choices": [{"message": {"content": "a"}, "finish_reason": "length"}]}
    assert to_message(answer)["stop_reason"] == "max_tokens"


def test_local_reply_headers() -> None:
    body, headers = AnthropicClient().local_reply(
        429, b'{"error":{"message":"slow down"}}', [("content-type", "text/plain"), ("retry-after", "3"),
                                                     ("content-length", "10")])
    assert headers == [("retry-after", "3"), ("content-type", "application/json")]
    assert json.loads(body)["error"] == {"type": "rate_limit_error", "message": "slow down"}


@pytest.mark.parametrize("ascii_only", [True, False])
def test_usual_chunks_translated_undecoded_give_the_same_events(ascii_only: bool) -> None:
    """vLLM's usual chunk (one text delta) skips the JSON decoder: its content string is copied as it is."""
    head = {"id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None, **more: Any) -> bytes:
        doc = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **more}],
               "usage": None}
        return b"data: " + json.dumps(doc, separators=(",", ":"), ensure_ascii=ascii_only).encode() + b"\n\n"

    texts = ['He said "hi"\n', "é", "\u2028", "\\", "tab\t", "\U0001F600", "</script>"]
    chunks = [chunk({"role": "assistant", "content": ""})] + [chunk({"content": t}) for t in texts] + [
        chunk({"content": "!"}, stop_reason=None), chunk({"content": ""}, "stop"), b"data: [DONE]\n\n"]
    one_by_one = StreamTranslator()
    got = b"".join(one_by_one.feed(c) for c in chunks) + one_by_one.feed(b"", True)
    # the same events as decoded one by one (non-ASCII text stays UTF-8 here, \u-escaped there)
    assert events(got) == events(StreamTranslator().feed(b"".join(chunks), True))
    evs = events(got)
    assert "".join(d["delta"]["text"] for e, d in evs if e == "content_block_delta") == "".join(texts) + "!"
    assert one_by_one.done and one_by_one.usage is None


# -- hostile input: every translation answers (a document, a 400, well-formed events), none raises anything else --

_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                     | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
                         st.sampled_from(["type", "text", "content", "role", "source", "tool_use_id", "id", "name",
                                          "input", "media_type", "data", "url", "x"]), inner, max_size=4),
                     max_leaves=20)
_valid_blocks = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=6)),
    st.builds(lambda d: {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": d}},
              st.text(max_size=6)),
    st.builds(lambda i, n, x: {"type": "tool_use", "id": i, "name": n, "input": x}, st.text(max_size=4),
              st.text(max_size=4), st.dictionaries(st.text(max_size=3), _json, max_size=2)),
    st.builds(lambda i, c: {"type": "tool_result", "tool_use_id": i, "content": c}, st.text(max_size=4),
              st.text(max_size=4) | st.lists(st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=3)),
                                             max_size=2)),
    st.just({"type": "thinking", "thinking": "t", "signature": "s"}))
_hostile_blocks = st.fixed_dictionaries({"type": st.sampled_from(["text", "image", "tool_use", "tool_result",
                                                                  "document", 7])},
                                        optional={"text": _json, "source": _json, "id": _json, "name": _json,
                                                  "input": _json, "tool_use_id": _json, "content": _json})
_blocks = st.lists(_valid_blocks, max_size=4) | st.lists(_valid_blocks | _hostile_blocks, max_size=4)
_requests = st.fixed_dictionaries(
    {"model": st.just("m") | _json, "max_tokens": st.integers(1, 5) | st.integers(1, 5) | _json,
     "messages": st.lists(st.fixed_dictionaries({
         "role": st.sampled_from(["user", "assistant", "user", "assistant", "system"]),
         "content": st.text(max_size=5) | _blocks | _blocks | _json}), max_size=4)},
    optional={"system": st.text(max_size=5) | _blocks | _json,
              "tools": st.lists(st.builds(lambda n, s: {"name": n, "input_schema": s}, st.text(max_size=3), _json),
                                max_size=2) | _json,
              "tool_choice": st.sampled_from([{"type": "auto"}, {"type": "any"}, {"type": "tool", "name": "f"},
                                              {"type": "none"}]) | _json,
              "stop_sequences": st.lists(st.text(max_size=3), max_size=2) | _json, "stream": _json,
              "metadata": _json, "temperature": _json})


@settings(max_examples=400, deadline=None)
@given(req=_requests)
def test_hostile_requests_are_translated_or_400(req: dict[str, Any]) -> None:
    try:
        doc = to_openai(json.dumps(req).encode())
    except GatewayError as e:
        assert e.status == 400 and len(str(e)) < 600
        return
    assert isinstance(doc["messages"], list) and type(doc["max_tokens"]) is int
    json.loads(json.dumps(doc))  # encodable as the gateway encodes it


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300) | st.lists(st.sampled_from([
    b"data: [DONE]\n\n", b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\n\n', b"data: {\n\n",
    b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":"x","function":7}]},"finish_reason":"stop"}]}\n\n',
    b'data: {"error":[1]}\n\n', b'data: {"usage":{"prompt_tokens":-1}}\n\n', b"\r\n", b": ping\n\n",
    b'data: {"choices":[{"index":0,"delta":{"reasoning_content":"r","content":"c"},"finish_reason":"length"}]}\n\n',
]), max_size=8).map(b"".join), cut=st.integers(0, 400))
def test_hostile_streams_give_well_formed_events(data: bytes, cut: int) -> None:
    tr = StreamTranslator()
    out = tr.feed(data[:cut]) + tr.feed(data[cut:], True)
    evs = events(out)
    assert evs and evs[-1][0] in ("message_stop", "error")  # it always ends, one way or the other
    assert sum(e == "message_stop" for e, _ in evs) <= 1


@settings(max_examples=200, deadline=None)
@given(body=st.binary(max_size=200) | _json.map(lambda d: json.dumps(d).encode()), status=st.integers(200, 599))
def test_hostile_answers_give_anthropic_shapes(body: bytes, status: int) -> None:
    out = json.loads(AnthropicClient().whole(status, body, "application/json"))
    assert out["type"] == ("error" if status >= 400 or out["type"] == "error" else "message")
