"""The end-of-study terminal table and the call into the report builder."""
from __future__ import annotations

import os
import statistics
from collections import defaultdict
from typing import Dict, List


def variant_table(store, study_name: str, trial_keys=None) -> List[dict]:
    """One row per variant: seeds, AP mean and sd, AP50, train img/s, latency p50."""
    per_trial: Dict[str, Dict[str, float]] = defaultdict(dict)
    variant_of: Dict[str, str] = {}
    for row in store.final_metrics(study_name):
        if trial_keys is not None and row["trial_key"] not in trial_keys:
            continue
        per_trial[row["trial_key"]][row["name"]] = row["value"]
        variant_of[row["trial_key"]] = row["variant"]
    groups: Dict[str, List[Dict[str, float]]] = defaultdict(list)
    for key, metrics in per_trial.items():
        groups[variant_of[key]].append(metrics)

    def mean(ms, name):
        vals = [m[name] for m in ms if name in m]
        return statistics.fmean(vals) if vals else float("nan")

    rows = []
    for variant, ms in groups.items():
        aps = [m["AP"] for m in ms if "AP" in m]
        rows.append({"variant": variant, "seeds": len(ms), "AP": mean(ms, "AP"),
                     "AP_sd": statistics.stdev(aps) if len(aps) > 1 else 0.0, "AP50": mean(ms, "AP50"),
                     "train_img_s": mean(ms, "speed/train_img_s"), "latency_ms": mean(ms, "speed/latency_ms_p50")})
    return sorted(rows, key=lambda r: -r["AP"] if r["AP"] == r["AP"] else 0.0)


def print_summary(store, study) -> None:
    rows = variant_table(store, study.name)
    if not rows:
        print("no finished trials yet")
        return
    header = f"{'variant':<28} {'seeds':>5} {'AP (mean +- sd)':>17} {'AP50':>6} {'train img/s':>11} {'latency ms':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        ap = f"{r['AP']:.3f} +- {r['AP_sd']:.3f}"
        print(f"{r['variant']:<28} {r['seeds']:>5} {ap:>17} {r['AP50']:>6.3f} {r['train_img_s']:>11.1f} {r['latency_ms']:>10.1f}")


def write_report(store, study) -> str:
    from dashboards import build_reports

    path = build_reports(store, study.name, study.output.reports_dir)
    print(f"report: {os.path.relpath(path)}")
    return path
