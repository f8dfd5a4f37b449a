"""Load-aware endpoint picking in a real Envoy 1.40 (2 workers) in front of three mock vLLM pods (README
"Load-aware endpoint picking"): the shipped ai-gateway-endpoint-picker.yaml with a fast-scraping plugin config.

The plugin scrapes each pod's /metrics through the ORIGINAL_DST cluster (one worker per round), sets
``x-gateway-destination-endpoint`` and Envoy connects to that pod. Pods are made busy by requests sent straight
to them with the mock's delay fault (the mock's KV usage is running / 8; the picker here counts a pod saturated
at 2 running requests or 2 waiting).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.client import wait_for
from e2e.picker_stack import BATCH, DEST, MODEL, PICKER, PickerStack, running_picker_stack


@pytest.fixture(scope="module")
def ps(ai_gateway_wasm: Path) -> Iterator[PickerStack]:
    with running_picker_stack() as stack:
        assert wait_for(lambda: sorted(stack.gauges("up").values()) == [1, 1, 1], 10), stack.envoy.log_tail()
        yield stack


PROMPTS = itertools.count()


def served_by(ps: PickerStack, n: int, model: str = MODEL, headers: dict[str, str] | None = None) -> Counter[str]:
    """Send ``n`` chats (each its own prompt: an identical one would follow its pod, prefix affinity); each must
    succeed; returns how many each pod served (by the header Envoy forwarded)."""
    alive = [p for p in ps.pods if p.proc.poll() is None]
    before = {p.addr: p.count("/v1/chat/completions") for p in alive}
    for _ in range(n):
        i = next(PROMPTS)
        r = ps.chat(model, headers, [{"role": "user", "content": f"hello there {i}"}])
        assert r.status == 200, (r.status, r.body)
        assert r.json()["choices"][0]["message"]["content"] == f"[{MODEL}] echo: hello there {i}"
    got: Counter[str] = Counter()
    for p in alive:
        got[p.addr] = p.count("/v1/chat/completions") - before[p.addr]
        new = p.chats()[-got[p.addr]:] if got[p.addr] else []
        assert all(rec["headers"][DEST] == p.addr for rec in new)  # Envoy connected to the pod the header names
    assert sum(got.values()) == n
    return got


def test_header_routes_each_request_to_the_picked_pod(ps: PickerStack) -> None:
    picks = ps.prometheus("endpoint_metric_picks")
    got = served_by(ps, 12)
    assert len(got) == 3 and min(got.values()) >= 2  # idle pods: requests spread over all three
    after = ps.prometheus("endpoint_metric_picks")
    for p in ps.pods:  # picker_endpoint_metric_picks{ai_pool, ai_endpoint} counts exactly those
        key = (("ai_endpoint", p.addr), ("ai_pool", "llama-pool"))
        assert after[key] - picks.get(key, 0) == got[p.addr]


def test_client_cannot_choose_the_pod(ps: PickerStack) -> None:
    admin = f"127.0.0.1:{ps.envoy.admin_port}"  # would answer 404 for /v1/chat/completions
    got = served_by(ps, 3, headers={DEST: admin})
    assert admin not in got


def test_picks_follow_load(ps: PickerStack) -> None:
    busy = ps.pods[0]
    busy.occupy(1, 2000)  # one running request: loaded, not saturated
    try:
        assert wait_for(lambda: ps.gauges("running").get(busy.addr) == 1, 3)
        got = served_by(ps, 10)
        assert got[busy.addr] == 0 and len(+got) == 2
    finally:
        busy.release()


def test_sheddable_gets_429_critical_is_served(ps: PickerStack) -> None:
    for p in ps.pods:
        p.occupy(2, 2000)  # kv 2/8 = 0.25: every pod saturated
    try:
        assert wait_for(lambda: sorted(ps.gauges("running").values()) == [2, 2, 2], 3)
        shed = ps.prometheus("metric_shed").get((("ai_pool", "llama-pool"),), 0)
        r = ps.chat(BATCH)  # the model's criticality: sheddable
        assert r.status == 429 and r.json()["error"]["code"] == "endpoints_saturated"
        assert r.headers["content-type"] == "application/json"
        r = ps.chat(MODEL, {"x-gateway-criticality": "sheddable"})
        assert r.status == 429
        assert ps.prometheus("metric_shed")[(("ai_pool", "llama-pool"),)] == shed + 2
        got = served_by(ps, 2, headers={"x-gateway-criticality": "critical"})  # least loaded: still served
        assert sum(got.values()) == 2
    finally:
        for p in ps.pods:
            p.release()
    assert wait_for(lambda: ps.chat(BATCH).status == 200, 3)  # load gone: sheddable requests served again


def test_dead_pod_excluded_then_back(ps: PickerStack) -> None:
    dead = ps.pods[2]
    dead.stop()
    try:
        assert wait_for(lambda: ps.gauges("up").get(dead.addr) == 0, 3)
        got = served_by(ps, 9)  # no 503: the dead pod is never picked
        assert dead.addr not in got
    finally:
        dead.restart()
    assert wait_for(lambda: ps.gauges("up").get(dead.addr) == 1, 5)
    assert served_by(ps, 9)[dead.addr] >= 1


def test_one_worker_scrapes_each_round(ps: PickerStack) -> None:
    pod = ps.pods[1]
    before, t0 = pod.count("/metrics"), time.monotonic()
    time.sleep(1.0)
    scrapes = pod.count("/metrics") - before
    rounds = (time.monotonic() - t0) * 1000 / PICKER["scrape_interval_ms"]
    # Envoy runs 3 VMs here (2 workers + main): without the lease each would scrape every round.
    assert 0.5 * rounds <= scrapes <= 1.5 * rounds, (scrapes, rounds)
