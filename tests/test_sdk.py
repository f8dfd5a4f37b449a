"""SDK behaviour, identical on the in-process host and on the compiled module under wasmtime."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxywasm import Action, LogLevel, StreamType
from proxywasm.testing import UnimplementedHostCall
from proxywasm.testing.fake import FakeHost

REQ = {":method": "POST", ":path": "/p", ":authority": "example.com"}


@pytest.fixture
def host(make_host):
    h = make_host("sdk_ops")
    assert h.start({})
    return h


def send(host, op: str, **headers: str):
    s = host.http_stream()
    action = s.send_request_headers({**REQ, "x-op": op, **headers})
    return s, action


def test_headers_get_set_add_remove_pairs(host) -> None:
    s, action = send(host, "headers", **{"x-remove": "gone"})
    assert action == Action.CONTINUE
    assert s.request_header("x-set") == "1"
    assert [v for k, v in s.request_headers if k == "x-add"] == ["a", "b"]
    assert s.request_header("x-remove") is None
    assert s.request_header("x-path-seen") == "/p"
    # 3 request headers + x-op + x-set + 2 x-add + x-path-seen (x-remove is gone)
    assert s.request_header("x-count") == "8"
    assert s.request_header("x-missing") == "default"


def test_replace_all_headers(host) -> None:
    s, _ = send(host, "replace-all")
    assert s.request_headers == [(":path", "/new"), (":method", "GET"), ("x-only", "1")]


def test_trailers_read_and_rewritten(make_host) -> None:
    """Trailers in a plugin of their own: sdk_ops leaves the trailer callbacks out of its module (test_build)."""
    h = make_host("sdk_trailers")
    assert h.start({})
    s = h.http_stream()
    s.send_request_headers(REQ)
    assert s.send_request_trailers({"grpc-status": "0", "x-drop": "1"}) == Action.CONTINUE
    assert s.request_trailer("x-trailers-seen") == "2"
    assert s.request_trailer("x-added") == "0"
    assert s.request_trailer("x-drop") is None
    s.send_response_headers({":status": "200"})
    assert s.send_response_trailers({"a": "1", "b": "2"}) == Action.CONTINUE
    assert s.response_trailer("x-response-trailers") == "a,b"


def test_request_body_buffered_then_rewritten(host) -> None:
    s, _ = send(host, "body")
    assert s.send_request_body(b"abc", end_of_stream=False) == Action.PAUSE
    assert s.send_request_body(b"def", end_of_stream=True) == Action.CONTINUE
    assert s.request_body == b">ABCDEF!"
    assert s.request_header("x-body-size") == "8"


def test_snapshot_whole_and_named(host) -> None:
    """snapshot() is every header (repeated names joined with ","); snapshot(names) only those names, absent ones
    left out, on both hosts (inside the VM the others are never decoded)."""
    s = host.http_stream()
    s.send_request_headers([*REQ.items(), ("x-op", "snapshot"), ("x-names", "x-rep,:path,x-absent,x-\u00e9"),
                            ("x-rep", "1"), ("x-rep", "2"), ("x-\u00e9", "\u00fc")])
    whole, named = json.loads(s.request_header("x-snapshot"))
    assert whole["x-rep"] == "1,2" and whole[":path"] == REQ[":path"] and "x-op" in whole
    assert named == {"x-rep": "1,2", ":path": REQ[":path"], "x-\u00e9": "\u00fc"}


def test_response_body_sees_all_chunks(host) -> None:
    s, _ = send(host, "response-body")
    s.send_response_headers({":status": "200"})
    assert s.send_response_body(b"one ", end_of_stream=False) == Action.PAUSE
    assert s.send_response_body(b"two", end_of_stream=True) == Action.CONTINUE
    assert json.loads(s.response_body) == {"len": 7, "chunks": "one two"}
    assert s.response_header("x-sdk-op") == "response-body"


TAP_CASES = [  # (keep, whole_upto, chunks): the last chunk comes with end_of_stream
    (8, 0, [b"abc", b"defghij", b"klmnopqrstu", b"vw"]),  # tail only: chunks longer than keep read in part
    (8, 0, [b"abc", b"de", b""]),  # shorter than keep: all of it, untrimmed; an empty last call
    (4, 100, [b"0123456789", b"abcdefghij"]),  # whole while <= whole_upto
    (4, 12, [b"0123456789", b"abcdefghij", b"XY"]),  # whole, then over whole_upto: its end only
    (3, 0, [b"", b"", b"xyz", b"1234567"]),  # empty chunks do not start the clock
    (5, 5, [b"12345", b""]),  # exactly whole_upto
    (16, 0, [bytes(range(256)) * 3, b"\x00\xff"]),  # binary
]


@pytest.mark.parametrize(("keep", "whole", "chunks"), TAP_CASES)
def test_response_tap(host, keep: int, whole: int, chunks: list[bytes]) -> None:
    """Chunks pass on unchanged without a Python call; at the end the plugin gets the body (<= whole_upto) or its
    last ``keep`` bytes, its size and whether the clock started (C inside the VM, Python in-process)."""
    s, _ = send(host, "tap", **{"x-keep": str(keep), "x-whole": str(whole)})
    s.send_response_headers({":status": "200"})
    for c in chunks[:-1]:
        assert s.send_response_body(c, end_of_stream=False) == Action.CONTINUE
    forwarded = s.response_body
    assert forwarded == b"".join(chunks[:-1])  # passed on as they came
    s.send_response_body(chunks[-1], end_of_stream=True)
    report = json.loads(s.response_body[len(forwarded):])
    body = b"".join(chunks)
    kept = body if len(body) <= whole else body[-keep:]
    assert report == {"calls": 1, "end": True, "body_size": len(chunks[-1]),
                      "tap": [kept.decode("latin-1"), len(body), len(body) > 0, len(kept) < len(body)]}


SKIP_CHUNKS = [
    b"data: {\"a\":1}\n\n",  # a whole event without a marker: skipped
    b'data: {"usage":null}\n\ndata: {"usage" :  null}\n\n',  # "usage" followed by null is no marker: skipped
    b'data: {"usage":{"x":1}}\n\n',  # a usage object: Python
    b"data: {\"b\"",  # not the end of an event: Python
    b":2}\n\n",  # whole again: skipped
    b"data: x\r\n\r\n", b"data: y\r\r", b"data: z\n\r\n",  # CRLF, CR and LF CRLF ends skipped
    b"data: w\n\r",  # LF CR: the CR may start a CRLF, the end is not known yet: Python
    b"",  # nothing: skipped
    b'data: {"usage":' + b" " * 20 + b"null}\n\n",  # null beyond the 16 bytes looked at: a marker
    b"data: [DONE]\n\n",  # a marker
    b"data: tail\n\n",  # the end of the body always reaches Python
]


def test_skip_response_events(host) -> None:
    """While armed, chunks ending an SSE event with no marker pass without Python; others, and the end, reach it
    (C inside the VM, Python in-process: the same chunks)."""
    s, _ = send(host, "skip")
    s.send_response_headers({":status": "200"})
    for c in SKIP_CHUNKS[:-1]:
        assert s.send_response_body(c, end_of_stream=False) == Action.CONTINUE
    forwarded = s.response_body
    assert forwarded == b"".join(SKIP_CHUNKS[:-1])
    s.send_response_body(SKIP_CHUNKS[-1], end_of_stream=True)
    seen = json.loads(s.response_body[len(forwarded):])
    want = [SKIP_CHUNKS[i] for i in (2, 3, 8, 10, 11, 12)]
    assert [c.encode("latin-1") for c in seen] == want


def _kept(body: bytes, keep: int, whole: int) -> list:
    kept = body if len(body) <= whole else body[-keep:]
    return [kept.decode("latin-1"), len(body), len(body) > 0, len(kept) < len(body)]


def test_many_streams_tapped_at_once(host) -> None:
    """300 streams tapped at the same time (the C table grows several times), fed in turns and ended in a shuffled
    order (deletes shift entries back): each gets exactly its own body's end."""
    rng = random.Random(7)
    streams = []
    for _ in range(300):
        keep, whole = rng.choice([(5, 0), (40, 0), (3, 30)])
        s, _ = send(host, "tap", **{"x-keep": str(keep), "x-whole": str(whole)})
        s.send_response_headers({":status": "200"})
        streams.append((s, keep, whole, []))
    for turn in range(3):
        for i, (s, _, _, sent) in enumerate(streams):
            chunk = f"<{i}.{turn}:{'x' * rng.randrange(12)}>".encode()
            sent.append(chunk)
            s.send_response_body(chunk, end_of_stream=False)
    order = list(range(len(streams)))
    rng.shuffle(order)
    for i in order:
        s, keep, whole, sent = streams[i]
        forwarded = s.response_body
        s.send_response_body(b"!", end_of_stream=True)
        report = json.loads(s.response_body[len(forwarded):])
        assert report["tap"] == _kept(b"".join(sent) + b"!", keep, whole), i
        s.complete()


