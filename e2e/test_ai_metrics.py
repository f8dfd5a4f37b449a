"""The AI gateway's metrics and AI log in a real Envoy after mixed traffic, checked against what clients received.

One fresh stack per module, so the Prometheus numbers are exact: non-streaming and streaming (with and without
``stream_options.include_usage``), chat and completions, two models, an alias, fallbacks, an exhausted fallback,
four consumers (``x-mse-consumer``: alice, bob, carol, none) and local errors that must count nowhere.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from e2e.ai_stack import CANARY, GEMMA, QWEN, TRUST_CONSUMER_HEADER, AiStack, Labels, Reply, wait_for
from e2e.mock_vllm import DEFAULT_MAX_TOKENS

Launch = Callable[..., AbstractContextManager[AiStack]]
Usage = tuple[int, int, int]  # prompt, completion, total
TOKENS = ("input_token", "output_token", "total_token")


@dataclass
class Sent:
    tid: str  # x-test-id: finds the request's access log line
    consumer: str | None
    requested: str
    served: str
    stream: bool
    asked_usage: bool
    status: int
    usage: Usage | None  # what the client received
    rule: Usage  # by the mock's documented counting rule
    usage_only_chunks: int = 0
    fallback: bool = False

    @property
    def labels(self) -> Labels:
        return ("by_model", self.served, self.served, self.consumer or "none")

    @property
    def tokens(self) -> Usage:
        """The client's usage, or (when it did not ask for it in a stream) the mock's rule."""
        return self.usage or self.rule


def rule(served: str, text: str, max_tokens: int | None, chat: bool) -> Usage:
    """e2e/mock_vllm's counting for one user message ``text`` (or prompt): prompt = (1 +) words (1 per chat
    message), completion = the words of ``[<served>] echo: <text>``, at most max_tokens (default 16)."""
    prompt = len(text.split()) + (1 if chat else 0)
    out = min(len(f"[{served}] echo: {text}".split()), max_tokens or DEFAULT_MAX_TOKENS)
    return prompt, out, prompt + out


def _usage(u: object) -> Usage | None:
    return None if u is None else (u.prompt_tokens, u.completion_tokens, u.total_tokens)  # type: ignore[attr-defined]


class Traffic:
    def __init__(self, stack: AiStack) -> None:
        self.stack = stack
        self.sent: list[Sent] = []
        self.raw_events: list[dict[str, Any]] = []  # the events of the raw-HTTP stream
        self.upstream: list[dict[str, Any]] = []  # streaming requests as the mocks received them
        self.local: list[Reply] = []  # answered by the gateway itself

    def _headers(self, consumer: str | None) -> tuple[str, dict[str, str]]:
        tid = uuid.uuid4().hex
        return tid, {"x-test-id": tid, **({"x-mse-consumer": consumer} if consumer else {})}

    def send(self, model: str, text: str, consumer: str | None, *, stream: bool = False, usage: bool = False,
             max_tokens: int | None = None, chat: bool = True) -> Sent:
        tid, headers = self._headers(consumer)
        api = self.stack.client.chat.completions if chat else self.stack.client.completions
        kw: dict[str, object] = {"model": model, "extra_headers": headers, "stream": stream}
        kw.update({"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text})
        if max_tokens:
            kw["max_tokens"] = max_tokens
        if usage:
            kw["stream_options"] = {"include_usage": True}
        try:
            raw = api.with_raw_response.create(**kw)  # type: ignore[call-overload]
        except openai.APIStatusError as e:
            s = Sent(tid, consumer, model, model, stream, usage, e.status_code, None, (0, 0, 0))
            self.sent.append(s)
            return s
        served = raw.headers["x-ai-served-model"]
        s = Sent(tid, consumer, model, served, stream, usage, raw.http_response.status_code, None,
                 rule(served, text, max_tokens, chat), fallback="x-ai-fallback-from" in raw.headers)
        if stream:
            for c in raw.parse():
                s.usage = _usage(c.usage) or s.usage
                s.usage_only_chunks += not c.choices and c.usage is not None
        else:
            s.usage = _usage(raw.parse().usage)
        self.sent.append(s)
        return s

    def raw_stream(self, model: str, text: str, consumer: str) -> list[dict[str, Any]]:
        """A stream over raw HTTP (no include_usage); returns its events, checking the SSE framing."""
        tid, headers = self._headers(consumer)
        r = self.stack.post("/v1/chat/completions", {"model": model, "stream": True,
                                                     "messages": [{"role": "user", "content": text}]}, headers)
        events = r.body.decode().split("\n\n")
        assert r.status == 200 and events[-2:] == ["data: [DONE]", ""], r
        docs = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        self.sent.append(Sent(tid, consumer, model, r.headers["x-ai-served-model"], True, False, r.status, None,
                              rule(model, text, None, True)))
        return docs


@pytest.fixture(scope="module")
def traffic(ai_launch: Launch) -> Iterator[Traffic]:
    with ai_launch(replace=TRUST_CONSUMER_HEADER) as stack:  # the clients name their consumer themselves
        t = Traffic(stack)
        t.send(QWEN, "alpha beta", "alice")
        t.send(QWEN, "one two three four", "alice", chat=False)
        t.send(GEMMA, "gamma delta epsilon zeta eta", "alice", max_tokens=3)
        t.send(QWEN, "stream me please", "bob", stream=True, usage=True)
        t.send(QWEN, "stream without usage", "bob", stream=True)
        t.send(GEMMA, "gemma stream", "bob", stream=True)
        t.send(GEMMA, "completion stream text", "bob", stream=True, usage=True, chat=False)
        t.send(QWEN, "anonymous", None)
        t.send(CANARY, "canary call", "bob")
        t.raw_events = t.raw_stream(QWEN, "raw stream for carol", "carol")
        stack.qwen.fault(status=503)
        t.send(QWEN, "fallback please", "alice")
        t.send(QWEN, "fallback stream", "bob", stream=True)
        stack.gemma.fault(status=503)
        t.send(QWEN, "nothing works", "bob")  # every fallback fails: 503
        t.upstream = [r["body"] for m in stack.mocks.values() for path in ("/v1/chat/completions", "/v1/completions")
                      for r in m.requests(path) if r["body"].get("stream")]
        stack.reset()
        # answered by the gateway itself: not metered
        bad = {"x-test-id": "local-bad-json", "content-type": "application/json"}
        t.local = [stack.post("/v1/chat/completions", b"{not json", bad),
                   stack.post("/v1/chat/completions", {"model": "gpt-5", "messages": []}, {"x-test-id": "local-unknown"})]
        yield t


def expected(sent: list[Sent], value: Callable[[Sent], int]) -> dict[Labels, int]:
    out: Counter[Labels] = Counter()
    for s in sent:
        out[s.labels] += value(s)
    return {k: v for k, v in out.items() if v}


def settled(t: Traffic) -> dict[str, dict[Labels, float]]:
    """The plugin's metrics once the histograms of every request reached the admin API (at a stats flush)."""
    want = len(t.sent)
    assert wait_for(lambda: sum(t.stack.metrics().get("llm_latency_count", {}).values()) >= want), \
        f"llm_latency histograms never counted {want} requests: {t.stack.metrics().get('llm_latency_count')}"
    return t.stack.metrics()


