"""Upstream API-key pools of the AI gateway in a real Envoy with 2 workers (README "Upstream API-key pools").

Every pooled model has its own mock vLLM process that accepts only some keys. Key health lives in Envoy shared
data, so these tests prove, across both workers: the client's credential is replaced by pool keys, a key that draws
401/403/429 is retried transparently and then avoided until its cooldown (or Retry-After) ends, an all-out pool
answers 503 ``no_available_key``, keys never leak into logs or stats, and active probes (one worker per round) put
keys back early. A fresh pool's first pick on each worker is the key at index 1 (round robin starts at 1).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from e2e.keys_stack import CLIENT_SECRET, HELLO, KeyStack, Pool, bearer, fingerprint, running_key_stack, wait_until

LONG = 60_000
PROBE = {"path": "/v1/models", "interval_ms": 500}
POOLS = [
    Pool("plain", ("pl1", "pl2"), ("pl1", "pl2")),
    Pool("pool", ("good1", "bad", "good2"), ("good1", "good2"), {"cooldown_ms": LONG}),
    Pool("short", ("sgood1", "sbad", "sgood2"), ("sgood1", "sgood2"), {"cooldown_ms": 1500}),
    Pool("rl", ("rl1", "rl2"), ("rl1", "rl2"), {"cooldown_ms": LONG}),
    Pool("dead", ("dead1", "dead2", "dead3"), ("nobody",), {"cooldown_ms": LONG, "when_all_out": "fail"}),
    Pool("probe", ("pr1", "pr2"), ("pr1", "pr2"), {"cooldown_ms": LONG, "probe": PROBE}),
    Pool("probebad", ("pr3", "prbad"), ("pr3",), {"cooldown_ms": LONG, "probe": PROBE}),
    Pool("gauge", ("g1", "g2"), ("g1", "g2"), {"cooldown_ms": 300}),
]


@pytest.fixture(scope="module")
def ks(ai_gateway_wasm: Path) -> Iterator[KeyStack]:
    with running_key_stack(POOLS) as stack:
        yield stack


def client(ks: KeyStack) -> OpenAI:
    """The official client with the client's own credential; a new connection per request (both workers)."""
    return OpenAI(base_url=f"{ks.url}/v1", api_key=CLIENT_SECRET, max_retries=0, timeout=15,
                  default_headers={"connection": "close"})


def ok_chats(ks: KeyStack, model: str, n: int) -> None:
    """``n`` sequential chat completions on fresh connections; each must be a 200 chat completion."""
    for _ in range(n):
        r = ks.chat(model)
        assert r.status == 200, (r.status, r.body)
        assert r.json()["choices"][0]["message"]["content"] == f"[{model}] echo: hello there"


def records_with(ks: KeyStack, model: str, key: str, path: str = "/v1/chat/completions") -> list[dict]:
    return [r for r in ks.mocks[model].records(path) if bearer(r) == ks.keys[key]]