_EVENT_BYTES = [b"data: ", b'{"usage":', b"null", b"{}", b" ", b":", b"[DONE]", b"\n", b"\r", b"x", b"}"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.lists(st.sampled_from(_EVENT_BYTES), max_size=8).map(b"".join), min_size=1, max_size=8))
def test_skip_response_events_agrees_with_its_rule(host, chunks: list[bytes]) -> None:
    """Random chunks (sdk_ops re-arms after every chunk it sees): Python sees exactly the chunks the rule says, on both
    hosts (C inside the VM)."""
    from proxywasm.testing.shim_twins import ends_event, marked

    markers = ((b'"usage"', b"null"), (b"[DONE]", b""))
    s, _ = send(host, "skip")
    s.send_response_headers({":status": "200"})
    for c in chunks:
        s.send_response_body(c, end_of_stream=False)
    forwarded = s.response_body
    s.send_response_body(b"end", end_of_stream=True)
    seen = [c.encode("latin-1") for c in json.loads(s.response_body[len(forwarded):])]
    want = [c for c in chunks if c and not (ends_event(c) and not marked(c, markers))] + [b"end"]
    assert seen == want


_COUNT_BYTES = [b"data: ", b'{"content":', b'"content"', b'"text" :\t', b'"hi"', b'""', b'"a\\"b"', b"\\", b'"',
                b"null", b"\n", b"\r", b"\r\n", b"x", b"}", b": ping", b'"reasoning_content":"\xc3\xa9"']


