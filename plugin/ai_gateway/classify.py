"""Content routing's intent classifier: a small model asked, with a bounded timeout, which category a request
belongs to; the category's model serves it, the route's default on any failure (content_routing.py)."""

from __future__ import annotations

import random

from proxywasm import Action, CalloutResponse, Counter, LogLevel, MetricCache
from proxywasm import hostcalls as hc

from .attempt import address, path_of
from .content_routing import classified, classifier_request
from .errors import GatewayError
from .metric_names import classifier_metric
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
    try:
        att = address(cfg, ask, model, hc.now_ms(), _RNG,
                      client_auth="authorization" in stream.headers_in)
    except GatewayError:  # the classifier's provider cannot carry the question: as if it did not answer
        att = None
    waiting = [False]

    def decided(target: str | None) -> None:
        _COUNTERS(classifier_metric(target is not None)).increment(1)  # type: ignore[attr-defined]
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
        status, body = resp.status, resp.body
        if att is not None and att.answer is not None and status:  # the provider's answer as OpenAI's
            status, _, translator = att.answer.begin(status, resp.header("content-type"), hc.now_ns() // 10**9)
            body = translator.feed(body, True)
        decided(classified(c, status, body))

    try:
        if att is None:  # no usable key for the classifier
            raise hc.HostError("no key")
        # the answer is read here: uncompressed (the client's accept-encoding, e.g. the openai client's gzip,
        # stays the client's)
        headers = [(k, v) for k, v in callout_headers(stream.request_headers.items(), att, cfg)
                   if k not in _REPLACED] + [(":method", "POST"), (":path", path_of(att)),
                                              ("accept-encoding", "identity")]
        if cfg.pickers:  # a classifier behind an endpoint picker: a pod like any request (None: all saturated)
            headers = add_destination(cfg.pickers, model, ask, headers, hc.now_ms(),
                                      cfg.metrics)
            if headers is None:
                raise hc.HostError("no endpoint")
        stream.http_call(model.cluster, headers, att.body, callback=answered, timeout_ms=c.timeout_ms)
    except hc.HostError:
        decided(None)
        return waiting[1]
    waiting[0] = True
    return Action.PAUSE
