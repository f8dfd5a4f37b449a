"""AI gateway observability: token/latency metrics and the AI log — on both hosts."""

from __future__ import annotations

import itertools
import json

import pytest

from proxywasm import Action

from .gateway import CHAT, CONFIG, chat_body

PREFIX = "route.chat.upstream.{c}.model.{m}.consumer.{u}.metric."
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def metric(h, name: str, cluster: str = "qwen", model: str = "qwen2-1-5b", consumer: str = "team-a") -> int:
    return h.metric(PREFIX.format(c=cluster, m=model, u=consumer) + name)


def start(make_host, **overrides):
    h = make_host("ai_gateway")
    assert h.start({**CONFIG, **overrides}), h.logs
    return h


def request(h, body: bytes, consumer: str = "team-a"):
    s = h.http_stream(properties={"route_name": "chat"})
    s.send_request_headers({**CHAT, "x-mse-consumer": consumer})
    s.send_request_body(body)
    return s


def sse(*events: dict, done: bool = True) -> list[bytes]:
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
    return out + ([b"data: [DONE]\n\n"] if done else [])


def chunk(text: str) -> dict:
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]}


USAGE_ONLY = {"object": "chat.completion.chunk", "choices": [], "usage": USAGE}


def test_non_streaming_usage_metrics_and_ai_log(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body())
    h.advance(250)
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    body = json.dumps({"id": "x", "model": "qwen2-1-5b", "usage": USAGE}).encode()
    s.send_response_body(body[:10], end_of_stream=False)
    s.send_response_body(body[10:], end_of_stream=True)
    assert s.response_body == body  # never altered
    assert (metric(h, "input_token"), metric(h, "output_token"), metric(h, "total_token")) == (11, 7, 18)
    assert (metric(h, "request_total"), metric(h, "llm_duration_count"), metric(h, "llm_service_duration")) == (1, 1, 250)
    assert h.histogram(PREFIX.format(c="qwen", m="qwen2-1-5b", u="team-a") + "llm_latency") == [250]
    log = json.loads(s.property("ai_log"))
    assert log == {"model": "qwen2-1-5b", "served_model": "qwen2-1-5b", "route": "chat", "cluster": "qwen",
                   "consumer": "team-a", "status": 200, "stream": False, "input_tokens": 11, "output_tokens": 7,
                   "total_tokens": 18, "usage_known": True, "ttft_ms": None, "duration_ms": 250, "fallback_from": None,
                   "complete": True, "attempts": None}