def _count_reference(body: bytes, keys: tuple[bytes, ...]) -> list:
    """What a counting tap reports: count_strings over each whole line (and the last, unended one)."""
    import re

    from proxywasm.taps import count_strings

    n = size = 0
    for line in re.split(rb"(?<=[\r\n])", body):
        a, b = count_strings(line, keys)
        n, size = n + a, size + b
    return [n, size, n > 0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=st.lists(st.lists(st.sampled_from(_COUNT_BYTES), max_size=8).map(b"".join), min_size=1, max_size=8),
       op=st.sampled_from(["count", "tap", "skip"]))
def test_counting_tap_agrees_with_its_rule(host, chunks: list[bytes], op: str) -> None:
    """count_response_strings, alone or with a tap or skipping, on random chunks: the counts (and whether a first
    one was timed) are count_strings over the body's whole lines, on both hosts (C inside the VM), however cut."""
    keys = (b"content", b"text", b"reasoning_content")
    s, _ = send(host, op, **{"x-count-keys": "content,text,reasoning_content", "x-keep": "64"})
    s.send_response_headers({":status": "200"})
    for c in chunks:
        s.send_response_body(c, end_of_stream=False)
    forwarded = s.response_body
    s.send_response_body(b"end", end_of_stream=True)
    report = json.loads(s.response_body[len(forwarded):])
    counted = {"count": lambda r: r["count"], "tap": lambda r: r["count"], "skip": lambda r: json.loads(r[-1])}[op]
    assert counted(report) == _count_reference(b"".join(chunks) + b"end", keys)
    if op == "count":
        assert report["calls"] == len(chunks) + 1  # counting alone: Python still sees every chunk


def test_count_strings_rule() -> None:
    from proxywasm.taps import count_strings

    keys = (b"content", b"text")
    assert count_strings(b'{"role":"assistant","content":""}', keys) == (0, 0)  # empty: no output
    assert count_strings(b'{"content":null,"text": "ab"}', keys) == (1, 2)
    assert count_strings(b'{"content":"say \\"content\\":\\"x\\""}', keys) == (1, len(rb'say \"content\":\"x\"'))  # quoted text is text
    assert count_strings(b'{"content":"a\\\\"}{"content" : "b"}', keys) == (2, 4)  # an escaped backslash ends
    assert count_strings(b'{"reasoning_content":"a","contents":"b","content":["c"]}', keys) == (0, 0)
    assert count_strings(b'{"content":"unclosed', keys) == (0, 0)
    assert count_strings(b'{"content":"a\n"}{"text":"bc"}', keys) == (1, 2)  # a value must close on its line


