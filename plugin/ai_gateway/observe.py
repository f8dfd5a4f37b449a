"""Per-request observations: token usage, latency, the AI log record, and metrics.

Metric names (built in metric_names.py) follow Higress's AI statistics so Envoy ``stats_tags`` turn the name
segments into Prometheus labels (see wasm-config/envoy/ai-gateway-metrics.yaml):

    route.<route>.upstream.<cluster>.model.<model>.consumer.<consumer>.metric.<name>

Counters: input_token, output_token, total_token, llm_service_duration (ms, sum),
llm_duration_count, llm_first_token_duration (ms, sum), llm_stream_duration_count,
request_total, error_total (5xx, no answer, or an answer cut off, unless the client left), cancelled_total (the client
left before the answer's end), usage_estimated_total (served answers whose usage the server did not report: their
tokens are estimated, see estimate.py) and estimated_token (their total tokens), fallback_total,
attempt_failure_total (an upstream attempt on this model that failed and was followed by another: counted on the
failed model's labels). Histograms (ms): llm_first_token_latency, llm_latency.
TTFT (llm_first_token_*, the AI log's ttft_ms) is the time to the first event carrying generated output.
"""

from __future__ import annotations

import re
from json.encoder import encode_basestring_ascii

from proxywasm import LogLevel, shared
from proxywasm import hostcalls as hc
from proxywasm.properties import response_code_details, response_flags

from .metric_names import MAX_LABEL, METRICS, series_prefix
from .usage import Usage

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_str = encode_basestring_ascii  # a JSON string literal, in C


# -- the consumer label: a client-influenced value, so sanitised to the label alphabet and bounded --

_CONSUMER_UNSAFE = re.compile(r"[^A-Za-z0-9_@:|\-]")  # no '.': it would forge name segments
CONSUMER_OTHER = "_other"  # every consumer beyond MAX_CONSUMERS distinct ones
MAX_CONSUMERS = 1000  # set from the configuration (max_consumers)
_ADMITTED_KEY = "aigw.consumers.n"  # shared data: how many labels this Envoy process admitted
_CONSUMERS: dict[str, str] = {}  # consumer -> its label, as this VM decided


def consumer_label(consumer: str) -> str:
    """The consumer's metric label: ``none`` without one; its sanitised name while fewer than MAX_CONSUMERS
    distinct labels exist in this Envoy process (shared data, all workers), else ``_other``. Envoy never frees
    a stat, so this bounds what clients (or a flood of consumers) can make Envoy keep."""
    got = _CONSUMERS.get(consumer)
    if got is not None:
        return got
    name = _CONSUMER_UNSAFE.sub("_", consumer)[:MAX_LABEL] or "none"
    if name != "none" and name != CONSUMER_OTHER and not _admit(name):
        name = CONSUMER_OTHER
    if len(_CONSUMERS) >= 2 * MAX_CONSUMERS:
        _CONSUMERS.clear()
    _CONSUMERS[consumer] = name
    return name


def _admit(name: str) -> bool:
    key = "aigw.consumer." + name
    if shared.get(key)[0] is not None:
        return True  # admitted by this or another worker
    admitted = False

    def take(raw: bytes | None) -> bytes:
        nonlocal admitted
        n = int(raw or b"0")
        admitted = n < MAX_CONSUMERS
        return str(n + admitted).encode()

    shared.update(_ADMITTED_KEY, take)
    if admitted:
        shared.set(key, b"1")
    return admitted


class Observation:
    """One answered request, as metrics and the AI log see it (a plain class, not a record: one is made per
    request, and a record's generic keyword __init__ costs microseconds inside V8)."""

    __slots__ = ("attempts", "cancelled", "cluster", "complete", "consumer", "duration_ms", "estimated",
                 "fallback_from", "model", "route", "served", "sse", "status", "ttft_ms", "usage")

    def __init__(self, model: str, served: str, route: str, cluster: str, consumer: str, status: int, sse: bool,
                 usage: Usage | None, ttft_ms: int | None, duration_ms: int, fallback_from: str,
                 complete: bool = True, estimated: bool = False, cancelled: bool = False) -> None:
        self.model = model  # as requested by the client (model or alias)
        self.served = served  # the model that answered
        self.route, self.cluster, self.consumer = route, cluster, consumer
        self.status, self.sse, self.usage = status, sse, usage
        self.ttft_ms, self.duration_ms = ttft_ms, duration_ms
        self.fallback_from = fallback_from  # "" when no fallback happened
        self.complete = complete  # False: the response never reached its end (cut off, reset, client gone)
        self.estimated = estimated  # usage is the gateway's estimate (the server reported none)
        self.cancelled = cancelled  # the client left before the end (not an upstream failure)
        self.attempts = ""  # JSON [["model", status], ...] after a fallback (more than one attempt), else ""

    def log_record(self) -> str:
        """The AI log line (JSON). Assembled by hand: the JSON encoder costs ~5x more inside the VM."""
        u = self.usage
        if u is None:
            inp = out = total = source = "null"
        else:
            inp, out, total = str(u.input), str(u.output), str(u.total)
            source = '"estimated"' if self.estimated else '"server"'
        key = (self.model, self.served, self.route, self.cluster, self.consumer)
        head = _HEADS.get(key)
        if head is None:
            if len(_HEADS) >= MAX_SERIES:
                _HEADS.clear()
            head = _HEADS[key] = (f'{{"model":{_str(self.model)},"served_model":{_str(self.served)},'
                                  f'"route":{_str(self.route)},"cluster":{_str(self.cluster)},'
                                  f'"consumer":{_str(self.consumer)},')
        ttft = self.ttft_ms
        return _LINE % (head, self.status, _BOOL[self.sse], inp, out, total, source,
                        _BOOL[u is not None and not self.estimated], "null" if ttft is None else str(int(ttft)),
                        self.duration_ms, _str(self.fallback_from) if self.fallback_from else "null",
                        _BOOL[bool(self.complete)], _BOOL[bool(self.cancelled)], self.attempts or "null")


