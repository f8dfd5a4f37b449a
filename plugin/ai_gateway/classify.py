"""Content routing's intent classifier: a small model asked, with a bounded timeout, which category a request
belongs to; the category's model serves it, the route's default on any failure (content_routing.py)."""

from __future__ import annotations

import random

from proxywasm import Action, CalloutResponse, Counter, LogLevel, MetricCache
from proxywasm import hostcalls as hc

from .attempt import address
from .content_routing import classified, classifier_request
from .errors import GatewayError
from .picker import add_destination
from .upstream import callout_headers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .config import Config

_COUNTERS = MetricCache(Counter)
_RNG = random.Random()  # key picks for the classifier's own calls
_REPLACED = frozenset({":method", ":path", "accept-encoding"})


def classify(stream: Any, cfg: Config, body: bytes) -> Action:
    """Ask the classifier; the request waits (PAUSE) and goes on, routed, when it answers or fails."""
    route = cfg.content_routes[stream.requested]
    c = route.classifier
    model = cfg.models[c.model]
    # addressed like any request the gateway sends itself: cluster and model headers, a pool key, the upstream name
    ask = classifier_request(c, stream.doc)
    att = address(cfg, ask, model, hc.now_ns() // 1_000_000, _RNG,
                  client_auth="authorization" in stream.headers_in)
    waiting = [False]

    def decided(target: str | None) -> None:
        _COUNTERS("aigw.content_routing.classifier." + ("ok" if target else "failed")).increment(1)  # type: ignore[attr-defined]
        if target is None:
            hc.log(LogLevel.INFO, f"content routing: the classifier did not answer usably: {route.default}")
        try:
            stream._route(cfg, body, target or route.default)
            act = stream._proceed()
        except GatewayError as e:
            act = stream._reject(e)
        if waiting[0] and act == Action.CONTINUE:
            stream.sent_headers = stream.request_headers.items()  # read empty once resumed (consumers/)
            stream.resume_request()
        waiting.append(act)

    def answered(resp: CalloutResponse) -> None:
        decided(classified(c, resp.status, resp.body))

    try:
        if att is None:  # no usable key for the classifier
            raise hc.HostError("no key")
        # the answer is read here: uncompressed (the client's accept-encoding, e.g. the openai client's gzip,
        # stays the client's)
        headers = [(k, v) for k, v in callout_headers(stream.request_headers.items(), att, cfg)
                   if k not in _REPLACED] + [(":method", "POST"), (":path", "/v1/chat/completions"),
                                              ("accept-encoding", "identity")]
        if cfg.pickers:  # a classifier behind an endpoint picker: a pod like any request (None: all saturated)
            headers = add_destination(cfg.pickers, model, ask, headers, hc.now_ns() // 1_000_000,
                                      cfg.metrics)
            if headers is None:
                raise hc.HostError("no endpoint")
        stream.http_call(model.cluster, headers, att.body, callback=answered, timeout_ms=c.timeout_ms)
    except hc.HostError:
        decided(None)
        return waiting[1]
    waiting[0] = True
    return Action.PAUSE