def test_response_tap_of_a_reset_stream(host) -> None:
    """A stream deleted while tapped (reset before its end) takes its tap along; other streams are not tapped."""
    s, _ = send(host, "tap", **{"x-keep": "4"})
    s.send_response_headers({":status": "200"})
    s.send_response_body(b"abcdef", end_of_stream=False)
    s.complete()
    from proxywasm.testing.fake import FakeHost

    if isinstance(host, FakeHost):  # inside the VM the C table is freed the same way (tap.c, on_delete)
        assert not host.shim.taps
    s2, _ = send(host, "response-body")
    s2.send_response_headers({":status": "200"})
    assert s2.send_response_body(b"x", end_of_stream=False) == Action.PAUSE  # reached Python
    s2.send_response_body(b"y", end_of_stream=True)
    assert json.loads(s2.response_body) == {"len": 2, "chunks": "xy"}


def test_properties(make_host) -> None:
    h = make_host("sdk_ops")
    assert h.start({})
    s = h.http_stream(properties={"route_name": "chat-route"})
    s.send_request_headers({**REQ, "x-op": "property"})
    assert s.request_header("x-route") == "chat-route"
    assert s.request_header("x-prop") == "v1"
    assert s.get_property("sdk_ops.value") == b"v1"


def test_metrics_counter_gauge_histogram(host) -> None:
    s, _ = send(host, "metrics")
    send(host, "metrics")
    assert host.metric("sdk_ops_counter") == 4
    assert host.metric("sdk_ops_gauge") == 5
    assert host.histogram("sdk_ops_hist") == [5, 9, 5, 9]
    assert s.request_header("x-counter") == "2"


def test_shared_data_cas(host) -> None:
    s, _ = send(host, "shared")
    assert s.request_header("x-cas") == "mismatch"
    assert s.request_header("x-value") == "v1"
    assert s.request_header("x-absent") == "(None, 0)"
    assert host.shared_data("sdk_ops.k") == b"v1"


def test_shared_queue_delivers_to_root(host) -> None:
    a, _ = send(host, "queue")
    b, _ = send(host, "queue")
    assert host.shared_data("sdk_ops.queue") == f"item-{b.id}".encode()
    assert a.id != b.id


def test_callout_callback_runs_bound_to_its_stream(host) -> None:
    s, action = send(host, "callout")
    other, _ = send(host, "headers")  # another stream becomes current meanwhile
    assert action == Action.PAUSE
    (call,) = host.callouts
    assert (call.cluster, call.body, call.timeout_ms) == ("upstream", b"ping", 1500)
    assert call.header(":path") == "/cb"
    host.respond_callout(call.token, 201, {"x-up": "yes"}, b"pong")
    assert s.request_header("x-callout-status") == "201"
    assert s.request_header("x-callout-body") == "pong"
    assert s.request_header("x-callout-header") == "yes"
    assert other.request_header("x-callout-status") is None
    assert s.continued == [StreamType.REQUEST]


def test_failed_callout_reports_status_zero(host) -> None:
    s, _ = send(host, "callout")
    host.fail_callout(host.callouts[0].token)
    assert s.request_header("x-callout-status") == "0"


def test_callout_after_stream_gone_is_dropped(host) -> None:
    s, _ = send(host, "callout")
    token = host.callouts[0].token
    s.complete()
    host.respond_callout(token, 200)
    assert not host.logs_at(LogLevel.ERROR)


def test_root_callout_outlives_its_stream_and_answers_the_root(host) -> None:
    s, action = send(host, "root_callout")
    assert action == Action.CONTINUE
    assert s.request_header("x-after-call") == "1"  # the stream was effective again after the call
    (call,) = host.callouts
    assert call.context_id == host.root_id and call.header(":path") == "/rc"
    s.complete()  # the stream is gone; the root still gets the answer
    host.respond_callout(call.token, 202, {}, b"late")
    assert host.shared_data("sdk_ops.root_callout") == b"202 late"
    assert not host.logs_at(LogLevel.ERROR)


def test_a_root_callouts_answer_is_brought_back_to_its_stream(host) -> None:
    s, action = send(host, "root_callout_back")
    assert action == Action.PAUSE
    (call,) = host.callouts
    assert call.context_id == host.root_id
    other, _ = send(host, "headers")  # another stream is current when the answer comes
    host.respond_callout(call.token, 201, {}, b"")
    assert s.request_header("x-back-status") == "201" and s.continued == [StreamType.REQUEST]
    assert other.request_header("x-back-status") is None
    gone, _ = send(host, "root_callout_back")
    late = host.callouts[-1]
    gone.complete()  # the client left: make_current says so, nothing acts on the stream
    host.respond_callout(late.token, 200, {}, b"")
    assert host.shared_data("sdk_ops.back") == b"gone"
    assert not host.logs_at(LogLevel.ERROR)


