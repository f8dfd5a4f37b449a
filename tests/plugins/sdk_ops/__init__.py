"""Test plugin: request header ``x-op`` picks which SDK feature a stream exercises.

Results come back as request/response headers or local replies so the same
assertions hold on every host (in-process, wasmtime, Envoy).
"""

from __future__ import annotations

import json

from proxywasm import (
    Action,
    CalloutResponse,
    CasMismatch,
    Counter,
    Gauge,
    GrpcResponse,
    Histogram,
    HostError,
    HttpContext,
    LogLevel,
    RootContext,
    SharedQueue,
    hostcalls,
    jsonscan,
    set_root_context,
    shared,
)

COUNTER = Counter("sdk_ops_counter")
GAUGE = Gauge("sdk_ops_gauge")
HIST = Histogram("sdk_ops_hist")
TICKS = Gauge("sdk_ops_ticks")


class SdkOps(HttpContext[dict]):
    op = ""

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        self.op = self.request_headers.get("x-op") or ""
        name = (self.config or {}).get("name")
        if name:
            self.request_headers.set("x-config-name", name)
        handler = getattr(self, "op_" + self.op.replace("-", "_"), None)
        return handler() if handler else Action.CONTINUE

    def op_headers(self) -> Action:
        h = self.request_headers
        h.set("x-set", "1")
        h.add("x-add", "a")
        h.add("x-add", "b")
        h.remove("x-remove")
        h.set("x-path-seen", h.get(":path") or "")
        h.set("x-count", str(len(h.items())))
        h.set("x-missing", str(h.get("x-nope", "default")))
        return Action.CONTINUE

    def op_snapshot(self) -> Action:  # Headers.snapshot, whole and for named headers only (C inside the VM)
        h = self.request_headers
        names = tuple(n.encode() for n in (h.get("x-names") or "").split(",") if n)
        h.set("x-snapshot", json.dumps([h.snapshot(), h.snapshot(names)]))
        return Action.CONTINUE

    def op_replace_all(self) -> Action:
        self.request_headers.replace_all([(":path", "/new"), (":method", "GET"), ("x-only", "1")])
        return Action.CONTINUE

    def op_property(self) -> Action:
        route = hostcalls.get_property("route_name")
        hostcalls.set_property("sdk_ops.value", "v1")
        self.request_headers.set("x-route", (route or b"<none>").decode())
        self.request_headers.set("x-prop", (hostcalls.get_property(("sdk_ops", "value")) or b"").decode())
        return Action.CONTINUE

    def op_metrics(self) -> Action:
        COUNTER.increment(2)
        GAUGE.set(7)
        GAUGE.add(-2)
        HIST.record(5)
        HIST.record(9)
        self.request_headers.set("x-counter", str(COUNTER.get()))
        self.request_headers.set("x-gauge", str(GAUGE.get()))
        return Action.CONTINUE

    def op_shared(self) -> Action:
        shared.set("sdk_ops.k", b"v0")
        _, cas = shared.get("sdk_ops.k")
        shared.set("sdk_ops.k", b"v1", cas)
        try:
            shared.set("sdk_ops.k", b"v2", cas)  # stale CAS must be refused
            result = "accepted"
        except CasMismatch:
            result = "mismatch"
        self.request_headers.set("x-cas", result)
        self.request_headers.set("x-value", (shared.get("sdk_ops.k")[0] or b"").decode())
        self.request_headers.set("x-absent", repr(shared.get("sdk_ops.absent")))
        return Action.CONTINUE

    def op_queue(self) -> Action:
        assert isinstance(self.root, SdkOpsRoot)
        self.root.queue.enqueue(b"item-" + str(self.context_id).encode())
        return Action.CONTINUE

    def op_callout(self) -> Action:
        self.http_call("upstream", [(":method", "POST"), (":path", "/cb"), (":authority", "up")], b"ping",
                       callback=self.on_callout, timeout_ms=1500)
        return Action.PAUSE

    def on_callout(self, resp: CalloutResponse) -> None:
        self.request_headers.set("x-callout-status", str(resp.status))
        self.request_headers.set("x-callout-body", resp.body.decode())
        self.request_headers.set("x-callout-header", resp.header("x-up") or "")
        self.resume_request()

    def op_root_callout(self) -> Action:  # a call that outlives the stream; its answer reaches the root
        self.http_call_as_root("upstream", [(":method", "GET"), (":path", "/rc"), (":authority", "up")],
                               callback=self.root.on_root_callout)
        self.request_headers.set("x-after-call", "1")  # the stream is still the effective context
        return Action.CONTINUE

    def op_root_callout_back(self) -> Action:  # a root-owned call whose answer comes back to this stream
        self.http_call_as_root("upstream", [(":method", "GET"), (":path", "/back"), (":authority", "up")],
                               callback=self.on_back)
        return Action.PAUSE

    def on_back(self, resp: CalloutResponse) -> None:  # runs bound to the root
        if not self.make_current():
            shared.set("sdk_ops.back", b"gone")
            return
        self.request_headers.set("x-back-status", str(resp.status))
        self.resume_request()

    def op_callout_bad(self) -> Action:
        try:
            self.http_call("upstream", [(":method", "GET"), (":path", "/")], callback=self.on_callout)
        except HostError as e:
            self.send_local_response(500, str(e))
            return Action.PAUSE
        return Action.CONTINUE

    def op_raise(self) -> Action:
        raise RuntimeError("boom from sdk_ops")

    def op_log(self) -> Action:
        for level in LogLevel:
            self.log(level, f"sdk_ops log {level.name}")
        self.request_headers.set("x-log-level", hostcalls.get_log_level().name)
        return Action.CONTINUE

    def op_local(self) -> Action:
        self.send_local_response(418, b"teapot", [("x-local", "yes")], "sdk_ops local")
        return Action.PAUSE

    def op_time(self) -> Action:
        self.request_headers.set("x-now", str(hostcalls.get_current_time_ns()))
        self.request_headers.set("x-now-ms", str(hostcalls.now_ms()))  # the same clock (WASI's inside the VM), in ms
        return Action.CONTINUE

    def op_contexts(self) -> Action:
        from proxywasm import vm

        self.request_headers.set("x-contexts", str(len(vm.contexts)))
        return Action.CONTINUE

    def op_foreign(self) -> Action:
        self.request_headers.set("x-foreign", repr(hostcalls.call_foreign_function("no_such_function", b"")))
        return Action.CONTINUE

    def op_grpc(self) -> Action:  # a unary call; the answer resumes the request with what came back
        self.grpc_call("grpc-svc", "sdk_ops.Echo", "Unary", b"ping:" + str(self.context_id).encode(),
                       self.on_grpc, metadata=[("x-md", "1")], timeout_ms=700)
        return Action.PAUSE

    def on_grpc(self, resp: GrpcResponse) -> None:
        h = self.request_headers
        h.set("x-grpc-status", str(resp.status))
        h.set("x-grpc-status-message", resp.status_message)
        h.set("x-grpc-message", resp.message.decode())
        self.resume_request()

    def op_grpc_stream(self) -> Action:  # a gRPC stream: two messages out, each answer recorded as it comes
        self.got: list[str] = []
        grpc_stream = self.grpc_stream("grpc-svc", "sdk_ops.Echo", "Stream", self.on_grpc_message, self.on_grpc_closed)
        grpc_stream.send(b"one")
        grpc_stream.send(b"two", end_stream=self.request_headers.get("x-half-close") == "1")
        if self.request_headers.get("x-cancel") == "1":
            grpc_stream.cancel()
            return Action.CONTINUE
        return Action.PAUSE

    def on_grpc_message(self, message: bytes) -> None:
        self.got.append(message.decode())
        self.request_headers.set("x-grpc-got", ",".join(self.got))

    def on_grpc_closed(self, resp: GrpcResponse) -> None:
        md = " ".join(f"{k}={v}" for k, v in (*resp.initial_metadata, *resp.trailing_metadata))
        self.request_headers.set("x-grpc-closed", f"{resp.status}:{resp.status_message} {md}")
        self.resume_request()

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        if self.op == "json-members":  # proxywasm.jsonscan on this host (C inside the VM): the answer replaces the body
            if not end_of_stream:
                return Action.PAUSE
            body = self.request_body.read()
            try:
                answer = {"members": jsonscan.members(body)}
                found = jsonscan.index(body)  # the same scan, as a dict (C inside the VM too)
                answer["index"] = None if found is None else [
                    {k.decode("latin-1"): list(v) for k, v in found[0].items()}, found[1]]
            except ValueError:
                answer = {"error": True}
            self.request_body.replace(json.dumps(answer).encode())
            return Action.CONTINUE
        if self.op != "body":
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE
        body = self.request_body.read()
        self.request_body.replace(body.upper())
        self.request_body.append(b"!")
        self.request_body.prepend(b">")
        self.request_headers.set("x-body-size", str(self.request_body.size()))
        return Action.CONTINUE

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        if self.op == "raise-response":
            raise ValueError("boom in response")
        if self.op == "skip":  # skip_response_events (C inside the VM): the chunks Python saw replace the last one
            self.seen: list[str] = []
            self.skip_response_events(((b'"usage"', b"null"), (b"[DONE]", b"")))
        if self.op == "tap":  # proxywasm.taps (C inside the VM): the report replaces the body's last chunk
            self.tap_calls = 0
            self.tap_response_body(int(self.request_headers.get("x-keep") or 0),
                                   int(self.request_headers.get("x-whole") or 0))
        keys = self.request_headers.get("x-count-keys")  # count_response_strings, with any op (alone: op "count")
        if keys:
            self.count_response_strings(tuple(k.encode() for k in keys.split(",")))
            self.count_calls = 0
        self.response_headers.set("x-sdk-op", self.op or "none")
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        if self.op == "count":  # Python sees every chunk; the counts replace the last one
            self.count_calls += 1
            if end_of_stream:
                got = self.take_response_tap()
                assert got is not None
                self.response_body.replace(json.dumps(
                    {"calls": self.count_calls, "count": [got.strings, got.string_bytes, got.first_string_ns > 0]}
                ).encode())
            return Action.CONTINUE
        if self.op == "skip":
            self.seen.append(self.response_body.read().decode("latin-1"))
            if end_of_stream:
                if self.request_headers.get("x-count-keys"):
                    got = self.take_response_tap()
                    assert got is not None
                    self.seen.append(json.dumps([got.strings, got.string_bytes, got.first_string_ns > 0]))
                self.response_body.replace(json.dumps(self.seen).encode())
            else:
                self.skip_response_events(((b'"usage"', b"null"), (b"[DONE]", b"")))
            return Action.CONTINUE
        if self.op == "tap":
            self.tap_calls += 1
            got = self.take_response_tap()
            report = {"calls": self.tap_calls, "end": end_of_stream, "body_size": body_size, "tap": None if got is None
                      else [got.data.decode("latin-1"), got.size, got.first_ns > 0, got.trimmed]}
            if got is not None and self.request_headers.get("x-count-keys"):
                report["count"] = [got.strings, got.string_bytes, got.first_string_ns > 0]
            self.response_body.replace(json.dumps(report).encode())
            return Action.CONTINUE
        if self.op != "response-body":
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE
        body = self.response_body.read()
        self.response_body.replace(json.dumps({"len": len(body), "chunks": body.decode()}).encode())
        return Action.CONTINUE


class SdkOpsRoot(RootContext[dict]):
    http_context = SdkOps

    def on_config_loaded(self) -> None:
        self.queue = SharedQueue.register("sdk-ops-queue")
        self.set_tick_period_ms(1000)

    def on_tick(self) -> None:
        TICKS.add(1)

    def on_queue_ready(self, queue_id: int) -> None:
        items = []
        while (item := self.queue.dequeue()) is not None:
            items.append(item.decode())
        shared.set("sdk_ops.queue", ",".join(items).encode())

    def on_root_callout(self, resp: CalloutResponse) -> None:
        shared.set("sdk_ops.root_callout", f"{resp.status} {resp.body.decode()}".encode())


set_root_context(SdkOpsRoot)
