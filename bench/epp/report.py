"""The markdown report of bench/epp/run.py: per workload, every system's numbers and the picker against each
baseline, judged against Envoy's least-request."""

from __future__ import annotations

from typing import Any

TARGET_TTFT_CUT = 0.30  # chat and lora: epp's p90 TTFT at least 30% below least-request's
WIN_WORKLOADS = ("chat", "lora")  # where the picker must win; elsewhere it must be no worse
THROUGHPUT_SLACK = 0.03  # throughput at least 97% of least-request's
LAG_WARN = 0.10  # mock engine steps running late by more than 10% of their planned time: the host, not the model
BASELINE = "lr"


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.0%}"


def _lag(p: dict[str, Any]) -> float:
    eng = p["engine"]
    return eng["lag_ms"] / eng["step_ms"] if eng["step_ms"] else 0.0


def _row(p: dict[str, Any]) -> str:
    return (f"| {p['rate']:g} | {p['system']} | {p['offered_req_per_s']:.2f} | {p['req_per_s']:.2f} "
            f"| {p['output_tokens_per_s']:,.0f} | {ms(p['ttft_p50'])} | {ms(p['ttft_p90'])} | {ms(p['ttft_p99'])} "
            f"| {ms(p['e2e_p90'])} | {p['errors']} / {p['requests']} | {pct(p.get('prefix_cache_hit_rate'))} "
            f"| {p['engine']['lora_loads']} | {envoy_ms(p):.2f} | {p['cpu_busy_cores']:.2f} | {_lag(p):.1%} "
            f"| {' / '.join(str(c) for c in p['requests_per_server'])} |")


def envoy_ms(p: dict[str, Any]) -> float:
    """Envoy's CPU (plugin included) per answered request, ms: its busy cores over the phase / done req/s."""
    return 1000 * p["cpu_cores_by_process"].get("envoy", 0.0) / p["req_per_s"] if p["req_per_s"] else 0.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def compare(epp: dict[str, Any], base: dict[str, Any], workload: str) -> dict[str, Any]:
    """epp against one baseline phase (same workload and rate); ``pass`` judged against least-request only."""
    p90, p99 = _ratio(epp["ttft_p90"], base["ttft_p90"]), _ratio(epp["ttft_p99"], base["ttft_p99"])
    req, tok = _ratio(epp["req_per_s"], base["req_per_s"]), _ratio(epp["output_tokens_per_s"],
                                                                    base["output_tokens_per_s"])
    tput_ok = req is not None and tok is not None and min(req, tok) >= 1 - THROUGHPUT_SLACK
    if workload in WIN_WORKLOADS:
        ok = p90 is not None and p90 <= 1 - TARGET_TTFT_CUT and tput_ok
        goal = f"p90 ≥ {TARGET_TTFT_CUT:.0%} lower, throughput ≥ {1 - THROUGHPUT_SLACK:.0%}"
    else:
        ok = p90 is not None and p99 is not None and p90 <= 1 and p99 <= 1 and tput_ok
        goal = f"p90 and p99 no worse, throughput ≥ {1 - THROUGHPUT_SLACK:.0%}"
    return {"workload": workload, "rate": epp["rate"], "baseline": base["system"], "p90_ratio": p90,
            "p99_ratio": p99, "req_ratio": req, "tokens_ratio": tok, "goal": goal,
            "pass": (ok and epp["errors"] == 0) if base["system"] == BASELINE else None}