def test_bad_callout_raises_host_error(host) -> None:
    s, _ = send(host, "callout-bad")
    assert s.local_response is not None
    assert s.local_response.status == 500
    assert b"BAD_ARGUMENT" in s.local_response.body


def test_local_response(host) -> None:
    s, action = send(host, "local")
    assert action == Action.PAUSE
    lr = s.local_response
    assert (lr.status, lr.body, lr.headers, lr.details) == (418, b"teapot", [("x-local", "yes")], "sdk_ops_local")


def test_log_levels(host) -> None:
    s, _ = send(host, "log")
    for level in LogLevel:
        assert f"sdk_ops log {level.name}" in host.logs_at(level)
    assert s.request_header("x-log-level") == "TRACE"


def test_time(host) -> None:
    s, _ = send(host, "time")
    before = int(s.request_header("x-now"))
    host.advance(1500)
    s2, _ = send(host, "time")
    assert int(s2.request_header("x-now")) - before == 1_500_000_000
    assert int(s2.request_header("x-now-ms")) - int(s.request_header("x-now-ms")) == 1500
    assert int(s.request_header("x-now-ms")) == before // 1_000_000


def test_tick(host) -> None:
    assert host.state.tick_period_ms == 1000
    host.tick()
    host.tick()
    assert host.metric("sdk_ops_ticks") == 2


def test_exception_is_logged_and_stream_continues(host) -> None:
    s, action = send(host, "raise")
    assert action == Action.CONTINUE
    assert s.local_response is None
    (err,) = host.logs_at(LogLevel.ERROR)
    assert "RuntimeError: boom from sdk_ops" in err and "Traceback" in err and "op_raise" in err
    # the VM is still healthy
    s2, _ = send(host, "headers")
    assert s2.request_header("x-set") == "1"


def test_fail_closed_answers_500(make_host) -> None:
    h = make_host("sdk_ops")
    assert h.start({"_fail_closed_": True})
    s = h.http_stream()
    assert s.send_request_headers({**REQ, "x-op": "raise-response"}) == Action.CONTINUE
    assert s.send_response_headers({":status": "200"}) == Action.PAUSE
    assert s.local_response.status == 500
    assert b"internal plugin error" in s.local_response.body
    assert b"boom" not in s.local_response.body  # no internals leak to clients


def test_unimplemented_host_call_fails_loudly(host) -> None:
    s, _ = send(host, "foreign")
    assert s.request_header("x-foreign") == "None"  # Envoy's answer for an unknown foreign function
    # The emulator implements every import of the ABI table today; a call it lacked would fail the callback
    # (shown on the in-process host, whose host calls can be swapped: the wasm host links them at start).
    fake = FakeHost("sdk_ops")
    assert fake.start({})
    fake.state.proxy_call_foreign_function = lambda *a: fake.state._unimplemented("proxy_call_foreign_function")
    with pytest.raises(UnimplementedHostCall, match="proxy_call_foreign_function"):
        send(fake, "foreign")


def test_grpc_call_answer_runs_bound_to_its_stream(host) -> None:
    s, action = send(host, "grpc")
    other, _ = send(host, "headers")  # another stream becomes current meanwhile
    assert action == Action.PAUSE
    (call,) = host.grpc_calls
    assert (call.cluster, call.service, call.method, call.timeout_ms) == ("grpc-svc", "sdk_ops.Echo", "Unary", 700)
    assert call.messages == [f"ping:{s.id}".encode()] and ("x-md", "1") in call.metadata
    host.respond_grpc(call.token, b"pong")
    assert s.request_header("x-grpc-status") == "0"
    assert s.request_header("x-grpc-message") == "pong"
    assert other.request_header("x-grpc-status") is None
    assert s.continued == [StreamType.REQUEST]
    assert not host.grpc_calls


def test_grpc_call_failure_reports_status_and_message(host) -> None:
    s, _ = send(host, "grpc")
    host.close_grpc(host.grpc_calls[0].token, 14, "no healthy upstream")  # Envoy: UNAVAILABLE, no message
    assert s.request_header("x-grpc-status") == "14"
    assert s.request_header("x-grpc-status-message") == "no healthy upstream"
    assert s.request_header("x-grpc-message") == ""


