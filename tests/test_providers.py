"""Upstream protocol translators (ai_gateway.providers): golden files written from the providers' published
examples, and streams split anywhere giving the same OpenAI chunks."""

from __future__ import annotations

import json
import os
import random

import pytest

from ai_gateway.errors import GatewayError
from ai_gateway.providers import PAIRS, Answer, Provider, anthropic, translate
from ai_gateway.providers.common import StreamTranslator

from .conftest import REPO

GOLDEN = REPO / "tests" / "golden" / "providers"
NOW = 1700000000
PROVIDERS = {
    "anthropic": Provider("anthropic", "claude-sonnet-4-5", anthropic_version="2023-06-01", max_tokens=4096),
    "gemini": Provider("gemini", "gemini-2.5-flash"),
    "azure-openai": Provider("azure-openai", "my-gpt-4o", api_version="2024-10-21"),
}
REGEN = os.environ.get("REGEN_GOLDEN") == "1"  # writes the expected streams (*.openai.sse) anew: review the diff


def cases(prefix: str, ext: str = "json") -> list[str]:
    return sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.glob(f"*/{prefix}*.{ext}") if ".openai." not in p.name)


def answer(provider: str, usage: bool = True) -> Answer:
    return Answer(PAIRS[provider][0], usage)


@pytest.mark.parametrize("case", cases("request-"))
def test_request_golden(case: str) -> None:
    provider = case.split("/")[0]
    g = json.loads((GOLDEN / case).read_text())
    t = translate(PROVIDERS[provider], g["openai"], g.get("client_path", "/v1/chat/completions"))
    assert t.path == g["path"]
    assert (None if t.body is None else json.loads(t.body)) == g["provider"]  # null: the client's body as it is
    assert (t.answer is None) == (provider == "azure-openai")


@pytest.mark.parametrize("case", cases("answer-") + cases("error-"))
def test_answer_golden(case: str) -> None:
    provider = case.split("/")[0]
    g = json.loads((GOLDEN / case).read_text())
    status, ctype, tr = answer(provider).begin(g["status"], "application/json", NOW)
    assert (status, ctype) == (g.get("openai_status", g["status"]), "application/json")
    body = json.dumps(g["provider"]).encode()
    assert tr.feed(body[:7], False) == b""  # a JSON answer is translated once whole
    assert json.loads(tr.feed(body[7:], True)) == g["openai"]


def run_stream(provider: str, raw: bytes, splits: list[int]) -> bytes:
    status, ctype, tr = answer(provider).begin(200, "text/event-stream", NOW)
    assert (status, ctype) == (200, "text/event-stream")
    out, last = [], 0
    for cut in [*splits, len(raw)]:
        out.append(tr.feed(raw[last:cut], cut == len(raw)))
        last = cut
    return b"".join(out)


@pytest.mark.parametrize("case", cases("stream-", "sse"))
def test_stream_golden(case: str) -> None:
    provider = case.split("/")[0]
    raw = (GOLDEN / case).read_bytes()
    out = run_stream(provider, raw, [])
    expected = GOLDEN / case.replace("-compact", "").replace(".sse", ".openai.sse")  # compact: the same chunks
    if REGEN:
        expected.write_bytes(out)
    assert out == expected.read_bytes()
    events = [e for e in out.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    whole = b"cut-off" not in case.encode() and b"error" not in case.encode()
    assert (events[-1] == b"data: [DONE]") == whole  # a cut-off or failed stream never looks whole


@pytest.mark.parametrize("case", cases("stream-", "sse"))
def test_stream_split_at_every_offset(case: str) -> None:
    provider = case.split("/")[0]
    raw = (GOLDEN / case).read_bytes()
    whole = run_stream(provider, raw, [])
    for i in range(1, len(raw)):
        assert run_stream(provider, raw, [i]) == whole, i


@pytest.mark.parametrize("case", cases("stream-", "sse"))
def test_stream_random_splits(case: str) -> None:
    provider = case.split("/")[0]
    raw = (GOLDEN / case).read_bytes()
    whole = run_stream(provider, raw, [])
    rng = random.Random(case)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, min(40, len(raw) - 1))))
        assert run_stream(provider, raw, cuts) == whole
    assert run_stream(provider, raw, list(range(1, len(raw)))) == whole  # byte by byte


