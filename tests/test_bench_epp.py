"""bench/epp: the seeded workload, the statistics and the generated Envoy configs (no load is run here)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from bench.epp import load, report, run
from e2e.envoy import validate


def test_same_seed_same_requests_for_both_systems() -> None:
    a, b = load.workload(10, 5, 1, seed=3), load.workload(10, 5, 1, seed=3)
    assert [(s.at, s.body) for s in a] == [(s.at, s.body) for s in b]
    assert [s.body for s in load.workload(10, 5, 1, seed=4)] != [s.body for s in a]
    assert all(s.measured == (s.at >= 1) for s in a) and all(s.at < 6 for s in a)
    doc = json.loads(a[0].body)
    assert doc["stream"] and doc["ignore_eos"] and doc["stream_options"] == {"include_usage": True}
    assert doc["model"] in (load.BASE_MODEL, *load.ADAPTERS)
    slow, fast = load.workload(5, 10, 0, seed=3), load.workload(10, 10, 0, seed=3)  # same requests, faster
    assert (len(slow), len(fast)) == (50, 100) and [s.body for s in slow] == [s.body for s in fast[:50]]
    assert [2 * s.at for s in fast[:50]] == pytest.approx([s.at for s in slow], rel=0.2)
    assert all(a.at < b.at for a, b in itertools.pairwise(fast))


def test_mix_has_the_documented_shares() -> None:
    mix = load.mix(load.workload(40, 60, 0, seed=1))  # ~2400 requests
    assert mix["kinds"]["short"] == pytest.approx(0.75, abs=0.04)
    assert mix["lora_share"] == pytest.approx(load.LORA_SHARE, abs=0.04)


def test_quantile_and_summary() -> None:
    assert load.quantile([], 0.9) is None
    assert load.quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert load.quantile(list(map(float, range(1, 11))), 0.9) == 9.0
    specs = [load.Spec(t, "llama", "short", 1, 4, t >= 1) for t in (0.5, 1.5, 2.5)]
    res = [load.Result(s, 200, 0.1 * i, 0.5, 4, None, 10 + s.at + 0.5) for i, s in enumerate(specs)]
    res[2].error = "boom"
    out = load.summarize(res, t0=10, warmup=1, seconds=2)
    assert (out["requests"], out["ok"], out["errors"]) == (2, 1, 1)
    assert out["req_per_s"] == 1.0  # warm-up request (ends at 11.0) and the ok one (12.0) in [11, 13)
    assert out["ttft_p90"] == pytest.approx(0.1)


def test_verdict_against_least_request() -> None:
    def phase(workload: str, system: str, p90: float, p99: float, rps: float) -> dict:
        return {"workload": workload, "system": system, "rate": 12, "ttft_p90": p90, "ttft_p99": p99,
                "req_per_s": rps, "output_tokens_per_s": rps * 50, "errors": 0}
    rows = report.comparisons([phase("chat", "lr", 1.0, 2.0, 10), phase("chat", "rr", 2.0, 3.0, 9),
                               phase("chat", "epp", 0.6, 2.5, 9.8), phase("mixed", "lr", 1.0, 2.0, 10),
                               phase("mixed", "epp", 0.99, 2.1, 10)])
    by = {(r["workload"], r["baseline"]): r for r in rows}
    assert by[("chat", "lr")]["pass"] is True and by[("chat", "lr")]["p90_ratio"] == pytest.approx(0.6)
    assert by[("chat", "rr")]["pass"] is None  # judged against least-request only
    assert by[("mixed", "lr")]["pass"] is False  # p99 worse: the other workloads must be no worse at p90 and p99
    rows = report.comparisons([phase("lora", "lr", 1.0, 2.0, 10), phase("lora", "epp", 0.5, 1.0, 9.0)])
    assert rows[0]["pass"] is False  # 10% less throughput


def test_workloads_are_seeded_and_shaped() -> None:
    for name, make in load.WORKLOADS.items():
        a, b = make(10, 5, 2, 3), make(10, 5, 2, 3)
        assert [(s.at, s.body) for s in a] == [(s.at, s.body) for s in b], name
        assert all(0 <= s.at < 7 and s.measured == (s.at >= 2) for s in a), name
        assert all(x.at <= y.at for x, y in itertools.pairwise(a)), name
    burst, base = load.burst(10, 30, 0, 1), load.workload(10, 30, 0, 1)
    extra = len(burst) - len(base)
    assert extra == 10 * load.BURST_S and sum(10 <= s.at < 10 + load.BURST_S for s in burst) > 2 * load.BURST_S * 10 * 0.8
    chats = load.chat(12, 30, 5, 1)
    sessions: dict[str, list[list[dict]]] = {}
    for s in chats:
        msgs = json.loads(s.body)["messages"]
        sessions.setdefault(msgs[1]["content"], []).append(msgs)
    turns = [t for t in sessions.values() if len(t) >= 3]
    assert turns and len({m[0][0]["content"] for m in sessions.values()}) == load.CHAT_SYSTEMS
    for t in turns:  # each turn resends the previous turn's messages and the answer, then asks again
        for prev, nxt in itertools.pairwise(t):
            assert nxt[: len(prev)] == prev and nxt[len(prev)]["role"] == "assistant" and len(nxt) == len(prev) + 2
    lora = load.mix(load.lora(20, 60, 0, 1))
    assert lora["lora_share"] == pytest.approx(1 - load.LORA_BASE_SHARE, abs=0.05)
    models = [json.loads(s.body)["model"] for s in load.lora(20, 60, 0, 1)]
    assert models.count("lora-0") > 3 * models.count("lora-7")  # popular adapters more often


def test_pods_of_the_uneven_workload_differ() -> None:
    assert run.engine_of("mixed", 0) == run.engine_of("mixed", 3) == run.ENGINE
    assert run.engine_of("uneven", 0)["decode_ms_per_token"] == 2 * run.ENGINE["decode_ms_per_token"]
    assert run.engine_of("uneven", 1)["kv_capacity_tokens"] == run.ENGINE["kv_capacity_tokens"] // 2
    assert run.engine_of("uneven", 2) == run.ENGINE
    args = run.mock_args("lora", 0)
    assert "--prefix-cache" in args and "lora-7" in args and args[args.index("--lora-load-ms") + 1] == "150"


@pytest.mark.parametrize("system", ["rr", "lr", "random", "epp"])
def test_generated_envoy_configs_validate(system: str, tmp_path: Path) -> None:
    if system == "epp" and not run.MODULE.exists():
        pytest.skip("dist/ai-gateway.wasm not built")
    cfg = tmp_path / "envoy.json"
    cfg.write_text(run.envoy_config(system, 19999, 18999, ["127.0.0.1:18201", "127.0.0.1:18202"]))
    done = validate(cfg)
    assert done.returncode == 0, done.stdout + done.stderr