def test_grpc_stream_messages_arrive_as_they_come(host) -> None:
    s, action = send(host, "grpc-stream", **{"x-half-close": "1"})
    assert action == Action.PAUSE
    (call,) = host.grpc_calls
    assert call.timeout_ms is None and call.messages == [b"one", b"two"] and call.half_closed
    host.grpc_metadata(call.token, {"x-init": "a"})
    host.grpc_message(call.token, b"ONE")
    assert s.request_header("x-grpc-got") == "ONE" and s.request_header("x-grpc-closed") is None
    host.grpc_message(call.token, b"TWO")
    assert s.request_header("x-grpc-got") == "ONE,TWO"
    host.grpc_metadata(call.token, {"x-trail": "b"}, trailing=True)
    host.close_grpc(call.token, 0)
    assert s.request_header("x-grpc-closed") == "0: x-init=a x-trail=b"
    assert s.continued == [StreamType.REQUEST]


def test_grpc_stream_cancelled_or_stream_gone_gets_no_callbacks(host) -> None:
    _, action = send(host, "grpc-stream", **{"x-cancel": "1"})
    assert action == Action.CONTINUE and not host.grpc_calls  # cancelled: the host forgot it
    s2, _ = send(host, "grpc-stream")
    token = host.grpc_calls[0].token
    s2.complete()
    host.grpc_message(token, b"late")
    host.close_grpc(token, 0)
    assert s2.request_header("x-grpc-got") is None
    assert not host.logs_at(LogLevel.ERROR)


def test_grpc_call_to_unknown_cluster_raises_host_error(host) -> None:
    host.state.clusters = {"upstream"}
    s, action = send(host, "grpc")  # sdk_ops does not catch the error: the dispatcher logs it and continues
    assert action == Action.CONTINUE and s.local_response is None and not host.grpc_calls
    assert any("proxy_grpc_call" in m and "BAD_ARGUMENT" in m for m in host.logs_at(LogLevel.ERROR))


def test_rules_pick_config_per_route(make_host) -> None:
    h = make_host("sdk_ops")
    assert h.start({"name": "global", "_rules_": [{"_match_route_": ["r1"], "name": "rule-r1"},
                                                  {"_match_domain_": ["*.corp.io"], "name": "rule-domain"}]})
    cases = [({"route_name": "r1"}, "example.com", "rule-r1"), ({"route_name": "r2"}, "a.corp.io:8080", "rule-domain"),
             ({"route_name": "r2"}, "example.com", "global")]
    for props, authority, want in cases:
        s = h.http_stream(properties=props)
        s.send_request_headers({**REQ, ":authority": authority})
        assert s.request_header("x-config-name") == want


def test_bad_rules_fail_plugin_start(make_host) -> None:
    h = make_host("sdk_ops")
    assert not h.start({"_rules_": [{"name": "no matcher"}]})
    assert any("_rules_[0]: needs one of" in m for m in h.logs_at(LogLevel.CRITICAL))


def test_config_not_json_fails_plugin_start(make_host) -> None:
    h = make_host("sdk_ops")
    assert not h.start(b"{nope")
    assert any("invalid plugin configuration" in m for m in h.logs_at(LogLevel.CRITICAL))


def test_zero_counter_increment_is_skipped_not_refused() -> None:
    """Envoy answers BAD_ARGUMENT to a counter increment of 0; the SDK must not send one."""
    from proxywasm import Counter, hostcalls
    from proxywasm.testing.fake import FakeHost

    h = FakeHost("sdk_ops")
    assert h.start({})
    c = Counter("zero_total")
    c.increment(0)
    assert h.metric("zero_total") == 0  # defined: the series exists
    c.increment(2)
    assert h.metric("zero_total") == 2
    with pytest.raises(hostcalls.HostError, match="BAD_ARGUMENT"):
        hostcalls.increment_metric(c.id, 0)


def test_finished_streams_are_forgotten(host) -> None:
    """Stream contexts are freed (in the module: in batches of at most 64), never accumulated."""
    for _ in range(300):
        s, _ = send(host, "headers")
        s.complete()
    s, _ = send(host, "contexts")
    live = int(s.request_header("x-contexts"))
    assert 2 <= live <= 66  # the root, this stream, and at most one pending batch


# --- proxywasm.jsonscan: the C scanner inside the VM answers exactly as the Python reference ---

