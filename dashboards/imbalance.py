"""The imbalance question: does focal loss gain more over balanced CE where foreground is rarer?

    levels = imbalance_levels(sd)     # None unless the variants differ by dataset and by loss
    levels["levels"][0]["fg_fraction"], levels["levels"][0]["gain"]["mean"], levels["trend"]["lo"], ...

Focal loss exists for extreme foreground-background imbalance: about 100k anchors
per image, nearly all easy negatives (Lin et al., arXiv 1708.02002, sec. 1 and 3).
A study that trains the same losses on datasets of different sparsity answers
whether its gain over alpha-balanced cross entropy grows with the imbalance.

A *level* is one dataset identity (the trial's ``dataset.digest``, the dataset
part of its hash); a *loss* one ``loss`` section (name and params). Per level:
the mean over its trials of the epoch-mean ``train/fg_fraction`` (positives /
(positives + negatives) of the assigner) and ``train/anchors_per_image`` that
dense detectors log; each loss's AP with a t interval over seeds; and the gain
of the most focused loss (the largest focal gamma; ``ce`` and ``balanced_ce``
count as gamma 0) over the least focused, paired by seed. The trend is the
per-seed gain at the most imbalanced level (lowest foreground fraction) minus
the gain at the least imbalanced one, with its paired t interval over seeds.
"""
from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional

from dashboards.data import StudyData, flatten
from dashboards.data import dataset_identity
from dashboards.stats import paired_difference, significant, t_interval

FIGURES = ("train/fg_fraction", "train/anchors_per_image")


def loss_identity(config: Dict[str, Any]) -> str:
    return json.dumps(config.get("loss"), sort_keys=True, default=str)


def loss_label(config: Dict[str, Any]) -> str:
    """"focal (gamma=2, alpha=0.25)": a loss section as the pages name it."""
    loss = config.get("loss") or {}
    params = ", ".join(f"{k}={v}" for k, v in sorted((loss.get("params") or {}).items()))
    return f"{loss.get('name')} ({params})" if params else str(loss.get("name"))


def focus(config: Dict[str, Any]) -> float:
    """How strongly a loss down-weights easy examples: focal's gamma (its default 2 when unset),
    0 for cross entropy and balanced cross entropy (focal with gamma 0 is balanced CE)."""
    loss = config.get("loss") or {}
    return float((loss.get("params") or {}).get("gamma", 2.0)) if loss.get("name") == "focal" else 0.0


def _level_name(config: Dict[str, Any], ident: str, levels: List[Dict[str, Any]]) -> str:
    """A level by the dataset settings that differ between levels (``image_size=384``); ``levels``:
    one trial config per level."""
    mine = flatten(config.get("dataset") or {})
    others = [flatten(c.get("dataset") or {}) for c in levels]
    keys = sorted(k for k in mine if k != "digest" and any(o.get(k) != mine[k] for o in others))
    # A generated set's paths follow from its settings: name it by the settings alone.
    keys = [k for k in keys if k.startswith("synthetic.")] or keys
    return ",".join(f"{k.rsplit('.', 1)[-1]}={mine[k]}" for k in keys) or ident[:8]


def _trial_figure(sd: StudyData, name: str) -> Dict[str, float]:
    """trial_key -> the mean over its epochs of one logged training figure."""
    ep = sd.epochs[sd.epochs["name"] == name]
    return ep.groupby("trial_key")["value"].mean().to_dict() if not ep.empty else {}


def imbalance_levels(sd: StudyData, metric: str = "AP") -> Optional[Dict[str, Any]]:
    """The per-level figures, losses and gains, and the trend across levels; None unless the finished
    variants span more than one dataset and more than one loss."""
    if metric not in sd.final:
        return None
    value = {k: v for k, v in zip(sd.final["trial_key"], sd.final[metric]) if math.isfinite(v)}
    trials = [t for t in sd.finished if t["trial_key"] in value]
    datasets = {dataset_identity(t["config"]) for t in trials}
    losses = {loss_identity(t["config"]): t["config"] for t in trials}
    if len(datasets) < 2 or len(losses) < 2:
        return None
    figures = {name: _trial_figure(sd, name) for name in FIGURES}
    by_focus = sorted(losses, key=lambda k: (focus(losses[k]), k))
    base, focal = by_focus[0], by_focus[-1]
    labels = {k: loss_label(c) for k, c in losses.items()}
    firsts = {}
    for t in trials:
        firsts.setdefault(dataset_identity(t["config"]), t["config"])
    levels = []
    for ident in sorted(datasets):
        mine = [t for t in trials if dataset_identity(t["config"]) == ident]
        per_loss = {k: {t["seed"]: value[t["trial_key"]] for t in mine if loss_identity(t["config"]) == k}
                    for k in by_focus}
        level = {"name": _level_name(firsts[ident], ident, list(firsts.values())),
                 "trials": len(mine),
                 **{name.split("/")[-1]: _mean([figures[name].get(t["trial_key"]) for t in mine])
                    for name in FIGURES},
                 "losses": {k: t_interval(list(per_loss[k].values())) for k in by_focus},
                 "per_seed": per_loss}
        level["gain"] = paired_difference(per_loss[focal], per_loss[base])
        levels.append(level)
    # Most imbalanced first: the lowest foreground fraction (unknown fractions last, in name order).
    levels.sort(key=lambda lv: (not math.isfinite(lv["fg_fraction"]),
                                lv["fg_fraction"] if math.isfinite(lv["fg_fraction"]) else 0.0, lv["name"]))
    return {"metric": metric, "base": base, "focal": focal, "labels": labels, "loss_order": by_focus,
            "levels": levels, "trend": _trend(levels, base, focal)}


def _trend(levels: List[Dict[str, Any]], base: str, focal: str) -> Optional[Dict[str, Any]]:
    """Gain at the most imbalanced level minus gain at the least, seed by seed (a paired t interval);
    None where the levels' foreground fractions are unknown or equal."""
    known = [lv for lv in levels if math.isfinite(lv["fg_fraction"])]
    if len(known) < 2 or known[0]["fg_fraction"] == known[-1]["fg_fraction"]:
        return None
    more, less = known[0], known[-1]

    def gains(lv):
        a, b = lv["per_seed"][focal], lv["per_seed"][base]
        return {s: a[s] - b[s] for s in set(a) & set(b)}

    out = paired_difference(gains(more), gains(less))
    out.update(more=more["name"], less=less["name"], significant=significant(out["lo"], out["hi"]))
    return out


def _mean(values) -> float:
    x = [v for v in values if v is not None and math.isfinite(v)]
    return sum(x) / len(x) if x else math.nan
