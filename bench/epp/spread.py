"""The spread over seeds: epp against least-request per workload, one row per run.

Run from the repo root after runs with other seeds (``run.py --seed N --systems lr,epp --out /tmp/seedN``):
``.venv/bin/python bench/epp/spread.py bench/results/endpoint-picker.json /tmp/seed11.json ...``. Appends the
table to the first run's ``.md`` and the rows to its ``.json`` (``other_seeds``), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.epp import report  # noqa: E402

MARK = "## Spread over seeds"


def rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    by = {(p["workload"], p["system"], p["rate"]): p for p in r["phases"]}
    out = []
    for c in report.comparisons(r["phases"]):
        if c["baseline"] != report.BASELINE:
            continue
        lr, epp = by[(c["workload"], "lr", c["rate"])], by[(c["workload"], "epp", c["rate"])]
        out.append({**c, "seed": r["environment"]["seed"], "lr_p90": lr["ttft_p90"], "epp_p90": epp["ttft_p90"],
                    "lr_p99": lr["ttft_p99"], "epp_p99": epp["ttft_p99"],
                    "lr_hits": lr.get("prefix_cache_hit_rate"), "epp_hits": epp.get("prefix_cache_hit_rate"),
                    "load_avg": r["environment"]["load_avg_at_start"]})
    return out


def markdown(all_rows: list[dict[str, Any]]) -> str:
    lines = [MARK, "", "epp against lr, the same workloads with other seeds (the first row of each workload is the "
             "run above); a ratio from one run each.", "",
             "| workload | seed | lr p90 ms | epp p90 ms | p90 | lr p99 ms | epp p99 ms | p99 | done req/s epp / lr "
             "| prefix hits lr / epp | result |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for w in dict.fromkeys(x["workload"] for x in all_rows):
        for x in (x for x in all_rows if x["workload"] == w):
            hits = (f"{report.pct(x['lr_hits'])} / {report.pct(x['epp_hits'])}"
                    if x["lr_hits"] is not None else "—")
            lines.append(f"| {w} | {x['seed']} | {report.ms(x['lr_p90'])} | {report.ms(x['epp_p90'])} "
                         f"| {report._change(x['p90_ratio'])} | {report.ms(x['lr_p99'])} | {report.ms(x['epp_p99'])} "
                         f"| {report._change(x['p99_ratio'])} | {report.pct(x['req_ratio'])} | {hits} "
                         f"| {'PASS' if x['pass'] else 'FAIL'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", help="the committed run's JSON (its .md gets the table)")
    ap.add_argument("others", nargs="*", help="JSON of runs with other seeds")
    args = ap.parse_args()
    first = Path(args.first)
    runs = [json.loads(first.read_text())] + [json.loads(Path(p).read_text()) for p in args.others]
    all_rows = [x for r in runs for x in rows(r)]
    table = markdown(all_rows)
    doc = runs[0]
    doc["other_seeds"] = [x for r in runs[1:] for x in rows(r)]
    first.write_text(json.dumps(doc, indent=2) + "\n")
    md = first.with_suffix(".md")
    text = md.read_text().split(MARK)[0].rstrip() + "\n\n"
    md.write_text(text + table)
    print(table)


if __name__ == "__main__":
    main()
