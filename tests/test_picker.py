"""Load-aware endpoint picking (models[].endpoint_picker): scraping, score, staleness, criticality — on both
hosts; the lease across two VMs sharing shared data."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ai_gateway.config import parse
from proxywasm import ConfigError, LogLevel
from proxywasm.testing import SharedState

from .gateway import chat, chat_body, error_of
from .picker import DEST, EPS, config, page, picked, scrape_round, scrapes, send

A, B, C = EPS
IDLE = page(0, 0)


def start(make_host, cfg=None, shared=None, **picker):
    h = make_host("ai_gateway", shared)
    assert h.start(cfg or config(**picker)), h.logs
    return h


def test_scrape_callouts_address_each_endpoint_through_the_pool_cluster(make_host) -> None:
    h = start(make_host)
    assert h.state.tick_period_ms == 200
    h.tick()
    calls = scrapes(h)
    assert sorted(calls) == sorted(EPS)
    for ep, call in calls.items():
        assert call.cluster == "pool" and call.header(":authority") == ep and call.header(":method") == "GET"
        assert call.timeout_ms == 500
    h.tick()  # same instant: the round is not due again
    assert len(h.callouts) == 3


def test_scrape_cluster_option(make_host) -> None:
    h = start(make_host, scrape_cluster="metrics-dst", metrics_path="/stats/metrics")
    h.tick()
    assert {(c.cluster, c.header(":path")) for c in h.callouts} == {("metrics-dst", "/stats/metrics")}


def test_picks_follow_load(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: page(0, 6), B: page(0, 1), C: page(0, 3)})
    s = send(h)
    assert s.request_header(DEST) == B and s.request_header("x-ai-upstream") == "pool"
    scrape_round(h, {A: page(0, 0), B: page(0, 7), C: page(0, 3)})
    assert picked(h) == A


def test_waiting_queue_outweighs_running(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: page(3, 4, kv=0.5), B: page(0, 4, kv=0.5), C: page(1, 4, kv=0.5)})
    assert picked(h) == B


def test_local_picks_spread_requests_between_scrapes(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: IDLE, B: IDLE, C: IDLE})
    first = [picked(h) for _ in range(6)]
    assert Counter(first) == {A: 2, B: 2, C: 2}  # equal load: this worker's own picks break the tie
    scrape_round(h, {A: page(0, 2), B: IDLE, C: IDLE})
    nxt = [picked(h) for _ in range(4)]
    assert A not in nxt[:2] and Counter(nxt)[A] <= 1


def test_metrics_gauges_and_pick_counters(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: page(2, 5, kv=0.25), B: IDLE, C: 500})
    picked(h)
    g = "picker.pool.endpoint.{}.metric.{}"
    assert h.metric(g.format(A, "waiting")) == 2 and h.metric(g.format(A, "running")) == 5
    assert h.metric(g.format(A, "kv_cache_percent")) == 25 and h.metric(g.format(A, "up")) == 1
    assert h.metric(g.format(C, "up")) == 0 and h.metric(g.format(C, "scrape_failures")) == 1
    assert h.metric(g.format(B, "picks")) == 1


def test_client_cannot_choose_the_pod(make_host) -> None:
    h = start(make_host, cfg={"models": [*config()["models"], {"name": "plain", "cluster": "c2"}]})
    scrape_round(h, {A: page(0, 5), B: IDLE, C: page(0, 5)})
    assert picked(h, headers={DEST: "169.254.169.254:80"}) == B
    s = send(h, "plain", headers={DEST: "169.254.169.254:80"})
    assert s.request_header(DEST) is None  # stripped even for models without a picker


# -- staleness and unreachable endpoints --

def test_no_data_yet_round_robin(make_host) -> None:
    h = start(make_host)
    assert Counter(picked(h) for _ in range(6)) == {A: 2, B: 2, C: 2}
    assert h.metric("picker.pool.metric.unscored") == 6


def test_unreachable_endpoint_excluded_while_others_fresh(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: None, B: page(0, 7), C: 503})  # A refused, C answers 503: both down
    assert {picked(h) for _ in range(5)} == {B}
    assert any("endpoint 10.0.0.1:8000 of pool is down" in m for m in h.logs_at(LogLevel.WARN))
    scrape_round(h, {A: IDLE, B: page(0, 7), C: b"<html>not metrics</html>"})
    assert {picked(h) for _ in range(3)} == {A}
    assert any("back" in m for m in h.logs_at(LogLevel.INFO))


def test_stale_endpoints_used_only_without_fresh_ones(make_host) -> None:
    h = start(make_host, stale_after_ms=1000)
    scrape_round(h, {A: page(0, 7), B: IDLE, C: IDLE})
    # B and C stop answering (their scrapes hang): A stays fresh, B and C go stale.
    for _ in range(6):
        scrape_round(h, {A: page(0, 7)})
    assert {picked(h) for _ in range(4)} == {A}  # busy but fresh beats idle but unknown
    h.advance(2000)  # no scrape at all for a while: everything is stale: least request by this worker's own count
    assert Counter(picked(h) for _ in range(6)) == {B: 3, C: 3}  # A has this worker's 4 requests still


def test_all_down_round_robin_over_all(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: None, B: None, C: 404})
    assert Counter(picked(h) for _ in range(3)) == {A: 1, B: 1, C: 1}


def test_slow_scrape_is_not_piled_up_and_late_answer_ignored(make_host) -> None:
    h = start(make_host)
    h.tick()
    slow = scrapes(h)[A]
    scrape_round(h, {B: IDLE, C: IDLE})
    assert A not in scrapes(h) or scrapes(h)[A].token == slow.token  # no second callout to A while one hangs
    scrape_round(h, {B: IDLE, C: IDLE})
    h.respond_callout(slow.token, 200, body=page(0, 0))
    rec = json.loads(h.shared_data("aigw.picker.pool"))
    assert rec[A][2] == 1


# -- criticality --

def saturated(h, **kw) -> None:
    scrape_round(h, {A: page(6, 8, kv=1.0), B: page(0, 8, kv=0.9), C: page(5, 3, kv=0.4)}, **kw)


def test_sheddable_gets_429_when_all_saturated(make_host) -> None:
    h = start(make_host)
    saturated(h)
    s = send(h, headers={"x-gateway-criticality": "Sheddable"})
    assert s.local_response.status == 429
    err = error_of(s)
    assert err["code"] == "endpoints_saturated" and "llama" in err["message"]
    assert ("retry-after", "1") in s.local_response.headers  # the next scrape (200 ms) may free a pod: 1 s
    assert h.metric("picker.pool.metric.shed") == 1
    # standard (the default) and critical: the best score, load + queue + 4 kv/0.8: A 14+6+5, B 8+0+4.5, C 8+5+2
    assert picked(h) == B
    assert picked(h, headers={"x-gateway-criticality": "critical"}) == B
    assert [picked(h) for _ in range(2)] == [B, C]  # each pick adds to B's load: -14.5, then -15.5 < C's -15


def test_sheddable_served_while_one_endpoint_has_room(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: page(6, 8, kv=1.0), B: page(0, 2), C: 503})
    assert picked(h, headers={"x-gateway-criticality": "sheddable"}) == B


def test_nothing_shed_without_fresh_data(make_host) -> None:
    h = start(make_host)
    assert picked(h, headers={"x-gateway-criticality": "sheddable"}) in EPS


def test_model_criticality_and_header_override(make_host) -> None:
    cfg = config(models=[{"name": "llama-batch", "cluster": "pool", "upstream_model": "llama",
                          "criticality": "sheddable"}])
    cfg["models"][0]["criticality"] = "critical"
    h = start(make_host, cfg=cfg)
    saturated(h)
    assert send(h, "llama-batch").local_response.status == 429
    assert send(h, "llama", headers={"x-gateway-criticality": "sheddable"}).local_response.status == 429
    assert picked(h, "llama-batch", headers={"x-gateway-criticality": "critical"}) in (B, C)
    assert picked(h, "llama", headers={"x-gateway-criticality": "bogus"}) in (B, C)  # unknown value: the model's


def test_criticality_header_can_be_disabled(make_host) -> None:
    h = start(make_host, criticality_header="")
    saturated(h)
    assert picked(h, headers={"x-gateway-criticality": "sheddable"}) in (B, C)


# -- affinity --

def test_lora_adapter_affinity(make_host) -> None:
    cfg = config(models=[{"name": "sql-lora", "cluster": "pool"}])
    h = start(make_host, cfg=cfg)
    scrape_round(h, {A: page(0, 2, lora=(2, "sql-lora", "")), B: page(0, 2, lora=(2, "a1,a2", "")),
                     C: page(0, 2, lora=(2, "", "sql-lora"))})
    assert picked(h, "sql-lora") == A  # equal load: loaded there (1.0) > free slot (0.8) > full (0)
    assert picked(h, "llama") != A  # the base model ignores adapters, and A has this worker's pick
    scrape_round(h, {A: page(3, 6, lora=(2, "sql-lora", "")), B: page(0, 2, lora=(2, "a1,a2", "")),
                     C: page(0, 2, lora=(2, "", "sql-lora"))})
    assert picked(h, "sql-lora") == C  # much busier: load wins; C has a free slot (and the adapter queued)


def test_lora_free_slot_beats_full_endpoint(make_host) -> None:
    h = start(make_host, cfg=config(models=[{"name": "new-lora", "cluster": "pool"}]))
    scrape_round(h, {A: page(0, 1, lora=(1, "x", "")), B: page(0, 1, lora=(1, "", "")), C: 503})
    assert picked(h, "new-lora") == B


def test_adapter_affinity_from_this_workers_own_requests(make_host) -> None:
    cfg = config(models=[{"name": "sql-lora", "cluster": "pool"}, {"name": "code-lora", "cluster": "pool"}])
    h = start(make_host, cfg=cfg)
    empty = page(0, 0, lora=(1, "", ""))  # one adapter slot each; nothing running as of the scrape
    scrape_round(h, {A: empty, B: empty, C: empty})
    sql = send(h, "sql-lora")
    home = sql.request_header(DEST)
    assert picked(h, "code-lora") != home  # its one slot is taken by sql-lora (known before any scrape shows it)
    assert picked(h, "sql-lora") == home  # joins its batch
    sql.complete()


def test_in_flight_counts_end_with_the_stream(make_host) -> None:
    h = start(make_host)  # no scrape yet: least request by this worker's own count
    streams = [send(h) for _ in range(3)]
    assert {s.request_header(DEST) for s in streams} == {A, B, C}
    streams[1].complete()
    assert picked(h) == streams[1].request_header(DEST)


def test_pod_speed_from_its_time_per_output_token(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: page(0, 2, itl=(1.0, 100)), B: page(0, 2, itl=(0.5, 100)), C: page(0, 2, itl=(0.5, 100))})
    scrape_round(h, {A: page(0, 2, itl=(4.0, 200)), B: page(0, 2, itl=(2.0, 200)), C: page(0, 2, itl=(2.0, 200))})
    # A decodes at 30 ms a token, B and C at 15 ms: A's 2 requests weigh as 4
    assert {picked(h) for _ in range(4)} == {B, C}
    g = "picker.pool.endpoint.{}.metric.itl_ms"
    assert h.metric(g.format(A)) == 30 and h.metric(g.format(B)) == 15


def _turns(session: int, n: int, system: str = "you are a helpful assistant") -> list[dict[str, str]]:
    """A conversation's messages after ``n`` turns: a system prompt, then its own history."""
    msgs = [{"role": "system", "content": f"{system} " * 60}]
    for t in range(n):
        msgs += [{"role": "user", "content": f"session {session} question {t} " * 40},
                 {"role": "assistant", "content": f"session {session} answer {t} " * 40}]
    return [*msgs, {"role": "user", "content": f"session {session} question {n}"}]