def test_stream_emits_as_events_complete() -> None:
    """Never buffered: each event's chunk comes out as soon as its event is whole."""
    raw = (GOLDEN / "anthropic/stream-text.sse").read_bytes()
    _, _, tr = answer("anthropic").begin(200, "text/event-stream", NOW)
    hello = raw.index(b'"Hello"')
    end = raw.index(b"\n\n", hello) + 2
    assert b'"content":"Hello"' not in tr.feed(raw[: end - 1], False)
    assert b'"content":"Hello"' in tr.feed(raw[end - 1 : end], False)


def test_usage_chunk_only_when_asked() -> None:
    raw = (GOLDEN / "anthropic/stream-text.sse").read_bytes()
    _, _, tr = answer("anthropic", usage=False).begin(200, "text/event-stream", NOW)
    out = tr.feed(raw, True)
    assert b'"usage"' not in out and out.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize(("provider", "field", "value"), [
    ("anthropic", "n", 2), ("anthropic", "logprobs", True), ("anthropic", "response_format", {"type": "json_object"}),
    ("anthropic", "presence_penalty", 0.5), ("gemini", "logprobs", True), ("gemini", "logit_bias", {"50256": -100}),
])
def test_untranslatable_request_names_the_field(provider: str, field: str, value: object) -> None:
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(GatewayError) as e:
        translate(PROVIDERS[provider], doc, "/v1/chat/completions")
    assert e.value.status == 400 and e.value.param == field and field in str(e.value)


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_neutral_values_are_not_rejected(provider: str) -> None:
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 1, "logprobs": False,
           "presence_penalty": 0, "response_format": {"type": "text"}}
    assert translate(PROVIDERS[provider], doc, "/v1/chat/completions").body


@pytest.mark.parametrize("provider", ["anthropic", "gemini"])
def test_other_endpoints_are_refused(provider: str) -> None:
    with pytest.raises(GatewayError) as e:
        translate(PROVIDERS[provider], {"model": "m", "input": "x"}, "/v1/embeddings")
    assert e.value.status == 400


def test_audio_part_names_its_place() -> None:
    doc = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "hi"}, {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]}
    with pytest.raises(GatewayError) as e:
        translate(PROVIDERS["anthropic"], doc, "/v1/chat/completions")
    assert e.value.param == "messages[0].content[1]"


def test_gemini_tool_result_must_answer_a_call() -> None:
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"},
                                      {"role": "tool", "tool_call_id": "nope", "content": "1"}]}
    with pytest.raises(GatewayError) as e:
        translate(PROVIDERS["gemini"], doc, "/v1/chat/completions")
    assert e.value.param == "messages[1].tool_call_id"


