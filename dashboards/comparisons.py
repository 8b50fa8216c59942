"""The accuracy page's comparisons of the variants (``dashboards.pages.build_accuracy``): every pair with its
gap, both tests and the probability of improvement; the ranking at every epoch budget and from which epoch it
holds; and, where the variants differ by dataset and loss, each dataset's foreground fraction and the gain of
the more focused loss (``dashboards.imbalance``).
"""
from __future__ import annotations

import math
from typing import Dict, List

import pandas as pd

from dashboards import budget, figures
from dashboards.context import PageContext
from dashboards.html import Figures, esc, interval, mean_ci, num, table
from dashboards.imbalance import imbalance_levels
from dashboards.stats import IMPROVEMENT_RESAMPLES


IMPROVEMENT_TEXT = (
    "P(X &gt; Y) is the probability of improvement (Agarwal et al., NeurIPS 2021) with the val images as its "
    "tasks: the chance that, on a val image, a seed of X scores a higher AP on that image alone than a seed of Y, "
    "ties counting half (per image the Mann-Whitney U over all pairs of their seeds divided by the number of "
    "pairs), averaged over the {tasks} val images with ground truth{left_out}; 95% percentile interval from "
    f"{IMPROVEMENT_RESAMPLES} bootstrap resamples of each variant's seeds within each image. 0.5: neither tends to "
    "beat the other; unlike the tests it says how often X wins, not by how much.")
# Without per-image records (no stored detections or val ground truth): the seeds' final AP, one task.
IMPROVEMENT_TEXT_VAL_SET = (
    "P(X &gt; Y) is the probability of improvement (Agarwal et al., NeurIPS 2021): the chance that a seed of X "
    "ends with a higher AP than a seed of Y, ties counting half (the Mann-Whitney U over all pairs of their "
    f"seeds divided by the number of pairs), with a 95% percentile interval from {IMPROVEMENT_RESAMPLES} "
    "bootstrap resamples of each variant's seeds; one task, this val set (no per-image AP: {why}). 0.5: neither "
    "tends to beat the other; unlike the tests it says how often X wins, not by how much.")


def improvement_text(pis: List[Dict], why: str) -> str:
    """The note on P(X > Y) for the tasks the pairs used (``Analysis.improvement``'s ``over``); ``why``: why
    there is no per-image AP, for the one-task version."""
    texts = []
    over_images = [pi for pi in pis if pi["over"] == "images"]
    if over_images:
        no_gt = over_images[0]["no_gt"]
        left_out = f" ({no_gt} without ground truth left out)" if no_gt else ""
        texts.append(IMPROVEMENT_TEXT.format(tasks=over_images[0]["tasks"], left_out=left_out))
    if len(over_images) < len(pis):
        texts.append(IMPROVEMENT_TEXT_VAL_SET.format(why=esc(why or "no per-image records")))
    return " ".join(texts)


def pairwise_section(ctx: PageContext) -> str:
    """Every pair of variants, X ranked above Y by mean AP: the gap with its interval, both tests' words
    (``Analysis.difference``) and the probability of improvement (``Analysis.improvement``: over the val images
    where the per-image records exist, else over the seeds' final AP)."""
    an = ctx.an
    order = an.ranking("AP")
    if len(order) < 2:
        return ""
    rows, methods, pis = [], set(), []
    for i, x in enumerate(order):
        for y in order[i + 1:]:
            d, pi = an.difference(x, y, "AP"), an.improvement(x, y, "AP")
            pis.append(pi)
            if d:
                methods.add(d["method"])
            probability = num(None) if not math.isfinite(pi["p"]) else (
                f'{pi["p"]:.2f} <span class="note">[{pi["lo"]:.2f}, {pi["hi"]:.2f}]</span>')
            rows.append({"X": esc(x), "Y": esc(y),
                         "X - Y AP [95% CI]": interval(d["diff"], d["lo"], d["hi"], 4) if d else num(None),
                         "tests": esc(d["why"]) if d else "–", "P(X > Y) [CI]": probability})
    why = "" if an.per_image_ap() is not None else an.boot_note
    return ("<h2>Pairwise comparisons (AP)</h2><p class=note>Every pair, X ranked above Y by mean AP. "
            f"X - Y: the gap of the means, 95% CI by {esc('; '.join(sorted(methods)) or 'none')}; the tests as on "
            f"the overview. {improvement_text(pis, why)}</p>" + table(pd.DataFrame(rows), left=["Y", "tests"]))