def test_prefix_affinity_follows_each_conversation_to_where_it_went(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: IDLE, B: IDLE, C: IDLE})
    home = {}
    for sess in range(6):
        s = send(h, messages=_turns(sess, 0, f"system prompt {sess}"))
        home[sess] = s.request_header(DEST)
        s.complete()
    assert Counter(home.values()) == {A: 2, B: 2, C: 2}  # new conversations: no affinity, ties rotate
    for turn in (1, 2):
        for sess in range(6):
            s = send(h, messages=_turns(sess, turn, f"system prompt {sess}"))
            assert s.request_header(DEST) == home[sess]  # the pod holding its history, not the rotation's
            s.complete()
    # a shared system prompt: every new conversation could go to its first pod, yet load spreads them
    firsts = [send(h, messages=_turns(sess, 0)).request_header(DEST) for sess in range(10, 22)]
    assert Counter(firsts) == {A: 4, B: 4, C: 4}


def test_prefix_affinity_lets_go_of_a_loaded_pod(make_host) -> None:
    h = start(make_host)
    scrape_round(h, {A: IDLE, B: IDLE, C: IDLE})
    s = send(h, messages=_turns(1, 1))
    home = s.request_header(DEST)
    s.complete()
    # the same prompt again and again, each still running when the next comes: a full match is worth
    # `weights.prefix` (8) requests of load, so the pod takes eight; then another pod gets it (and holds it too)
    where = [send(h, messages=_turns(1, 2)).request_header(DEST) for _ in range(14)]
    assert where[:8] == [home] * 8 and where.count(home) <= 9 and len(set(where)) >= 2
    scrape_round(h, {ep: page(5, 8) if ep == home else IDLE for ep in EPS})  # saturated: never
    assert picked(h, messages=_turns(1, 2)) != home