def observed(metrics: dict[str, dict[Labels, float]], name: str) -> dict[Labels, int]:
    return {k: int(v) for k, v in metrics.get(name, {}).items() if v}


def test_traffic_is_as_planned(traffic: Traffic) -> None:
    served = [(s.requested, s.served, s.status, s.fallback) for s in traffic.sent]
    assert served[-3:] == [(QWEN, GEMMA, 200, True), (QWEN, GEMMA, 200, True), (QWEN, QWEN, 503, False)]
    assert [r.status for r in traffic.local] == [400, 404]
    for s in traffic.sent:  # the rule reproduces every usage the clients were given
        assert s.usage is None or s.usage == s.rule, s


def test_token_sums_per_label_match_client_usage(traffic: Traffic) -> None:
    metrics = settled(traffic)
    ok = [s for s in traffic.sent if s.status == 200]
    for i, name in enumerate(TOKENS):
        want = expected(ok, lambda s, i=i: s.tokens[i])  # type: ignore[misc]
        assert observed(metrics, name) == want, name
    consumers = {labels[3] for labels in observed(metrics, "total_token")}
    assert consumers == {"alice", "bob", "carol", "none"}


def test_request_fallback_and_error_counts(traffic: Traffic) -> None:
    metrics = settled(traffic)
    assert observed(metrics, "request_total") == expected(traffic.sent, lambda s: 1)
    assert observed(metrics, "llm_duration_count") == expected(traffic.sent, lambda s: 1)
    assert observed(metrics, "fallback_total") == {("by_model", GEMMA, GEMMA, "alice"): 1,
                                                   ("by_model", GEMMA, GEMMA, "bob"): 1}
    assert observed(metrics, "error_total") == {("by_model", QWEN, QWEN, "bob"): 1}