def comparisons(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by = {(p.get("workload", "mixed"), p["system"], p["rate"]): p for p in phases}
    out = []
    for (w, system, rate), epp in by.items():
        if system != "epp":
            continue
        for base in ("lr", "rr", "random"):
            if (w, base, rate) in by:
                out.append(compare(epp, by[(w, base, rate)], w))
    return out


def _change(r: float | None) -> str:
    return "—" if r is None else f"{r - 1:+.0%}"


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    parts = [
        "# Load-aware endpoint picking vs Envoy's load balancers (bench/epp/run.py)", "",
        f"{env['when']} · Envoy {env['envoy']} (--concurrency 1) · {env['cpus']} CPUs, load avg "
        f"{env['load_avg_at_start']:.2f} at start · {env['servers']} mock vLLM processes · seed {env['seed']} · "
        f"{env['warmup']:g} s warm-up + {env['seconds']:g} s measured per phase · one run.", "",
        *[f"- {s}: {d}" for s, d in r["systems"].items()],
        *([f"- module: {env['module']['path']} (sha256 {env['module']['sha256'][:12]}…)"
           + (f", built from the working tree at {env['git_head']}"
              + (" with uncommitted changes under plugin/" if env["plugin_changes_uncommitted"] else "")
              if env["module"]["default"] else "")]
          if env.get("module") else []),
        *([f"- {env['note']}"] if env.get("note") else []),
        *[f"- {s}: not measured ({why})" for s, why in r["unavailable"].items()], "",
        "Each mock (e2e/mock_vllm/engine.py): " + ", ".join(f"{k} {v}" for k, v in env["engine"].items())
        + ", changed per workload as noted. Workloads: bench/epp/load.py; every system gets the same request list. "
        "TTFT = first content byte, from the scheduled arrival; done req/s and out tok/s = answers completed inside "
        "the measured window; prefix hits = the mocks' `vllm:prefix_cache_hits_total` / "
        "`vllm:prefix_cache_queries_total` over the phase (tokens).", "",
    ]
    cmp = comparisons(r["phases"])
    workloads = list(dict.fromkeys(p.get("workload", "mixed") for p in r["phases"]))
    if cmp:
        parts += ["## Verdict: the picker (epp) against least-request (lr)", "",
                  "| workload | rate req/s | p90 TTFT | p99 TTFT | done req/s | out tok/s | target | result |",
                  "|---|---:|---:|---:|---:|---:|---|---|"]
        for c in cmp:
            if c["baseline"] == BASELINE:
                parts.append(f"| {c['workload']} | {c['rate']:g} | {_change(c['p90_ratio'])} | {_change(c['p99_ratio'])} "
                             f"| {pct(c['req_ratio'])} | {pct(c['tokens_ratio'])} | {c['goal']} "
                             f"| {'PASS' if c['pass'] else 'FAIL'} |")
        parts.append("")
    for w in workloads:
        ph = sorted((p for p in r["phases"] if p.get("workload", "mixed") == w),
                    key=lambda p: (p["rate"], list(r["systems"]).index(p["system"])))
        engines = env.get("engines", {}).get(w)
        differs = [] if not engines else [
            f"pod {i}: " + ", ".join(f"{k} {v}" for k, v in e.items() if env["engine"].get(k) != v)
            for i, e in enumerate(engines) if any(env["engine"].get(k) != v for k, v in e.items())]
        mix = env.get("workload", {}).get(w, {})
        m = next(iter(mix.values()), None) if mix else None
        parts += [f"## {w}", ""]
        if m:
            parts += [f"{m['requests']} measured requests, mean prompt {m['mean_prompt_words']:,.0f} words, mean "
                      f"max_tokens {m['mean_max_tokens']:.0f}, {m['lora_share']:.0%} naming an adapter"
                      + (f"; {'; '.join(differs)}" if differs else "") + ".", ""]
        parts += ["| rate req/s | system | offered req/s | done req/s | out tok/s | TTFT p50 ms | TTFT p90 ms "
                  "| TTFT p99 ms | e2e p90 ms | errors | prefix hits | LoRA loads | Envoy CPU ms / req | CPU busy "
                  "| mock step lag | requests per server |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
                  *[_row(p) for p in ph], ""]
        rows = [c for c in cmp if c["workload"] == w]
        if rows:
            parts += ["epp against each baseline: " + "; ".join(
                f"{c['baseline']} @ {c['rate']:g}: p90 {_change(c['p90_ratio'])}, p99 {_change(c['p99_ratio'])}, "
                f"done req/s {pct(c['req_ratio'])}" for c in rows) + ".", ""]
            kinds = {p["system"]: p["ttft_p90_by_kind"] for p in ph if p["rate"] == rows[-1]["rate"]}
            if "epp" in kinds and BASELINE in kinds:
                parts += ["p90 TTFT by request kind, epp vs lr: " + ", ".join(
                    f"{k} {_change(_ratio(v, kinds[BASELINE].get(k)))}" for k, v in kinds["epp"].items()) + ".", ""]
    notes = []
    for p in r["phases"]:
        lag = _lag(p)
        tag = f"{p.get('workload', 'mixed')} / {p['system']} @ {p['rate']:g}"
        if lag > LAG_WARN:
            notes.append(f"- {tag}: mock engine steps ran {lag:.0%} late (max {p['engine']['max_lag_ms']:.0f} ms): "
                         "the host CPU, not the model, shaped part of it")
        if p["error_samples"]:
            notes.append(f"- {tag} errors: {'; '.join(p['error_samples'])}")
    parts += ["CPU busy = the whole machine's busy cores during the phase (other agents' work included). Mock step "
              "lag = how late the mocks' engine steps ran beyond their planned duration, as a share of it (small: "
              "the mocks, not the CPU, set the pace).", ""]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    return "\n".join(parts)