def test_prefix_credit_and_the_bounded_table() -> None:
    from ai_gateway.picker.affinity import FULL_CREDIT_CHARS, Prefixes, chain
    from proxywasm.jsonscan import JsonObject

    long = {"messages": [{"role": "system", "content": "s" * 3000}, {"role": "user", "content": "u" * 3000}]}
    raw = json.dumps(long["messages"], separators=(",", ":"))  # a built document: re-encoded
    hashes, ends = chain(long, "llama", 100_000)
    second = raw.find('"role"', 5)
    assert ends == [second, len(raw)] and chain(long, "llama", 4000)[1] == [second, 4000]  # cut at prefix_chars
    assert chain(long, "other", 100_000)[0] != hashes  # another model: other hashes
    assert chain({"prompt": "p" * 2500}, "m", 100_000)[1] == [1024, 2048, 2502]  # plain prompts: blocks of JSON text
    assert chain({"messages": []}, "m", 100) is None
    lazy = JsonObject.parse(json.dumps({"model": "llama", "messages": long["messages"]}).encode())
    sent = json.dumps(long["messages"])  # as the client spaced it: read as sent, not decoded
    assert chain(lazy, "llama", 100_000)[1] == [sent.find('"role"', 5), len(sent)]
    p = Prefixes(entries=3)
    p.sent(hashes[:1], 0b01)  # A got the system prompt only
    p.sent(hashes, 0b10)  # B the whole prompt
    assert p.credit(hashes, ends) == {0b10: 1.0, 0b01: second / len(raw)}
    assert p.credit(hashes, ends, everyone=0b11) == {0b10: 1.0, 0b01: second / len(raw)}
    short = chain({"messages": [{"role": "user", "content": "hi"}]}, "llama", 100)
    p.sent(short[0], 0b100)
    assert p.credit(*short) == {0b100: short[1][-1] / FULL_CREDIT_CHARS}  # a short prompt: little to save
    p.sent([111], 0b1)  # four hashes in a table of three: the least recently used one goes
    assert p.credit(hashes, ends) == {0b10: 1.0}


