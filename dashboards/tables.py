"""Tables computed from the results store, shared by the terminal summary and the pages."""
from __future__ import annotations

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
