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


def test_targets_judge_the_highest_rate() -> None:
    def phase(system: str, rate: float, p90: float, rps: float) -> dict:
        return {"system": system, "rate": rate, "ttft_p90": p90, "req_per_s": rps, "output_tokens_per_s": rps * 50,
                "errors": 0, "ttft_p90_by_kind": {"short": p90}}
    rows = report.targets([phase("rr", 5, 1.0, 5), phase("epp", 5, 0.9, 5),
                           phase("rr", 10, 2.0, 9.5), phase("epp", 10, 1.2, 9.4)])
    assert [r["judged"] for r in rows] == [False, True]
    assert rows[1]["ttft_p90_cut"] == pytest.approx(0.4) and rows[1]["pass"] is True
    rows = report.targets([phase("rr", 10, 2.0, 10), phase("epp", 10, 1.2, 9.0)])  # 10% less throughput
    assert rows[0]["pass"] is False


@pytest.mark.parametrize("system", ["rr", "epp"])
def test_generated_envoy_configs_validate(system: str, tmp_path: Path) -> None:
    if system == "epp" and not run.MODULE.exists():
        pytest.skip("dist/ai-gateway.wasm not built")
    cfg = tmp_path / "envoy.json"
    cfg.write_text(run.envoy_config(system, 19999, 18999, ["127.0.0.1:18201", "127.0.0.1:18202"]))
    done = validate(cfg)
    assert done.returncode == 0, done.stdout + done.stderr