def test_stream_counts_and_histograms(traffic: Traffic) -> None:
    metrics = settled(traffic)
    streams = expected(traffic.sent, lambda s: int(s.stream and s.status == 200))
    assert sum(streams.values()) == 6
    assert observed(metrics, "llm_stream_duration_count") == streams
    assert observed(metrics, "llm_first_token_latency_count") == streams
    assert observed(metrics, "llm_latency_count") == expected(traffic.sent, lambda s: 1)
    ttft, duration = metrics["llm_first_token_duration"], metrics["llm_service_duration"]
    assert set(ttft) == set(streams) and all(ttft[k] <= duration[k] for k in ttft)


def test_usage_chunk_only_for_clients_that_asked(traffic: Traffic) -> None:
    streams = [s for s in traffic.sent if s.stream and s.status == 200]
    assert [(s.asked_usage, s.usage_only_chunks) for s in streams] == [
        (True, 1), (False, 0), (False, 0), (True, 1), (False, 0), (False, 0)]
    assert all((s.usage is not None) == s.asked_usage for s in streams)
    raw, carol = traffic.raw_events, streams[4]
    assert len(raw) == 1 + carol.rule[1]  # the role chunk, one per token, and no usage-only chunk
    assert "".join(e["choices"][0]["delta"]["content"] for e in raw) == "[qwen2-1-5b] echo: raw stream for carol"
    assert all(e["choices"] for e in raw) and not any(e.get("usage") for e in raw)
    # the gateway asked upstream on each client's behalf (that is how it counts the tokens it then strips);
    # 7 = the 6 streams + the streaming fallback's failed first attempt
    assert len(traffic.upstream) == 7
    assert all(b["stream_options"] == {"include_usage": True} for b in traffic.upstream)


def test_ai_log_lines(traffic: Traffic) -> None:
    lines = traffic.stack.wait_ai_log({s.tid for s in traffic.sent} | {"local-bad-json", "local-unknown"})
    for s in traffic.sent:
        doc = json.loads(lines[s.tid])
        want_usage = s.tokens if s.status == 200 else (None, None, None)  # unknown: null, not 0
        assert (doc["model"], doc["served_model"], doc["cluster"], doc["route"]) == \
            (s.requested, s.served, s.served, "by_model"), doc
        assert (doc["input_tokens"], doc["output_tokens"], doc["total_tokens"]) == want_usage, doc
        assert doc["usage_known"] == (s.status == 200), doc
        assert doc["usage_source"] == ("server" if s.status == 200 else None), doc
        assert (doc["complete"], doc["cancelled"]) == (True, False), doc  # the exhausted fallback's 503 too
        assert (doc["consumer"], doc["status"], doc["stream"]) == (s.consumer or "none", s.status, s.stream), doc
        assert doc["fallback_from"] == (QWEN if s.fallback else None), doc
        assert (doc["ttft_ms"] is not None) == (s.stream and s.status == 200), doc
    assert lines["local-bad-json"] == lines["local-unknown"] == "-"  # local replies are not AI traffic
