"""Example plugin touching every part of the SDK.

* adds a configured response header and ``x-showcase-count`` (a counter shared
  by all workers through shared data with CAS);
* answers ``deny_paths`` with a local 403 and ``/showcase/stats`` with JSON;
* replaces a configured word in request bodies (buffers the whole body);
* under ``callout.prefix`` asks another cluster first and passes its status on
  as request header ``x-callout-status`` (503 when the callout fails);
* counts requests (counter), body sizes (histogram) and ticks (gauge).
"""

from __future__ import annotations

import json

from proxywasm import (
    Action,
    CalloutResponse,
    Counter,
    Gauge,
    Histogram,
    HttpContext,
    RootContext,
    set_root_context,
    shared,
)
from proxywasm import hostcalls as hc

from .config import Config, parse

REQUESTS = Counter("showcase_requests_total")
DENIED = Counter("showcase_denied_total")
BODY_BYTES = Histogram("showcase_request_body_bytes")
TICKS = Gauge("showcase_ticks")
COUNT_KEY = "showcase.requests"
TICK_KEY = "showcase.last_tick_ns"


def _bump(value: bytes | None) -> bytes:
    return str(int(value or b"0") + 1).encode()


class ShowcaseStream(HttpContext[Config]):
    count = b""

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        cfg = self.config
        if cfg is None:
            return Action.CONTINUE
        REQUESTS.increment()
        self.count = shared.update(COUNT_KEY, _bump)
        path = (self.request_headers.get(":path") or "").split("?")[0]
        if path in cfg.deny_paths:
            DENIED.increment()
            self.send_local_response(403, json.dumps({"error": "forbidden", "path": path}),
                                     [("content-type", "application/json")], "showcase denied")
            return Action.PAUSE
        if path == "/showcase/stats":
            ticks = shared.get(TICK_KEY)[0]
            body = {"requests": int(self.count), "ticks": TICKS.get(), "last_tick_ns": int(ticks or b"0")}
            self.send_local_response(200, json.dumps(body), [("content-type", "application/json")])
            return Action.PAUSE
        if cfg.callout and path.startswith(cfg.callout_prefix):
            c = cfg.callout
            self.http_call(c.cluster, [(":method", "GET"), (":path", c.path), (":authority", c.authority)],
                           callback=self.on_callout, timeout_ms=c.timeout_ms)
            return Action.PAUSE
        return Action.CONTINUE

    def on_callout(self, resp: CalloutResponse) -> None:
        if resp.status == 0:
            self.send_local_response(503, '{"error": "callout failed"}', [("content-type", "application/json")])
            return
        self.request_headers.set("x-callout-status", str(resp.status))
        self.request_headers.set("x-callout-body-bytes", str(len(resp.body)))
        self.resume_request()

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        cfg = self.config
        if cfg is None or not cfg.redact:
            return Action.CONTINUE
        if not end_of_stream:
            return Action.PAUSE  # keep buffering: the word may straddle chunks
        body = self.request_body.read()
        BODY_BYTES.record(len(body))
        word = cfg.redact.encode()
        if word in body:
            self.request_body.replace(body.replace(word, b"*" * len(word)))
        return Action.CONTINUE

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        cfg = self.config
        if cfg is not None:
            if cfg.header_name:
                self.response_headers.set(cfg.header_name, cfg.header_value)
            if self.count:
                self.response_headers.set("x-showcase-count", self.count.decode())
        return Action.CONTINUE


class ShowcaseRoot(RootContext[Config]):
    http_context = ShowcaseStream

    def parse_config(self, config: dict) -> Config:
        return parse(config)

    def on_config_loaded(self) -> None:
        # Create the shared counter before traffic: Envoy has no atomic create-if-absent,
        # so CAS updates of a key that does not exist yet could race between workers.
        if shared.get(COUNT_KEY)[0] is None:
            shared.set(COUNT_KEY, b"0")
        cfg = self.rules.global_config if self.rules else None
        if cfg is not None and cfg.tick_ms:
            self.set_tick_period_ms(cfg.tick_ms)

    def on_tick(self) -> None:
        TICKS.add(1)  # every VM ticks (main thread and each worker): the gauge sums them
        shared.set(TICK_KEY, str(hc.get_current_time_ns()).encode())


set_root_context(ShowcaseRoot)