# -- fallback and mirror to a picker model --

def test_fallback_to_picker_model_gets_an_endpoint(make_host) -> None:
    cfg = config(models=[{"name": "front", "cluster": "front", "fallback": {"models": ["llama"]},
                          "mirror": {"model": "llama", "percent": 100}}])
    h = start(make_host, cfg=cfg)
    scrape_round(h, {A: page(0, 5), B: page(0, 4), C: IDLE})
    s = chat(h, chat_body("front"))
    (mirror,) = h.callouts
    assert mirror.cluster == "pool" and mirror.header(DEST) == C and mirror.header("x-ai-mirror-of") == "front"
    s.send_response_headers({":status": "503"})
    fb = h.callouts[-1]
    assert fb.cluster == "pool" and fb.header(DEST) in EPS and json.loads(fb.body)["model"] == "llama"
    h.respond_callout(fb.token, 200, body=b'{"choices": []}')
    assert s.local_response.status == 200


def test_mirror_is_sheddable_and_primary_header_not_copied(make_host) -> None:
    cfg = config(models=[{"name": "shadow", "cluster": "pool2", "endpoint_picker": {"endpoints": ["10.1.0.1:80"]}}])
    cfg["models"][0]["mirror"] = {"model": "shadow", "percent": 100}
    h = start(make_host, cfg=cfg)
    h.tick()
    for call in scrapes(h).values():
        h.respond_callout(call.token, 200, body=page(9, 8, kv=1.0) if call.cluster == "pool2" else IDLE)
    s = chat(h, chat_body("llama"))
    assert s.request_header(DEST) in EPS
    assert not [c for c in h.callouts if c.header("x-ai-mirror-of")]  # shadow pool saturated: no copy


