"""AI gateway observability: token/latency metrics and the AI log — on both hosts."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ai_gateway.estimate import input_tokens
from proxywasm import Action

from .gateway import CHAT, CONFIG, chat_body
from .test_ai_usage import FRAMINGS, framed_stream

PREFIX = "route.chat.upstream.{c}.model.{m}.consumer.{u}.metric."
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}


def metric(h, name: str, cluster: str = "qwen", model: str = "qwen2-1-5b", consumer: str = "team-a") -> int:
    return h.metric(PREFIX.format(c=cluster, m=model, u=consumer) + name)


def start(make_host, **overrides):
    h = make_host("ai_gateway")
    assert h.start({**CONFIG, "consumer_header": "x-mse-consumer", **overrides}), h.logs
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
    log = json.loads(s.get_property("ai_log"))
    assert log == {"model": "qwen2-1-5b", "served_model": "qwen2-1-5b", "route": "chat", "cluster": "qwen",
                   "consumer": "team-a", "status": 200, "stream": False, "input_tokens": 11, "output_tokens": 7,
                   "total_tokens": 18, "usage_source": "server", "usage_known": True, "ttft_ms": None,
                   "duration_ms": 250, "fallback_from": None, "complete": True, "cancelled": False, "attempts": None,
                   "client": "openai"}


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
    # TTFT: the first content event is whole in the fourth chunk (at 60 ms), not the first byte (45 ms)
    assert metric(h, "llm_stream_duration_count") == 1 and metric(h, "llm_first_token_duration") == 60
    assert h.histogram(PREFIX.format(c="qwen", m="qwen2-1-5b", u="team-a") + "llm_first_token_latency") == [60]
    assert json.loads(s.get_property("ai_log"))["stream"] is True


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
    log = json.loads(s.get_property("ai_log"))
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
    log = json.loads(s.get_property("ai_log"))
    assert (log["complete"], log["cancelled"], log["usage_source"]) == (False, False, "estimated")
    # served, so not nothing: the input is estimated from the request, no output event was whole
    assert (log["input_tokens"], log["output_tokens"]) == (input_tokens(chat_body(stream=True)), 0)
    assert metric(h, "input_token") == log["input_tokens"] and metric(h, "usage_estimated_total") == 1
    assert metric(h, "output_token") == 0
    s2 = request(h, chat_body())
    s2.send_response_headers({":status": "502", "content-type": "application/json"})  # falls back...
    h.respond_callout(h.callouts[0].token, 200, {"content-type": "application/json"}, b"{broken")  # ...to junk
    assert s2.local_response.body == b"{broken"
    assert json.loads(s2.get_property("ai_log"))["usage_known"] is False


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
    assert h.metric_names == [] and s.get_property("ai_log") is None


def test_instant_answer_records_zero_durations(make_host) -> None:
    """A response in the same millisecond: zero-valued counters must not break publishing."""
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body(b"".join(sse(chunk("a"), USAGE_ONLY)))
    log = json.loads(s.get_property("ai_log"))
    assert (log["ttft_ms"], log["duration_ms"]) == (0, 0)
    assert metric(h, "llm_stream_duration_count") == 1 and metric(h, "input_token") == 11


def _error(h, status: int) -> None:
    s = request(h, chat_body())
    s.send_response_headers({":status": str(status), "content-type": "application/json"})
    s.send_response_body(b'{"error": {"message": "no", "type": "BadRequestError", "code": 400}}')
    log = json.loads(s.get_property("ai_log"))
    assert (log["input_tokens"], log["usage_source"], log["usage_known"]) == (None, None, False)  # unknown: null


@pytest.mark.parametrize("drop", [True, False])
def test_stream_without_usage_is_estimated_and_ttft_waits_for_output(make_host, drop: bool) -> None:
    """A server that ignores include_usage (one content event per token), queued behind `: ping` comments, a
    role-only delta and empty keep-alive data first: output = the content events, input from the request;
    TTFT is the first content event, not the first byte (C tap inside the VM, Python twin in-process)."""
    h = start(make_host, strip_injected_usage=drop)
    body = chat_body(stream=True, messages=[{"role": "system", "content": "be brief"},
                                            {"role": "user", "content": "say hello to everyone here"}])
    s = request(h, body)
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    h.advance(100)
    s.send_response_body(b": ping\n\n", end_of_stream=False)
    h.advance(200)
    role = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
    s.send_response_body(b"".join(sse(role, done=False)) + b"data:\n\n: ping\n\n", end_of_stream=False)
    h.advance(300)
    words = ["Hello", " every", "one", " here", "!"]
    for i, w in enumerate(words):
        s.send_response_body(b"".join(sse(chunk(w), done=False)), end_of_stream=False)
        h.advance(10 + i)
    s.send_response_body(b"data: [DONE]\n\n", end_of_stream=True)
    log = json.loads(s.get_property("ai_log"))
    inp = input_tokens(body)
    assert inp == 3 * 3 + -(-(8 + 26) // 4)  # 2 messages + the reply: 3 each; the text (34 bytes) at 4 bytes a token
    assert (log["input_tokens"], log["output_tokens"], log["total_tokens"]) == (inp, 5, inp + 5)
    assert (log["usage_source"], log["usage_known"], log["complete"]) == ("estimated", False, True)
    assert log["ttft_ms"] == 600  # ping at 100, role and keep-alives at 300: the first word at 600
    assert (metric(h, "input_token"), metric(h, "output_token"), metric(h, "total_token")) == (inp, 5, inp + 5)
    assert metric(h, "usage_estimated_total") == 1 and metric(h, "llm_first_token_duration") == 600
    assert metric(h, "estimated_token") == inp + 5
    _error(h, 400)


def test_json_answer_without_usage_is_estimated_from_its_text(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body())
    s.send_response_headers({":status": "200", "content-type": "application/json"})
    text = "The quick brown fox jumps over the lazy dog."  # 44 bytes: one member of more than 8 bytes -> 44 / 4
    s.send_response_body(json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode())
    log = json.loads(s.get_property("ai_log"))
    assert (log["output_tokens"], log["usage_source"]) == (11, "estimated")
    assert metric(h, "output_token") == 11 and metric(h, "usage_estimated_total") == 1


def test_fallback_stream_without_usage_is_estimated(make_host) -> None:
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "503"})
    h.respond_callout(h.callouts[0].token, 200, {"content-type": "text/event-stream"},
                      b"".join(sse(chunk("x"), chunk(" y"))))
    log = json.loads(s.get_property("ai_log"))
    assert (log["output_tokens"], log["usage_source"], log["fallback_from"]) == (2, "estimated", "qwen2-1-5b")
    assert log["ttft_ms"] is not None


@pytest.mark.parametrize(("flags", "details", "cancelled"), [
    ((0x4000).to_bytes(8, "little"), "via_upstream", True),  # Envoy's DC flag: the client went away
    (None, "downstream_remote_disconnect", True),
    ((0x40).to_bytes(8, "little"), "upstream_reset_after_response_started{remote_reset}", False),  # UC: upstream cut
    (None, None, False),
])
def test_client_cancel_is_counted_apart_from_errors(make_host, flags, details, cancelled: bool) -> None:
    h = start(make_host)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    s.send_response_body(b"".join(sse(chunk("a"), chunk(" b"), done=False)), end_of_stream=False)
    for path, value in (("response.flags", flags), ("response.code_details", details)):
        if value is not None:
            h.set_property(path, value)
    s.complete()
    log = json.loads(s.get_property("ai_log"))
    assert (log["complete"], log["cancelled"], log["output_tokens"]) == (False, cancelled, 2)
    assert metric(h, "cancelled_total" if cancelled else "error_total") == 1
    with pytest.raises(KeyError):
        metric(h, "error_total" if cancelled else "cancelled_total")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 5000), max_size=12), ends=st.lists(st.sampled_from(FRAMINGS), min_size=1, max_size=3),
       drop=st.booleans())
def test_framing_and_splits_give_same_usage_ttft_and_bytes(make_host, words, cuts, ends, drop: bool) -> None:
    """Through the plugin (C taps inside the VM): any framing, cut anywhere, a chunk a millisecond. The client gets
    the stream (without the injected usage event when stripping), the server's usage is read, and TTFT is the
    chunk that completed the first content line."""
    h = start(make_host, strip_injected_usage=drop)
    s = request(h, chat_body(stream=True))
    s.send_response_headers({":status": "200", "content-type": "text/event-stream"})
    full, stripped = framed_stream(words, (11, len(words)), ends)
    points = sorted({c % (len(full) + 1) for c in cuts} | {0, len(full)})
    parts = [full[a:b] for a, b in itertools.pairwise(points)]
    first = full.index(b'"content": "', full.index(b"data:", full.index(b"data:") + 1) + 1)  # the first word's
    line_end = min(i for i in (full.find(b"\n", first), full.find(b"\r", first)) if i >= 0)
    for i, part in enumerate(parts):
        h.advance(1)
        s.send_response_body(part, end_of_stream=i == len(parts) - 1)
    assert s.response_body == (stripped if drop else full)
    log = json.loads(s.get_property("ai_log"))
    assert (log["input_tokens"], log["output_tokens"], log["usage_source"]) == (11, len(words), "server")
    assert log["ttft_ms"] == 1 + next(i for i, b in enumerate(itertools.accumulate(map(len, parts))) if b > line_end)