class ClientObservation(Observation):
    """A request whose client spoke another protocol (clients.BY_PATH): its AI log says which (an OpenAI client's
    says "openai" in the line's constant text, at no cost)."""

    __slots__ = ("client",)

    def log_record(self) -> str:
        return Observation.log_record(self)[: -len(_OPENAI)] + ',"client":' + _str(self.client) + "}"


# One %-format (in C) instead of an f-string of a dozen parts: the AI log line is made per request.
_LINE = ('%s"status":%d,"stream":%s,"input_tokens":%s,"output_tokens":%s,"total_tokens":%s,"usage_source":%s,'
         '"usage_known":%s,"ttft_ms":%s,"duration_ms":%d,"fallback_from":%s,"complete":%s,"cancelled":%s,'
         '"attempts":%s,"client":"openai"}')
_OPENAI = ',"client":"openai"}'
_HEADS: dict[tuple[str, str, str, str, str], str] = {}  # the AI log's label part, per label set
_BOOL = {True: "true", False: "false"}


class _Series:
    """The metrics of one label set, each defined on its first use (a metric that never had a value,
    such as the tokens of an answer whose usage is unknown, does not appear), then used by id."""

    __slots__ = ("ids", "prefix")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.ids: list[int | None] = [None] * len(METRICS)

    def id(self, i: int) -> int:
        mid = self.ids[i]
        if mid is None:
            t, name = METRICS[i]
            mid = self.ids[i] = hc.define_metric(t, self.prefix + name)
        return mid


_ATTEMPT_FAILURE = len(METRICS) - 1
_SERIES: dict[tuple[str, str, str, str], _Series] = {}
MAX_SERIES = 10_000  # label sets cached per VM


def _series(o: Observation) -> _Series:
    consumer = _CONSUMERS.get(o.consumer) or consumer_label(o.consumer)  # the common case without a call
    key = (o.route, o.cluster, o.served, consumer)
    s = _SERIES.get(key)
    if s is None:
        if len(_SERIES) >= MAX_SERIES:
            _SERIES.clear()
        s = _SERIES[key] = _Series(series_prefix(o.route, o.cluster, o.served, consumer))
    return s


def record_metrics(o: Observation) -> None:
    s = _series(o)
    ids, mid = s.ids, s.id
    inc, rec = hc.raw_calls.proxy_increment_metric, hc.raw_calls.proxy_record_metric  # direct: ~10 calls per request
    inc(ids[0] or mid(0), 1)
    inc(ids[1] or mid(1), 1)
    d = ids[2] or mid(2)  # defined even when 0 ms: Envoy refuses an increment of 0
    if o.duration_ms:
        inc(d, o.duration_ms)
    u = o.usage
    if u is not None:
        for i, n in ((3, u.input), (4, u.output), (5, u.total)):
            m = ids[i] or mid(i)
            if n:
                inc(m, n)
    if o.cancelled:
        inc(ids[13] or mid(13), 1)
    elif o.status >= 500 or o.status == 0 or not o.complete:
        inc(ids[6] or mid(6), 1)
    if o.estimated:
        inc(ids[12] or mid(12), 1)
        if u is not None and u.total:
            inc(ids[14] or mid(14), u.total)
    if o.fallback_from:
        inc(ids[7] or mid(7), 1)
    if o.ttft_ms is not None:
        m = ids[8] or mid(8)
        if o.ttft_ms:
            inc(m, o.ttft_ms)
        inc(ids[9] or mid(9), 1)
        rec(ids[10] or mid(10), o.ttft_ms)
    rec(ids[11] or mid(11), o.duration_ms)


def attempts_json(tried: list[list[Any]]) -> str:
    """The attempts of a request for the AI log: [["model", status], ...] (status 0: no response)."""
    return "[" + ",".join(f"[{_str(m)},{s}]" for m, s in tried) + "]"


def record_failed_attempts(o: Observation, failed: list[tuple[str, str]]) -> None:
    """``attempt_failure_total`` for each (model, cluster) whose attempt failed before another was made."""
    for model, cluster in failed:
        s = _series(Observation(o.model, model, o.route, cluster, o.consumer, 0, o.sse, None, None, 0, ""))
        hc.raw_calls.proxy_increment_metric(s.ids[_ATTEMPT_FAILURE] or s.id(_ATTEMPT_FAILURE), 1)


def publish(o: Observation, metrics: bool, to_filter_state: bool, to_log: bool) -> None:
    """Record the AI log (filter state ``wasm.ai_log`` for access logs; plugin log) and metrics."""
    if to_filter_state or to_log:
        line = o.log_record()
        if to_filter_state:
            hc.set_property("ai_log", line)
        if to_log:
            hc.log(LogLevel.INFO, "ai_log " + line)
    if metrics:
        record_metrics(o)


DOWNSTREAM_TERMINATION = 0x4000  # Envoy's legacy response flag DC (downstream connection termination)


def client_cancelled() -> bool:
    """On a stream that ended early: whether the client left (Envoy's DC flag, or a downstream reason in the
    response code details), rather than the upstream or Envoy failing. Seen in Envoy 1.40: a client closing a
    stream gives flags 0x4000 and ``downstream_remote_disconnect``; an upstream cutting its chunked stream gives
    0x800000 and ``upstream_reset_after_response_started{protocol_error}``."""
    return bool(response_flags() & DOWNSTREAM_TERMINATION) or response_code_details().startswith("downstream_")
