"""Floor 3: the least Python work the benchmark's requests need, written flat against the raw host calls.

What ai-gateway does for a W1/W2 request, without its configuration, rules, fallback, validation or error
handling: route by the body's ``model`` (the body is validated as JSON in C), a round-robin credential from a key
pool whose state is read from shared data, the token usage of the answer (JSON body, or the SSE stream's last
bytes), six counters and a histogram, and the AI log line in filter state. No plugin that does this work can
cost less; the real plugin's cost is compared with it in bench/results/ai-floor.md.
"""

import time

from proxywasm import Action, HttpContext, MetricType, RootContext, set_root_context
from proxywasm import hostcalls as hc

_h = hc.raw_calls
REQ_HEADERS, RESP_HEADERS, REQ_BODY, RESP_BODY = 0, 2, 0, 1
KEYS = [b"Bearer sk-bench-1", b"Bearer sk-bench-2", b"Bearer sk-bench-3"]
ROUTES = {"bench-model": (b"llm", b"bench-model")}
TAIL = 4096  # of an SSE stream, the bytes read: usage and [DONE] are in its last events
METRIC_IDS: list[int] = []
_rr = [0]


def _usage(data: bytes) -> tuple[int, int, int]:
    i = data.rfind(b'"usage"')
    if i < 0:
        return 0, 0, 0
    j = data.find(b"{", i)
    k = data.find(b"}", j)
    found = _h.json_index(data[j : k + 1]) if 0 <= j < k else None
    if not found:
        return 0, 0, 0
    idx = found[0]
    return tuple(idx[name][3] or 0 if name in idx else 0  # type: ignore[return-value]
                 for name in (b"prompt_tokens", b"completion_tokens", b"total_tokens"))


class Minimal(HttpContext):
    model: bytes = b""
    started = 0
    status = 0
    sse = False
    tail = b""

    def on_request_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        hd = _h.unpack_dict(_h.proxy_get_header_map_pairs(REQ_HEADERS)[1])
        if hd.get(":method") != "POST" or hd.get(":path") != "/v1/chat/completions":
            return Action.CONTINUE
        self.started = time.time_ns()
        return Action.PAUSE

    def on_request_body(self, body_size: int, end_of_stream: bool) -> Action:
        if not end_of_stream:
            return Action.PAUSE
        if not self.started:
            return Action.CONTINUE
        body = _h.proxy_get_buffer_bytes(REQ_BODY, 0, body_size)[1]
        vs, ve, _, _ = _h.json_index(body)[0][b"model"]
        cluster, self.model = ROUTES[body[vs + 1 : ve - 1].decode()]
        _h.proxy_replace_header_map_value(REQ_HEADERS, b"x-ai-upstream", cluster)
        _h.proxy_replace_header_map_value(REQ_HEADERS, b"x-ai-model", self.model)
        _h.proxy_get_shared_data(b"aigw.keys.bench-model")  # the pool's health, as every request reads it
        _rr[0] += 1
        _h.proxy_replace_header_map_value(REQ_HEADERS, b"authorization", KEYS[_rr[0] % len(KEYS)])
        _h.proxy_increment_metric(METRIC_IDS[0], 1)
        return Action.CONTINUE

    def on_response_headers(self, num_headers: int, end_of_stream: bool) -> Action:
        if not self.model:
            return Action.CONTINUE
        hd = _h.unpack_dict(_h.proxy_get_header_map_pairs(RESP_HEADERS)[1])
        self.status = int(hd.get(":status", "0"))
        self.sse = "text/event-stream" in hd.get("content-type", "")
        _h.proxy_replace_header_map_value(RESP_HEADERS, b"x-ai-served-model", self.model)
        return Action.CONTINUE

    def on_response_body(self, body_size: int, end_of_stream: bool) -> Action:
        if not self.model:
            return Action.CONTINUE
        if body_size:  # JSON: the whole body; SSE: only the last bytes
            start = max(0, body_size - TAIL) if self.sse else 0
            self.tail = (self.tail + _h.proxy_get_buffer_bytes(RESP_BODY, start, body_size - start)[1])[-TAIL:] \
                if self.sse else self.tail + _h.proxy_get_buffer_bytes(RESP_BODY, 0, body_size)[1]
        if not end_of_stream:
            return Action.CONTINUE
        inp, out, total = _usage(self.tail)
        ms = (time.time_ns() - self.started) // 1_000_000
        route = _h.proxy_get_property(b"route_name")[1] or b"none"
        inc, ids = _h.proxy_increment_metric, METRIC_IDS
        inc(ids[1], 1)
        if ms:
            inc(ids[2], ms)
        inc(ids[3], inp)
        inc(ids[4], out)
        inc(ids[5], total)
        _h.proxy_record_metric(ids[6], ms)
        line = (f'{{"model":"{self.model.decode()}","route":"{route.decode()}","status":{self.status},'
                f'"input_tokens":{inp},"output_tokens":{out},"total_tokens":{total},"duration_ms":{ms}}}')
        _h.proxy_set_property(b"ai_log", line.encode())
        return Action.CONTINUE


class MinimalRoot(RootContext):
    http_context = Minimal

    def on_config_loaded(self) -> None:
        for name in ("requests", "request_total", "llm_service_duration", "input_token", "output_token",
                     "total_token"):
            METRIC_IDS.append(hc.define_metric(MetricType.COUNTER, "floor." + name))
        METRIC_IDS.append(hc.define_metric(MetricType.HISTOGRAM, "floor.llm_latency"))


set_root_context(MinimalRoot)