def test_streaming_usage_injected_and_stripped(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    sent = json.loads(s.request_body)
    assert sent["stream_options"] == {"include_usage": True}
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    h.advance(40)
    events = sse(chunk("Hel"), chunk("lo"), USAGE_ONLY)
    stream = b"".join(events)
    cut = [0, 7, 30, 31, len(stream) - 20, len(stream)]  # splits inside lines and JSON
    for a, b in itertools.pairwise(cut):
        h.advance(5)
        assert s.send_response_body(stream[a:b], end_of_stream=b == len(stream)) == Action.CONTINUE
    assert s.response_body == b"".join(sse(chunk("Hel"), chunk("lo")))  # the usage-only event is gone
    assert (metric(h, "input_token"), metric(h, "output_token")) == (11, 7)
    assert metric(h, "llm_stream_duration_count") == 1 and metric(h, "llm_first_token_duration") == 45
    assert h.histogram(PREFIX.format(c="qwen", m="qwen2-1-5b", u="team-a") + "llm_first_token_latency") == [45]
    assert json.loads(s.property("ai_log"))["stream"] is True


def test_client_asked_usage_is_kept_and_body_untouched(make_host) -> None:
    h = start(make_host)
    body = chat_body(stream=True, stream_options={"include_usage": True})
    s = request(h, body)
    assert s.request_body == body
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    stream = b"".join(sse(chunk("a"), USAGE_ONLY))
    s.send_response_body(stream)
    assert s.response_body == stream and metric(h, "total_token") == 18


@pytest.mark.parametrize(("inject", "strip"), [(False, True), (True, False)])
def test_usage_injection_is_configurable(make_host, inject: bool, strip: bool) -> None:
    h = start(make_host, inject_stream_usage=inject, strip_injected_usage=strip)
    s = request(h, chat_body(stream=True))
    assert ("stream_options" in json.loads(s.request_body)) is inject
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    stream = b"".join(sse(chunk("a"), USAGE_ONLY))
    s.send_response_body(stream)
    assert s.response_body == stream  # kept: not injected, or injected but configured to keep


def test_fallback_counts_tokens_of_the_model_that_answered(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "503"})
    call = h.callouts[0]
    assert json.loads(call.body)["stream_options"] == {"include_usage": True}
    h.respond_callout(call.token, 200, {"content-type": "text/event-stream"}, b"".join(sse(chunk("x"), USAGE_ONLY)))
    assert s.local_response.body == b"".join(sse(chunk("x")))
    assert metric(h, "input_token", "gemma", "gemma-2-2b") == 11
    assert metric(h, "fallback_total", "gemma", "gemma-2-2b") == 1
    log = json.loads(s.property("ai_log"))
    assert log["fallback_from"] == "qwen2-1-5b"
    assert log["attempts"] == [["qwen2-1-5b", 503], ["gemma-2-2b", 200]]  # every attempt, in order
    assert metric(h, "attempt_failure_total") == 1  # on the failed model's labels
    qwen = [n.rsplit(".", 1)[1] for n in h.metric_names if ".model.qwen2-1-5b." in n]
    assert qwen == ["attempt_failure_total"]  # tokens and the request are charged once, to gemma
    assert not any(n.endswith("attempt_failure_total") for n in h.metric_names if ".model.gemma-2-2b." in n)


def test_truncated_stream_and_broken_json_record_what_is_known(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    partial = b'data: {"choices": [{"delta": {"content": "\xe2\x82'  # cut inside a UTF-8 character
    s.send_response_body(partial, end_of_stream=False)
    s.complete()  # the upstream connection dropped: Envoy ends the stream
    assert metric(h, "request_total") == 1
    assert metric(h, "error_total") == 1  # an answer cut off is not a success
    assert json.loads(s.property("ai_log"))["complete"] is False
    with pytest.raises(KeyError):
        metric(h, "input_token")  # unknown usage is not reported as zero tokens
    s2 = request(h, chat_body())
    s2.send_response_headers({":status": "502", "content-type": "application/json"})  # falls back...
    h.respond_callout(h.callouts[0].token, 200, {"content-type": "application/json"}, b"{broken")  # ...to junk
    assert s2.local_response.body == b"{broken"
    assert json.loads(s2.property("ai_log"))["usage_known"] is False


def test_consumer_label_is_sanitized_and_bounded(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body(), consumer="evil name\n{x}" + "z" * 200)
    s.send_response_headers({":status": "200", "content-type": "application/json"}, end_of_stream=True)
    (name,) = [n for n in h.metric_names if n.endswith("request_total")]
    consumer = name.split(".consumer.")[1].split(".metric.")[0]
    assert consumer.startswith("evil_name__x_") and len(consumer) == 64


def test_metrics_and_log_can_be_turned_off(make_host) -> None:
    h = start(make_host, metrics=False, ai_log="off")
    s = request(h, chat_body())
    s.send_response_headers({":status": "200"}, end_of_stream=True)
    assert h.metric_names == [] and s.property("ai_log") is None


def test_instant_answer_records_zero_durations(make_host) -> None:
    """A response in the same millisecond: zero-valued counters must not break publishing."""
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body(b"".join(sse(chunk("a"), USAGE_ONLY)))
    log = json.loads(s.property("ai_log"))
    assert (log["ttft_ms"], log["duration_ms"]) == (0, 0)
    assert metric(h, "llm_stream_duration_count") == 1 and metric(h, "input_token") == 11
