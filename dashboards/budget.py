"""Which variant leads at which epoch budget, and from which budget on the ranking holds.

A study ranks its variants after the last epoch; with val AP stored at every evaluated epoch the same
ranking can be read at every shorter budget. A ranking that changed until the last epoch could change
again with a longer budget; one that has held for many epochs is less likely to.

    curves = epoch_curves(sd.epochs, sd.variants)     # variant, epoch, mean, lo, hi, half, n
    ranks = rankings(epoch_means(curves), sd.variants)   # {epoch: variants, best first}
    stable_from(ranks)                                 # first epoch whose ordering holds to the last, or None

Epochs are the 1-based ``epoch`` column of ``StudyData.epochs`` (the reported ``epoch`` metric + 1), which
counts on across a multi-phase trial's phases, as ``dashboards.convergence`` reads it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import pandas as pd

from dashboards.stats import t_interval

CURVE_COLUMNS = ["variant", "epoch", "mean", "lo", "hi", "half", "n"]


def epoch_curves(epochs: pd.DataFrame, variants: Sequence[str], name: str = "val/AP") -> pd.DataFrame:
    """Per variant and epoch, the mean of ``name`` over the seeds evaluated at that epoch with its 95% t interval.

    Args:
        epochs: long rows ``variant, seed, epoch, name, value`` (``StudyData.epochs``).
        variants: the variants to keep, in the order the rows come out.
    Returns:
        one row per (variant, epoch) in ``CURVE_COLUMNS``, ``epoch`` an int; empty when nothing is stored.
    """
    if epochs.empty or "name" not in epochs:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    df = epochs[(epochs["name"] == name) & epochs["variant"].isin(list(variants))]
    rows = [{"variant": v, "epoch": int(e), **t_interval(g["value"].tolist())}
            for v in variants for e, g in df[df["variant"] == v].groupby("epoch")]
    return pd.DataFrame(rows, columns=CURVE_COLUMNS)


def epoch_means(curves: pd.DataFrame) -> Dict[int, Dict[str, float]]:
    """``{epoch: {variant: mean}}`` from ``epoch_curves`` (epochs ascending)."""
    out: Dict[int, Dict[str, float]] = {}
    for r in curves.sort_values("epoch", kind="mergesort").itertuples(index=False):
        out.setdefault(int(r.epoch), {})[r.variant] = float(r.mean)
    return out


def rankings(means: Mapping[int, Mapping[str, float]], variants: Sequence[str]) -> Dict[int, List[str]]:
    """The variants best first by mean at each epoch budget where every one of them has a finite mean.

    An epoch some variant lacks (it trained fewer epochs, or was not evaluated then) is left out: a ranking
    without it would not compare the same variants. Equal means keep ``variants``' order.
    """
    out: Dict[int, List[str]] = {}
    for epoch in sorted(means):
        m = means[epoch]
        if all(v in m and math.isfinite(m[v]) for v in variants):
            out[epoch] = sorted(variants, key=lambda v: -m[v])  # sorted is stable: ties keep the sweep order
    return out


def stable_from(ranks: Mapping[int, Sequence[str]]) -> Optional[int]:
    """The first epoch from which the ranking is the same at that epoch and every later one up to the last.

    None ("never stable within the run") when the last ordering first appears at the last epoch, or there
    is only one epoch: an ordering seen once has not held for any longer budget.
    """
    epochs = sorted(ranks)
    if len(epochs) < 2:
        return None
    last = list(ranks[epochs[-1]])
    first = epochs[-1]
    for epoch in reversed(epochs[:-1]):
        if list(ranks[epoch]) != last:
            break
        first = epoch
    return first if first != epochs[-1] else None
