"""The markdown report of bench/epp/run.py."""

from __future__ import annotations

from typing import Any

TARGET_TTFT_CUT = 0.30  # epp's p90 TTFT at least 30% below rr's at the highest rate
THROUGHPUT_SLACK = 0.03  # "no throughput loss": epp >= rr within 3% (both complete the same request list)
LAG_WARN = 0.10  # mock steps running late by more than 10% of their planned time: the host, not the model


def ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:,.0f}"


def _row(p: dict[str, Any]) -> str:
    eng = p["engine"]
    lag = eng["lag_ms"] / eng["step_ms"] if eng["step_ms"] else 0.0
    return (f"| {p['rate']:g} | {p['system']} | {p['offered_req_per_s']:.2f} | {p['req_per_s']:.2f} | {p['output_tokens_per_s']:,.0f} "
            f"| {ms(p['ttft_p50'])} | {ms(p['ttft_p90'])} | {ms(p['ttft_p99'])} | {ms(p['e2e_p90'])} "
            f"| {p['errors']} / {p['requests']} | {p['cpu_busy_cores']:.2f} "
            f"| {sum(p['cpu_cores_by_process'].values()):.2f} | {lag:.1%} "
            f"| {' / '.join(str(c) for c in p['requests_per_server'])} |")


def targets(phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rate where both systems ran: the p90 TTFT cut and throughput ratio, judged at the highest rate."""
    by = {(p["system"], p["rate"]): p for p in phases}
    rates = sorted({p["rate"] for p in phases if ("rr", p["rate"]) in by and ("epp", p["rate"]) in by})
    out = []
    for rate in rates:
        rr, epp = by[("rr", rate)], by[("epp", rate)]
        cut = 1 - epp["ttft_p90"] / rr["ttft_p90"] if rr["ttft_p90"] and epp["ttft_p90"] is not None else None
        req = epp["req_per_s"] / rr["req_per_s"] if rr["req_per_s"] else None
        tok = epp["output_tokens_per_s"] / rr["output_tokens_per_s"] if rr["output_tokens_per_s"] else None
        judged = rate == rates[-1]
        ok_cut = cut is not None and cut >= TARGET_TTFT_CUT
        ok_tput = req is not None and tok is not None and min(req, tok) >= 1 - THROUGHPUT_SLACK
        no_errors = epp["errors"] == 0
        out.append({"rate": rate, "ttft_p90_cut": cut, "req_ratio": req, "tokens_ratio": tok, "judged": judged,
                    "pass": (ok_cut and ok_tput and no_errors) if judged else None,
                    "ttft_p90_cut_by_kind": {k: (1 - v / rr["ttft_p90_by_kind"][k])
                                             if v is not None and rr["ttft_p90_by_kind"].get(k) else None
                                             for k, v in epp["ttft_p90_by_kind"].items()}})
    return out


def _mix(env: dict[str, Any]) -> str:
    mix = next(iter(env["workload"].values()))
    kinds = ", ".join(f"{k} {c['share']:.1%} ({c['user_words'][0]}-{c['user_words'][1]} prompt words, "
                      f"{c['max_tokens'][0]}-{c['max_tokens'][1]} tokens out)" for k, c in mix["classes"].items())
    return f"{kinds}; {mix['lora_share']:.0%} of requests name a LoRA adapter (measured share)"


def markdown(r: dict[str, Any]) -> str:
    env = r["environment"]
    eng = env["engine"]
    parts = [
        "# Load-aware endpoint picking vs round robin (bench/epp/run.py)", "",
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
        "Each mock (e2e/mock_vllm/engine.py): " + ", ".join(f"{k} {v}" for k, v in eng.items())
        + f"; adapters {', '.join(env['adapters'])}. Workload (bench/epp/load.py): open-loop Poisson arrivals, "
        "streaming chat, `ignore_eos` (output = max_tokens); " + _mix(env) + ". Both systems get the same request "
        "list per rate. TTFT = first content byte, from the scheduled arrival; offered = measured arrivals per "
        "second; done req/s and out tok/s = answers completed inside the measured window (all of an answer's "
        "tokens count when it completes).", "",
        "| rate req/s | system | offered req/s | done req/s | out tok/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | e2e p90 ms "
        "| errors | CPU busy (cores) | bench CPU (cores) | mock step lag | requests per server |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *[_row(p) for p in sorted(r["phases"], key=lambda p: (p["rate"], p["system"] != "rr"))], "",
    ]
    t = targets(r["phases"])
    if t:
        parts += ["| rate req/s | p90 TTFT, epp vs rr | done req/s, epp / rr | out tok/s, epp / rr | target | result |",
                  "|---:|---:|---:|---:|---|---|"]
        for row in t:
            goal = (f"p90 TTFT ≥ {TARGET_TTFT_CUT:.0%} lower, throughput ≥ {1 - THROUGHPUT_SLACK:.0%} of rr, "
                    "no errors" if row["judged"] else "—")
            result = "—" if row["pass"] is None else ("PASS" if row["pass"] else "FAIL")
            cut = "—" if row["ttft_p90_cut"] is None else f"{-row['ttft_p90_cut']:+.0%}"
            parts.append(f"| {row['rate']:g} | {cut} | {row['req_ratio']:.1%} | {row['tokens_ratio']:.1%} "
                         f"| {goal} | {result} |")
        parts.append("")
        hi = t[-1]["ttft_p90_cut_by_kind"]
        parts += ["p90 TTFT change by request kind at the highest rate (epp vs rr): "
                  + ", ".join(f"{k} {-v:+.0%}" for k, v in hi.items() if v is not None) + ".", ""]
    notes = []
    for p in r["phases"]:
        eng_p = p["engine"]
        lag = eng_p["lag_ms"] / eng_p["step_ms"] if eng_p["step_ms"] else 0.0
        if lag > LAG_WARN:
            notes.append(f"- {p['system']} @ {p['rate']:g}: mock engine steps ran {lag:.0%} late "
                         f"(max {eng_p['max_lag_ms']:.0f} ms): the host CPU, not the model, shaped part of it")
        if p["error_samples"]:
            notes.append(f"- {p['system']} @ {p['rate']:g} errors: {'; '.join(p['error_samples'])}")
    parts += ["CPU busy = the whole machine's busy CPU during the phase (all processes, other agents' included; "
              f"{env['cpus']} cores); bench CPU = Envoy + the mocks + the load client. Mock step lag = how late the mocks' engine steps ran beyond their planned "
              "duration, summed over steps, as a share of the planned time (small: the mocks, not the CPU, set the "
              "pace). Busy cores by process are in the JSON.", ""]
    if notes:
        parts += ["Notes:", "", *notes, ""]
    return "\n".join(parts)