# -- workers --

def test_one_worker_scrapes_per_round_and_all_use_it(make_host) -> None:
    shared = SharedState()
    a, b = start(make_host, shared=shared), start(make_host, shared=shared)
    scrape_round(a, {A: page(0, 7), B: IDLE, C: page(0, 7)})
    b.tick()  # the same round: b sees a's lease
    assert not b.callouts
    b.advance(60)  # b re-reads the shared record at most every 50 ms
    assert picked(b) == B
    for _ in range(3):  # a keeps the lease while it keeps ticking
        a.advance(200)
        a.tick()
        b.tick()
        assert len(a.callouts) == 3 and not b.callouts
        for call in a.callouts:
            a.respond_callout(call.token, 200, body=IDLE)
    b.advance(1000)  # a stops ticking: b takes over once a's lease ends
    b.tick()
    assert len(scrapes(b)) == 3


# -- configuration --

@pytest.mark.parametrize(("picker", "message"), [
    ({}, "models[0].endpoint_picker.endpoints: required"),
    ({"endpoints": []}, "models[0].endpoint_picker.endpoints: must list 1 to 64"),
    ({"endpoints": ["pod-1:8000"]}, "models[0].endpoint_picker.endpoints[0]: must be \"ip:port\""),
    ({"endpoints": ["10.0.0.1"]}, "models[0].endpoint_picker.endpoints[0]"),
    ({"endpoints": ["10.0.0.1:99999"]}, "models[0].endpoint_picker.endpoints[0]"),
    ({"endpoints": ["10.0.0.1:80", "10.0.0.1:80"]}, "endpoints: has duplicates"),
    ({"endpoints": ["10.0.0.1:80"], "metrics_path": "metrics"}, "endpoint_picker.metrics_path: must start with /"),
    ({"endpoints": ["10.0.0.1:80"], "scrape_interval_ms": 1000, "stale_after_ms": 1500},
     "endpoint_picker.stale_after_ms: must be at least twice scrape_interval_ms"),
    ({"endpoints": ["10.0.0.1:80"], "scrape_timeout_ms": 5000}, "endpoint_picker.scrape_timeout_ms: must not exceed"),
    ({"endpoints": ["10.0.0.1:80"], "kv_cache_threshold": 1.5}, "endpoint_picker.kv_cache_threshold: must be between"),
    ({"endpoints": ["10.0.0.1:80"], "weights": {"queue": -1}}, "endpoint_picker.weights.queue: must be between"),
    ({"endpoints": ["10.0.0.1:80"], "weights": {"latency": 1}}, "endpoint_picker.weights.latency: unknown field"),
    ({"endpoints": ["10.0.0.1:80"], "header": "bad header"}, "endpoint_picker.header: must be an HTTP header name"),
    ({"endpoints": ["10.0.0.1:80"], "shed": True}, "endpoint_picker.shed: unknown field"),
])
def test_picker_config_errors(picker: dict, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({"models": [{"name": "m", "cluster": "c", "endpoint_picker": picker}]})
    assert message in str(e.value)


def test_criticality_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\].criticality: must be one of critical, standard, sheddable"):
        parse(config() | {"models": [{**config()["models"][0], "criticality": "low"}]})
    with pytest.raises(ConfigError, match=r"models\[1\].criticality: only applies to models on an endpoint_picker"):
        parse(config(models=[{"name": "x", "cluster": "other", "criticality": "sheddable"}]))
    with pytest.raises(ConfigError, match=r"models\[1\].endpoint_picker: differs from models\[0\].endpoint_picker"):
        parse(config(models=[{"name": "x", "cluster": "pool", "endpoint_picker": {"endpoints": EPS[:1]}}]))


def test_ipv6_endpoints_accepted_and_models_share_one_pool() -> None:
    cfg = parse(config(endpoints=["[fd00::1]:8000", "10.0.0.9:80"],
                       models=[{"name": "adapter", "cluster": "pool"}]))
    assert list(cfg.pickers) == ["pool"] and cfg.picker_headers == (DEST,)


def test_config_start_failure_names_the_field(make_host) -> None:
    h = make_host("ai_gateway")
    assert not h.start(config(endpoints=["10.0.0.1:0"]))
    assert any("models[0].endpoint_picker.endpoints[0]" in m for m in h.logs_at(LogLevel.CRITICAL))