_DEEP = lambda n: b'{"a":' + b"[" * (n - 1) + b"]" * (n - 1) + b"}"  # noqa: E731 - nesting n deep in all
JSON_EDGES = [
    b'{"model":"x"}', b' {"a":1 , "b" : [1,2,{"c":null}]}\n', b"[]", b'"s"', b"1", b"{}", b"", b"  ", b'{"a":1,}',
    b'{"a" 1}', b'{"a":01}', b'{"a":-0}', b'{"a":-}', b'{"a":1.}', b'{"a":.5}', b'{"a":1e}', b'{"a":1E+2}',
    b'{"a":1.7976931348623157e308}', b'{"a":1.7976931348623159e308}', b'{"a":1e309}', b'{"a":-1e309}',
    b'{"a":1e-400}', b'{"a":' + b"9" * 4300 + b"}", b'{"a":' + b"9" * 4301 + b"}", b'{"a":-' + b"9" * 4301 + b"}",
    b'{"a":1' + b"0" * 4400 + b".5}", _DEEP(500), _DEEP(501), b"[" * 500 + b"]" * 500, b"[" * 501 + b"]" * 501,
    b'{"a":"\\ud800"}', b'{"\\u006dodel":"x","model":"y"}', b'{"a":"\x01"}', b'{"a":"\x7f"}', b'{"a":"\\x"}',
    b'{"a":"\\u12"}', b'{"a":"\\u12g4"}', b'{"a":"\xc3\xa9"}', b'{"a":"\xc0\xaf"}', b'{"a":"\xed\xa0\x80"}',
    b'{"a":"\xf4\x8f\xbf\xbf"}', b'{"a":"\xf4\x90\x80\x80"}', b'{"a":"\xe0\x9f\xbf"}', b'{"a":"\xf0\x8f\xbf\xbf"}',
    b'{"a":"\xe2\x82"}', b'{"a":"\xe2\x82', b"\xef\xbb\xbf{}", b'{"a":true,"b":false,"c":null}', b'{"a":tru}',
    b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b'{"a":1}x', b'{"a":1}{}', b'{"a":1} \t\r\n',
    b'{"a":"' + b"x" * 21 + b'\\"' + b"y" * 9 + b'\\\\"}', b'{"\xc3\xa9":"\xe2\x82\xac","b":[1,"\xf0\x9f\x98\x80"]}',
    b'{"a":1\xff}', b'{"a":"x"\x00}', b'{"model":"m","model":{"x":[1]},"n":2.5}', b'{"a" : { "b" : 1 } , "c":2}',
    # floats without an exponent skip strtod up to 308 integer digits: both sides of DBL_MAX (~1.8e308)
    b'{"a":0.2,"b":-0.5}', b'{"a":' + b"9" * 308 + b'.9}', b'{"a":' + b"1" + b"0" * 308 + b'.5}',
    b'{"a":' + b"9" * 309 + b'.5}', b'{"a":-' + b"9" * 309 + b'.5}',
    # the index: repeated keys count, integers of up to 18 digits come decoded, escaped keys are flagged
    b'{"n":1,"n":22,"n":333}', b'{"a":' + b"9" * 18 + b',"b":' + b"9" * 19 + b',"c":0,"d":-1,"e":1.0}',
    b'{"mo\\u0064el":"x"}',
]


def _json_members(host, body: bytes):
    s = host.http_stream()
    s.send_request_headers({**REQ, "x-op": "json-members"})
    s.send_request_body(body, end_of_stream=True)
    return json.loads(s.request_body)


def _reference(body: bytes):
    from proxywasm.testing.shim_twins import json_index, json_members

    try:
        members = json_members(body)
        found = json_index(body)
    except ValueError:
        return {"error": True}
    index = None if found is None else [{k.decode("latin-1"): list(v) for k, v in found[0].items()}, found[1]]
    return {"members": None if members is None else [list(m) for m in members], "index": index}


def test_json_members_edges(host) -> None:
    for body in JSON_EDGES:
        assert _json_members(host, body) == _reference(body), body[:80]


# The C scanner steps through string bytes 16, 32 and 64 at a time (simd128), and through whitespace runs 16 at a
# time: each byte it must stop at, valid or not, at every offset of the first blocks of a string and around the
# wider steps' edges; long strings of multibyte characters split across blocks every way; strings, runs and
# bodies that end at the buffer's end (no 16-byte load may pass it); bodies shorter than a block.
_PAD = bytes(range(0x21, 0x7F)).replace(b'"', b"").replace(b"\\", b"") * 2  # printable ASCII but quote and backslash, 184 bytes
_OFFSETS = [*range(34), 46, 47, 48, 49, 63, 64, 79, 80, 81, 111, 112, 113, 127, 128, 129, 143, 144, 145]
_STOP_OK = [b'\\"', b"\\\\", b"\\n", b"\\u00e9", b"\x7f", b"\xc2\x80", b"\xc3\xa9", b"\xdf\xbf", b"\xe0\xa0\x80",
            b"\xe2\x82\xac", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf0\x9f\x98\x80",
            b"\xf4\x8f\xbf\xbf"]