def budget_section(ctx: PageContext, figs: Figures) -> str:
    """Val AP per epoch budget (mean over seeds, 95% t band), the ranking at each budget and from which epoch
    on it holds to the last (``dashboards.budget``)."""
    sd = ctx.sd
    curves = budget.epoch_curves(sd.epochs, sd.variants)
    if curves.empty:
        return ""
    parts = ["<h2>Val AP by epoch budget</h2><p class=note>Val AP at each evaluated epoch (1-based, counted on "
             "across a multi-phase trial's phases), mean over the seeds evaluated then; the band is the 95% t "
             "interval over them. Each ranking orders the variants by that mean, as if training had stopped "
             "at that epoch.</p>",
             figs.div(figures.budget_curves(curves, sd.variants, "Val AP per epoch: mean over seeds, 95% CI"),
                      height=400)]
    if len(sd.variants) < 2:
        return "".join(parts)
    means = budget.epoch_means(curves)
    ranks = budget.rankings(means, sd.variants)
    parts.append(f"<p>{_stability_text(ranks)}</p>")
    if len(ranks) < curves["epoch"].nunique():
        parts.append(f"<p class=note>Only the {len(ranks)} epochs every variant was evaluated at are ranked "
                     f"(of {curves['epoch'].nunique()} with any evaluation).</p>")
    last = ranks[max(ranks)] if ranks else []
    rows = [{"epoch": e, "ranking by mean val AP (best first)": " &gt; ".join(f"{esc(v)} {num(means[e][v])}"
                                                                            for v in r),
             "as at the last epoch": "yes" if r == last else "no"} for e, r in ranks.items()]
    return "".join(parts) + (table(pd.DataFrame(rows), left=["ranking by mean val AP (best first)"]) if rows else "")


def _stability_text(ranks: Dict[int, List[str]]) -> str:
    """One sentence: from which epoch budget the ranking holds (``budget.stable_from``), or that it never does."""
    if not ranks:
        return "No epoch at which every variant was evaluated: no ranking by epoch budget."
    epochs = sorted(ranks)
    if len(epochs) == 1:
        return f"Only epoch {epochs[0]} was evaluated for every variant: one budget, no stability to read."
    first = budget.stable_from(ranks)
    if first is None:
        return (f"The ranking is never stable within the run: the ordering at the last epoch ({epochs[-1]}) "
                f"differs from the one at epoch {epochs[-2]}, so a longer budget could change it again.")
    return (f"The ranking is stable from epoch {first}: the same ordering at every evaluated epoch from {first} "
            f"to {epochs[-1]}, the last.")
def _share(fraction: float) -> str:
    """A foreground fraction as "0.59% (1 in 170)"."""
    if not math.isfinite(fraction) or fraction <= 0:
        return num(None)
    return f"{fraction * 100:.2g}% (1 in {1 / fraction:,.0f})"


def imbalance_section(ctx: PageContext) -> str:
    """Where the variants differ by dataset and by loss: each dataset's foreground share of the anchors,
    each loss's AP, the most focused loss's gain over the least, and whether that gain grows with the
    imbalance (``dashboards.imbalance``)."""
    res = imbalance_levels(ctx.sd)
    if res is None:
        return ""
    base, focal, labels = res["base"], res["focal"], res["labels"]
    rows = []
    for lv in res["levels"]:
        g = lv["gain"]
        rows.append({"dataset": esc(lv["name"]), "trials": lv["trials"],
                     "foreground fraction": _share(lv["fg_fraction"]),
                     "anchors / image": (f"{lv['anchors_per_image']:,.0f}" if math.isfinite(lv["anchors_per_image"])
                                         else num(None)),
                     **{f"AP {esc(labels[k])}": mean_ci(lv["losses"][k]["mean"], lv["losses"][k]["lo"],
                                                       lv["losses"][k]["hi"]) for k in res["loss_order"]},
                     "gain (paired, 95% CI)": interval(g["mean"], g["lo"], g["hi"], 3),
                     "p": num(g["p"])})
    text = (f"<h2>Focal loss and foreground imbalance</h2><p class=note>Focal loss was made for extreme "
            f"foreground-background imbalance (about 100k anchors per image, nearly all easy negatives). The "
            f"foreground fraction is positives / (positives + negatives) of the assigner, ignored anchors left "
            f"out (<code>train/fg_fraction</code>, mean over each trial's epochs, then over the level's trials). "
            f"The gain is AP of {esc(labels[focal])} minus AP of {esc(labels[base])}, seed by seed, with a 95% "
            f"t interval; the most imbalanced level first.</p>"
            + table(pd.DataFrame(rows)))
    return text + f"<p>{_trend_sentence(res)}</p>"


def _trend_sentence(res: Dict) -> str:
    """Whether the gain is larger at the more imbalanced level, with the interval of the difference."""
    t, labels = res["trend"], res["labels"]
    if t is None:
        return ("Which level is more imbalanced is unknown: the trials logged no foreground fraction (dense "
                "detectors log <code>train/fg_fraction</code>).")
    more = next(lv for lv in res["levels"] if lv["name"] == t["more"])
    less = next(lv for lv in res["levels"] if lv["name"] == t["less"])
    if not math.isfinite(t["mean"]):
        return f"No seed has both losses at both levels {esc(t['more'])} and {esc(t['less'])}."
    size = "larger" if t["mean"] > 0 else "smaller" if t["mean"] < 0 else "no different"
    head = (f"The gain of {esc(labels[res['focal']])} over {esc(labels[res['base']])} is <b>{size}</b> at the "
            f"more imbalanced level ({esc(t['more'])}, foreground {_share(more['fg_fraction'])}) than at "
            f"{esc(t['less'])} (foreground {_share(less['fg_fraction'])}): by "
            f"{interval(t['mean'], t['lo'], t['hi'], 3)} AP over {t['n']} matching seeds")
    if t["significant"] is None:
        return head + ", too few seeds (or a constant difference) for an interval: the seeds do not settle it."
    if t["significant"]:
        return head + ", an interval that excludes 0."
    return head + ", an interval that holds 0: the seeds do not settle whether the gain grows with imbalance."