def test_upstream_sees_pool_keys_never_the_client_credential(ks: KeyStack) -> None:
    c = client(ks)
    for _ in range(3):
        assert c.chat.completions.create(model="plain", messages=HELLO).choices[0].message.content
    chunks = list(c.chat.completions.create(model="plain", messages=HELLO, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "[plain] echo: hello there"
    assert c.completions.create(model="plain", prompt="hi there").choices[0].text == "[plain] echo: hi there"

    mock = ks.mocks["plain"]
    recs = mock.records("/v1/chat/completions") + mock.records("/v1/completions")
    assert len(recs) == 5
    assert {ks.name_of(bearer(r)) for r in recs} == {"pl1", "pl2"}  # rotation: both keys, nothing else
    assert all(r["api_key"] in (ks.keys["pl1"], ks.keys["pl2"]) for r in recs)
    assert not [r for r in recs if any(CLIENT_SECRET in v for v in r["headers"].values())]


def test_bad_key_retried_transparently_and_avoided_by_both_workers(ks: KeyStack) -> None:
    # The pool's very first request draws `bad` (index 1): a stream, retried with another key behind the client.
    stream = client(ks).chat.completions.create(model="pool", messages=HELLO, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "[pool] echo: hello there"
    first = ks.used("pool")
    assert first[0] == "bad" and first[1] in ("good1", "good2") and len(first) == 2, first

    # The ejection was in shared data before the retry went out: no later request, on any worker, may use `bad`.
    before = ks.worker_connections()
    ok_chats(ks, "pool", 24)
    after = ks.worker_connections()
    assert len(after) == 2 and all(after[w] > before.get(w, 0) for w in after), (before, after)
    used = ks.used("pool")
    assert len(used) == 26 and used.count("bad") == 1, used
    assert {"good1", "good2"} <= set(used[2:])


def test_ejected_key_returns_after_cooldown_and_is_ejected_again(ks: KeyStack) -> None:
    r = ks.chat("short")
    assert r.status == 200, r.body
    used = ks.used("short")
    assert used[0] == "sbad" and len(used) == 2, used
    ejected_at = records_with(ks, "short", "sbad")[0]["time"]  # the ejection came after this
    ok_chats(ks, "short", 6)
    in_cooldown = [ks.name_of(bearer(r)) for r in ks.mocks["short"].records()[1:] if r["time"] < ejected_at + 1.45]
    assert len(in_cooldown) >= 4 and "sbad" not in in_cooldown, in_cooldown

    time.sleep(max(0.0, ejected_at + 1.7 - time.time()))  # past the cooldown: sbad is in rotation again
    for _ in range(12):  # each worker reaches sbad's round-robin turn within 3 picks
        ok_chats(ks, "short", 1)
        if len(records_with(ks, "short", "sbad")) == 2:
            break
    again = records_with(ks, "short", "sbad")
    assert len(again) == 2 and again[1]["api_key"] is None, "sbad was not tried again after its cooldown"
    ok_chats(ks, "short", 10)  # ...and was ejected again at once
    assert len(records_with(ks, "short", "sbad")) == 2
    assert ks.key_metrics()[("ejections", "short", fingerprint(ks.keys["sbad"]))] == 2


def test_429_retry_after_takes_the_key_out_for_that_long(ks: KeyStack) -> None:
    ks.mocks["rl"].reset()
    ks.mocks["rl"].fault(status=429, retry_after=1, fail_count=1)
    r = ks.chat("rl")
    assert r.status == 200, (r.status, r.body)  # retried with the other key
    recs = ks.mocks["rl"].records()
    assert len(recs) == 2 and bearer(recs[0]) != bearer(recs[1]), recs
    limited, limited_at = ks.name_of(bearer(recs[0])), recs[0]["time"]
    ok_chats(ks, "rl", 4)
    in_retry_after = [ks.name_of(bearer(r)) for r in ks.mocks["rl"].records()[1:] if r["time"] < limited_at + 0.95]
    assert len(in_retry_after) >= 3 and limited not in in_retry_after, in_retry_after  # out while it runs

    time.sleep(max(0.0, limited_at + 1.3 - time.time()))  # Retry-After (1 s) wins over cooldown_ms (60 s)
    for _ in range(6):
        ok_chats(ks, "rl", 1)
        if ks.used("rl").count(limited) == 2:
            break
    assert ks.used("rl").count(limited) == 2, f"{limited} not back ~1 s after its 429: {ks.used('rl')}"
    assert records_with(ks, "rl", limited)[-1]["api_key"] == ks.keys[limited]  # and it worked


def test_all_keys_out_answers_503_no_available_key(ks: KeyStack) -> None:
    replies = [ks.chat("dead") for _ in range(4)]
    # 1st: dead key, retry with another dead key -> the upstream 401; 2nd: the last key (no retry left) -> 401.
    assert [r.status for r in replies] == [401, 401, 503, 503], [(r.status, r.body) for r in replies]
    used = ks.used("dead")
    assert sorted(used) == ["dead1", "dead2", "dead3"], used  # each tried once, none after all were out

    body = replies[-1].json()
    assert body["error"]["code"] == "no_available_key" and body["error"]["type"] == "server_error"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(openai.InternalServerError) as exc:
        client(ks).chat.completions.create(model="dead", messages=HELLO)
    assert exc.value.status_code == 503 and exc.value.code == "no_available_key"
    assert len(ks.used("dead")) == 3
    for r in replies:
        text = r.body.decode() + json.dumps(r.headers)
        assert not [k for k in ks.keys.values() if k in text] and "Bearer" not in text, text


def test_probe_puts_a_key_back_before_its_cooldown(ks: KeyStack) -> None:
    mock = ks.mocks["probe"]
    mock.reset()
    mock.fault(status=401, fail_count=1)  # the key is fine: only this one answer fails
    assert ks.chat("probe").status == 200
    recs = mock.records()
    assert len(recs) == 2, recs
    out, ejected_at = ks.name_of(bearer(recs[0])), recs[0]["time"]

    probes = wait_until(lambda: records_with(ks, "probe", out, "/v1/models"), timeout=3.0)
    assert probes and probes[0]["method"] == "GET", f"no probe of {out} within 3 s"
    assert probes[0]["time"] - ejected_at < 1.0  # next tick (500 ms), not the 60 s cooldown
    assert probes[0]["api_key"] == ks.keys[out]
    time.sleep(0.2)
    for _ in range(6):
        ok_chats(ks, "probe", 1)
        if ks.used("probe").count(out) == 2:
            break
    assert ks.used("probe").count(out) == 2, f"{out} not used again after its probe: {ks.used('probe')}"
    assert len(records_with(ks, "probe", out, "/v1/models")) == 1  # back in: no more probes, one per round


def test_probes_run_on_one_worker_per_round(ks: KeyStack) -> None:
    for _ in range(4):
        ok_chats(ks, "probebad", 1)  # the first pick of each worker is prbad: ejected, retried with pr3
    assert ks.used("probebad").count("prbad") == 1
    ejected_at = records_with(ks, "probebad", "prbad")[0]["time"]
    time.sleep(max(0.0, ejected_at + 3.1 - time.time()))
    times = [r["time"] for r in records_with(ks, "probebad", "prbad", "/v1/models") if r["time"] > ejected_at]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # ~6 rounds of 500 ms in 3 s; two workers probing in the same round would double that and give tiny gaps.
    assert 4 <= len(times) <= 8 and min(gaps) > 0.3, (len(times), gaps)
    assert ks.used("probebad").count("prbad") == 1  # probes fail with 401: the key stays out


def test_keys_never_in_logs_or_stats_but_per_key_metrics_are(ks: KeyStack) -> None:
    ok_chats(ks, "pool", 2)  # ejects `bad` if test 2 did not run
    time.sleep(0.3)  # the log files are flushed every 100 ms
    env = ks.envoy
    texts = {"log": env.log_text(), "stats": env.admin("/stats"), "stats json": env.admin("/stats?format=json"),
             "prometheus": env.prometheus(), "ai log": ks.access_log.read_text()}
    for where, text in texts.items():
        leaked = [name for name, secret in ks.keys.items() if secret in text]
        assert not leaked and CLIENT_SECRET not in text, f"keys {leaked} in {where}"
    fp_bad = fingerprint(ks.keys["bad"])
    assert f"key {fp_bad} of pool out of rotation" in texts["log"]

    prom = texts["prometheus"]
    assert f'keypool_key_metric_ejections{{ai_key_pool="pool",ai_key="{fp_bad}"}} 1' in prom
    metrics = ks.key_metrics()
    fps = {fingerprint(secret): name for name, secret in ks.keys.items()}
    assert metrics and all(fp in fps and pool in {p.model for p in POOLS} for _, pool, fp in metrics)
    assert metrics[("available", "pool", fp_bad)] == 0
    assert metrics[("requests", "pool", fingerprint(ks.keys["good1"]))] >= 1
    assert "wasmcustom.keypool.pool.key." in texts["stats"]  # the tags come from these names


def test_available_gauge_is_1_again_when_a_key_returns_after_its_cooldown(ks: KeyStack) -> None:
    ks.mocks["gauge"].fault(status=401, fail_count=1)
    assert ks.chat("gauge").status == 200
    out = ks.used("gauge")[0]
    fp = fingerprint(ks.keys[out])
    assert ks.key_metrics()[("available", "gauge", fp)] == 0  # ejected
    time.sleep(0.5)  # past the 300 ms cooldown
    for _ in range(6):
        ok_chats(ks, "gauge", 1)
        if ks.used("gauge").count(out) == 2:
            break
    assert ks.used("gauge").count(out) == 2  # back in rotation, serving 200s
    assert ks.key_metrics()[("available", "gauge", fp)] == 1