_STOP_BAD = [b"\x00", b"\x01", b"\n", b"\x1f", b"\\x", b"\\u12", b"\\", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf",
             b"\xc2", b"\xc2\x41", b"\xe2\x82", b"\xe2\x82\xc3\xa9", b"\xe0\x9f\xbf", b"\xed\xa0\x80", b"\xed\xbf\xbf",
             b"\xf0\x8f\xbf\xbf", b"\xf0\x9f\x98", b"\xf0\x9f\x98\x41", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
             b"\xf8\x88\x80\x80\x80", b"\xff", b"\xc3\xa9\x80"]


def _obj(values: list[bytes]) -> bytes:
    return b"{" + b",".join(b'"k%d":"%s"' % (i, v) for i, v in enumerate(values)) + b"}"


def _multibyte_prefix(n: int) -> bytes:  # n bytes of two-byte characters (and an ASCII byte when n is odd)
    return "é".encode() * (n // 2) + b"x" * (n % 2)


JSON_SIMD_EDGES = [
    _obj([_PAD[:n] for n in range(150)]),  # the closing quote at each offset
    *(_obj([_PAD[:off] + stop + _PAD[:tail] for off in _OFFSETS for tail in (0, 1, 15, 16, 40)]) for stop in _STOP_OK),
    *(_obj([_multibyte_prefix(off) + stop + "€".encode() * 12 for off in range(34)]) for stop in _STOP_OK),
    *(_obj([b"x" * shift + ch * 40 for shift in range(16)]) for ch in ("é€😀".encode()[i:j] for i, j in ((0, 2), (2, 5), (5, 9)))),
    *(b'{"a":"' + _PAD[:off] + stop + _PAD[:tail] + b'","b":"' + _PAD[:40] + b'"}'
      for stop in _STOP_BAD for off in _OFFSETS for tail in ((0, 20) if off < 34 else (20,))),
    *(b'{"a":"' + _multibyte_prefix(off) + stop + "€".encode() * 12 + b'"}' for stop in _STOP_BAD for off in range(34)),
    *(b'"' + stop + b'"' for stop in _STOP_OK + _STOP_BAD),  # bodies shorter than 16 bytes
    *(b'"' + _PAD[:n] + b'"' for n in range(40)),  # a string that ends the body
    *(b'"' + _multibyte_prefix(n) + b'"' for n in range(40)),
    *(b'{"a":"' + _PAD[:n] + end for n in range(8, 40) for end in (b"", b"\xc3\xa9", b"\xe2\x82", b"\\", b"\\u00")),
    *(b'{"a":"' + _multibyte_prefix(n) + end for n in range(8, 40) for end in (b"", b"\xe2\x82\xac", b"\xf0\x9f\x98")),
    # whitespace runs of each length, ending at a token, at a control byte or at the end of the body
    *(b"{" + ws * n + b'"a"' + ws * n + b":" + ws * n + b"[1," + ws * n + b"2]" + ws * n + b"}" + ws * n
      for ws in (b" ", b"\n", b"\r\n\t ") for n in range(0, 40, 3)),
    *(b"[" + b" " * n + bad + b" " * 20 + b"1]" for bad in (b"\x0b", b"\x00", b"\x0c", b"\x85", b"\xa0", b"x") for n in range(34)),
    *(b"[1]" + b"\t" * n for n in range(40)),
]


def test_json_members_simd_edges(host) -> None:
    for body in JSON_SIMD_EDGES:
        assert _json_members(host, body) == _reference(body), body[:200]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4), max_leaves=12)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.dictionaries(st.text(max_size=6), json_values, max_size=5), cut=st.integers(0, 400),
       flip=st.integers(0, 400), byte=st.integers(0, 255), ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_json_members_agree_with_the_reference(host, doc, cut, flip, byte, ascii_only, indent) -> None:
    body = json.dumps(doc, ensure_ascii=ascii_only, indent=indent).encode("utf-8", "surrogatepass")
    variants = [body, body[: cut % (len(body) + 1)]]
    if body:
        i = flip % len(body)
        variants.append(body[:i] + bytes([byte]) + body[i + 1 :])
    for b in variants:
        assert _json_members(host, b) == _reference(b), b[:200]