def test_anthropic_tool_results_of_one_turn_go_back_together() -> None:
    calls = [{"id": f"t{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in range(2)]
    doc = {"model": "m", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": calls},
                                      {"role": "tool", "tool_call_id": "t0", "content": "a"},
                                      {"role": "tool", "tool_call_id": "t1", "content": "b"}]}
    body = json.loads(translate(PROVIDERS["anthropic"], doc, "/v1/chat/completions").body)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert [b["tool_use_id"] for b in body["messages"][2]["content"]] == ["t0", "t1"]


def test_gemini_stream_with_two_candidates_ends_when_both_finish() -> None:
    ev = [{"candidates": [{"content": {"parts": [{"text": "a"}]}, "index": 0},
                          {"content": {"parts": [{"text": "b"}]}, "index": 1}]},
          {"candidates": [{"content": {"parts": [{"text": ""}]}, "finishReason": "STOP", "index": 0}]}]
    raw = b"".join(b"data: " + json.dumps(e).encode() + b"\r\n\r\n" for e in ev)
    _, _, tr = answer("gemini").begin(200, "text/event-stream", NOW)
    assert not tr.feed(raw, True).endswith(b"[DONE]\n\n")  # candidate 1 never finished: cut off
    last = b"data: " + json.dumps({"candidates": [{"finishReason": "MAX_TOKENS", "index": 1}]}).encode() + b"\r\n\r\n"
    _, _, tr = answer("gemini").begin(200, "text/event-stream", NOW)
    out = tr.feed(raw + last, True)
    assert out.endswith(b"data: [DONE]\n\n") and b'"finish_reason":"length"' in out


def test_error_answer_of_an_unknown_shape_is_still_openai_shaped() -> None:
    for provider in ("anthropic", "gemini"):
        status, _, tr = answer(provider).begin(502, "text/html", NOW)
        err = json.loads(tr.feed(b"<html>bad gateway</html>", True))["error"]
        assert status == 502 and err["type"] == "server_error" and "502" in err["message"]


@pytest.mark.parametrize("name", ["stream-text", "stream-tool-use"])
def test_anthropic_compact_wire_format_gives_the_same_chunks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic sends compact JSON (the text-token fast path reads it by its bytes); the docs show it spaced
    (read through the JSON index): the same OpenAI chunks either way."""
    compact = (GOLDEN / f"anthropic/{name}-compact.sse").read_bytes()
    texts = compact.count(b',"delta":{"type":"text_delta","text":"')
    assert texts >= 1
    read = []
    event = anthropic.Stream.event
    monkeypatch.setattr(anthropic.Stream, "event", lambda self, ev: (read.append(1), event(self, ev)))
    assert run_stream("anthropic", compact, []) == (GOLDEN / f"anthropic/{name}.openai.sse").read_bytes()
    assert len(read) == compact.count(b"data: ") - texts  # text tokens never took the JSON index
    # one event per chunk, as servers stream: a text token's chunk is matched whole, never split into events
    events = [e + b"\n\n" for e in compact.split(b"\n\n") if e]
    cuts = [sum(map(len, events[:i])) for i in range(1, len(events))]
    split = []
    feed = StreamTranslator.feed
    monkeypatch.setattr(StreamTranslator, "feed", lambda self, chunk, end: (split.append(1), feed(self, chunk, end))[1])
    assert run_stream("anthropic", compact, cuts) == (GOLDEN / f"anthropic/{name}.openai.sse").read_bytes()
    assert len(split) == len(events) - texts


@pytest.mark.parametrize(("text", "expected"), [
    ("plain", "plain"), ('He said "hi"', 'He said "hi"'), ("back\\slash\\", "back\\slash\\"),
    ("é ✓ \u2028 \x01", "é ✓ \u2028 \x01"), ('"\\"', '"\\"')])
def test_anthropic_text_token_fast_path_keeps_any_text(text: str, expected: str) -> None:
    for ascii_only in (True, False):
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}
        raw = b"data: " + json.dumps(delta, separators=(",", ":"), ensure_ascii=ascii_only).encode() + b"\n\n"
        _, _, tr = answer("anthropic").begin(200, "text/event-stream", NOW)
        (chunk,) = [e for e in tr.feed(raw, False).split(b"\n\n") if e]
        assert json.loads(chunk[6:])["choices"][0]["delta"] == {"content": expected}


@pytest.mark.parametrize(("raw", "whole"), [
    (b'"a"', True), (b'"a\\\\"', True), (b'"a\\""', True), (b'"a\\"', False), (b'"a","b"', False),
    (b'"a\\\\\\"b"', True), (b'"', False), (b'a"', False), (b'"a\\\\"b"', False)])
def test_json_string(raw: bytes, whole: bool) -> None:
    from ai_gateway.providers.common import json_string

    assert json_string(raw) is whole
    if whole:
        assert isinstance(json.loads(raw), str)


def test_gemini_token_chunks_take_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Gemini streams one response per chunk: after the first, a text-only one is matched whole in C; the chunks are
    those the JSON path makes of the same stream, and the usage is the last one reported."""
    raw = (GOLDEN / "gemini/stream-tokens.sse").read_bytes()
    events = [e + b"\r\n\r\n" for e in raw.split(b"\r\n\r\n") if e]
    cuts = [sum(map(len, events[:i])) for i in range(1, len(events))]
    slow = []
    feed = StreamTranslator.feed
    monkeypatch.setattr(StreamTranslator, "feed", lambda self, chunk, end: (slow.append(1), feed(self, chunk, end))[1])
    out = run_stream("gemini", raw, cuts)
    assert out == (GOLDEN / "gemini/stream-tokens.openai.sse").read_bytes()
    assert len(slow) == 2  # the first (role, id) and the last (finishReason) only
    assert out.endswith(b"data: [DONE]\n\n") and b'"completion_tokens":10,' in out
