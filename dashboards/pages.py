"""Static report pages of a study, built from the results store alone (the speed page: ``dashboards.speed_page``).

    build_reports(store, "focal_gamma_sweep", "reports")  # -> reports/focal_gamma_sweep/index.html

writes ``reports/<study>/{index,accuracy,speed,loss}.html`` (and ``tuning.html`` for a study with tuning
trials: ``dashboards.tuning``; ``gallery.html`` where its val images are on disk: ``dashboards.gallery``),
``reports/index.html``
(every study) and ``reports/plotly.min.js`` (once; every page loads it with a
relative link, so the pages work offline from file://). Rebuild at any time
with ``python -m platform.report STUDY``.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List

import numpy as np
import pandas as pd

from dashboards import figures
from dashboards.analysis import BOOTSTRAP_CACHE, Analysis
from dashboards.comparisons import budget_section, imbalance_section, pairwise_section
from dashboards.context import AP_METRICS, TUNING_PAGE, PAGES, PageContext
from dashboards.convergence import fmt_slope
from dashboards.data import fmt_value, load_study
from dashboards.errors import ERROR_LABELS, ERROR_TYPES, study_errors
from dashboards.fingerprint import fingerprint, mark_current
from dashboards.gallery import GALLERY_PAGE, build_gallery, load_gallery
from dashboards.html import Figures, esc, mean_ci, num, table, write_plotly_js
from dashboards.stats import t_interval
from dashboards.overview import (CONVERGENCE_RULE, build_all_index, build_study_index, convergence_cell,
                                 set_aside_text)
from dashboards.speed_page import build_speed
from dashboards.tuning import build_tuning, load_tuning


def _missing(what: str) -> str:
    return f'<p class="na">No {esc(what)} stored for this study.</p>'


# ------------------------------------------------------------------ accuracy

def _mean_curves(sd, per_class_ap: Dict[str, dict], pr: Dict[str, dict], iou: str) -> Dict[str, Dict[str, list]]:
    """variant -> {class: mean precision over seeds, "mean": mean over classes with ground truth}."""
    out: Dict[str, Dict[str, list]] = {}
    for v in sd.variants:
        keys = [t["trial_key"] for t in sd.finished if t["variant"] == v and t["trial_key"] in pr]
        if not keys:
            continue
        classes = list(pr[keys[0]][iou])
        curves = {c: np.mean([pr[k][iou][c] for k in keys if c in pr[k][iou]], axis=0) for c in classes}
        with_gt = [c for c in classes if any((per_class_ap.get(k) or {}).get(c) is not None for k in keys)]
        with_gt = with_gt or classes
        out[v] = {"mean": np.mean([curves[c] for c in with_gt], axis=0).round(4).tolist(),
                  **{c: curves[c].round(4).tolist() for c in classes}}
    return out


def build_accuracy(ctx: PageContext) -> str:
    sd, an, figs = ctx.sd, ctx.an, Figures("accuracy")
    parts: List[str] = []
    present = [m for m in AP_METRICS if m in sd.final]
    summaries = {m: an.summary(m) for m in present}
    rows = [{"variant": esc(v), "seeds": len(sd.seeds(v)),
             **{m: mean_ci(s.iloc[i]["mean"], s.iloc[i]["lo"], s.iloc[i]["hi"]) for m, s in summaries.items()},
             "convergence": convergence_cell(an, v)}
            for i, v in enumerate(sd.variants)]
    parts.append("<h2>COCO metrics (mean over seeds ± 95% CI half-width)</h2>"
                 + table(pd.DataFrame(rows), left=["convergence"]))
    if "APl" not in sd.final or sd.final["APl"].isna().all():
        parts.append('<p class="note">APl is undefined here: the val split has no object larger than 96² px.</p>')
    parts.append(imbalance_section(ctx))
    if sd.variants:
        parts.append(figs.div(figures.metric_bars(summaries, sd.variants), height=420))
        key = sd.primary_param()
        xs = {v: sd.variant_params.get(v, {}).get(key) for v in sd.variants} if key else {v: v for v in sd.variants}
        numeric = bool(key) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs.values())
        if not numeric:
            xs = {v: v for v in sd.variants}
        others = [k for k in sd.swept if k != key]
        note = (f' <span class="note">(paired with {esc(", ".join(others))}: see the variant names)</span>'
                if others else "")
        parts.append(f"<h2>The swept parameter against AP{note}</h2>")
        parts.append(figs.div(figures.swept_param(sd.metric("AP"), summaries.get("AP", an.summary("AP")), xs,
                                                  key or "variant", "AP", numeric), height=420))
    parts.append(pairwise_section(ctx))
    pca, pr = sd.data("per_class_ap"), sd.data("pr_curves")
    parts.append("<h2>Per-class AP (mean over seeds)</h2>")
    if pca:
        frame = pd.DataFrame([{"variant": t["variant"], **{c: (np.nan if a is None else a)
                                                            for c, a in pca[t["trial_key"]].items()}}
                              for t in sd.finished if t["trial_key"] in pca])
        matrix = frame.groupby("variant", sort=False).mean().reindex([v for v in sd.variants
                                                                      if v in set(frame["variant"])])
        parts.append(figs.div(figures.heatmap(matrix, "AP@[.5:.95] per class and variant")))
    else:
        parts.append(_missing("per-class AP"))
    parts.append(_errors_section(ctx, figs))
    parts.append("<h2>Precision-recall curves</h2><p class=note>From COCOeval's precision array (area all, "
                 "100 detections), averaged over seeds; the menu picks a class, <i>mean</i> averages the classes "
                 "that have ground truth (the curve whose area is AP50 or AP75).</p>")
    if pr:
        recall = next(iter(pr.values()))["recall"]
        for iou, label in (("iou50", "0.5"), ("iou75", "0.75")):
            parts.append(figs.div(figures.pr_curves(recall, _mean_curves(sd, pca, pr, iou), label, sd.variants),
                                  height=440))
    else:
        parts.append(_missing("PR curves"))
    ep = sd.epochs[sd.epochs["name"].isin(["val/AP", "val/AP50"])]
    if not ep.empty:
        parts.append("<h2>Validation AP during training</h2>")
        parts.append(figs.div(figures.epoch_curves(ep, sorted(ep["name"].unique()), sd.variants,
                                                   "Val AP per epoch (mean over seeds)", x="epoch"),
                              height=380))
    parts.append(budget_section(ctx, figs))
    parts.append(_convergence_section(ctx))
    return ctx.write("accuracy.html", "Accuracy", "".join(parts), figs)


def _convergence_section(ctx: PageContext) -> str:
    """Per trial: the val AP slope over its last epochs and whether its top box moves with the image
    (``dashboards.convergence``); which variants that sets aside, and why."""
    an, sd = ctx.an, ctx.sd
    trials = an.convergence()["trials"]
    if not trials:
        return ""
    rows = []
    for t in sd.finished:
        c = trials[t["trial_key"]]
        s, inp = c["slope"], c["input"]
        fitted = (f"epochs {s['epochs'][0]}-{s['epochs'][1]} of {s['evaluated']} evaluated" if s["epochs"]
                  else f"{s['evaluated']} evaluated")
        rows.append({"trial": esc(t["trial_key"]), "val AP fitted": esc(fitted),
                     "slope [95% CI]": esc(fmt_slope(s)) if s["epochs"] else num(None),
                     "still improving": esc({"improving": "yes", "not improving": "no"}.get(s["state"], "unknown")),
                     "images with a detection": num(inp["images"]),
                     "top-box spread px": num(inp["spread"], 1),
                     "detections": esc(inp["state"])})
    return ("<h2>Convergence</h2><p class=note>" + CONVERGENCE_RULE + " Top-box spread: the largest range of a "
            "coordinate (x, y, w, h) of each image's highest-scoring box over the val images.</p>"
            + set_aside_text(an.set_aside(), "the winner or the speed-accuracy frontier")
            + table(pd.DataFrame(rows), left=["val AP fitted", "detections"]))


NOTHING_FOUND = 0.01  # AP50 below this: a variant with (almost) no true positive


def _errors_section(ctx: PageContext, figs: Figures) -> str:
    """TIDE's error breakdown per variant and the confusion matrix (``dashboards.errors``)."""
    sd = ctx.sd
    parts = ["<h2>Why AP is lost: error breakdown (TIDE)</h2><p class=note>Bolya et al., ECCV 2020: every false "
             "positive at IoU 0.5 is a classification (right place, wrong class), localisation (right class, IoU "
             "0.1-0.5), both, duplicate or background (IoU &lt; 0.1) error, and an object nobody found is missed; "
             "each bar is the AP50 that fixing that type alone would add. Computed from the stored detections and "
             "val ground truth, per trial, then mean over seeds (95% CI).</p>"]
    res = study_errors(sd)
    if "note" in res:
        return parts[0] + _missing(f"error breakdown ({res['note']})")
    tide = res["tide"]
    summaries, rows = {}, []
    for k in ERROR_TYPES:
        summaries[ERROR_LABELS[k]] = pd.DataFrame([{"variant": v, **t_interval(tide.loc[tide["variant"] == v,
                                                                                          f"dAP/{k}"].tolist())}
                                                   for v in sd.variants])
    for v in sd.variants:
        sub = tide[tide["variant"] == v]
        if sub.empty:
            continue
        row = {"variant": esc(v), "seeds": len(sub), "AP50 (TIDE)": num(sub["AP50"].mean())}
        means = {k: sub[f"dAP/{k}"].mean() for k in ERROR_TYPES}
        for k in ERROR_TYPES:  # the 95% CIs are in the figure below
            row[ERROR_LABELS[k]] = f"{num(means[k])} <span class=note>({int(round(sub[f'n/{k}'].mean()))})</span>"
        top = max(means, key=means.get)
        # With no true positive, fixing one type alone recovers ~nothing: say what happened instead.
        row["costs most"] = (esc(ERROR_LABELS[top]) if sub["AP50"].mean() >= NOTHING_FOUND
                             else f"finds almost nothing ({int(round(sub['n/miss'].mean()))} objects missed)")
        rows.append(row)
    parts.append(table(pd.DataFrame(rows), left=["costs most"]))
    parts.append("<p class=note>dAP50 per error type, mean over seeds; in brackets the number of such errors "
                 "per trial.</p>")
    parts.append(figs.div(figures.metric_bars(summaries, sd.variants, "AP50 recovered by fixing each error type "
                                              "(mean over seeds, 95% CI)", "dAP50"), height=420))
    conf = res["confusion"]
    if conf:
        labels = res["classes"]
        counts = {v: pd.DataFrame(c, index=labels + ["background"], columns=labels + ["missed"])
                  for v, c in conf.items()}
        shares = {v: c.div(c.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0) for v, c in counts.items()}
        parts.append("<h2>Confusion between classes</h2><p class=note>Per image the <i>n</i> highest-scoring "
                     "detections, <i>n</i> its number of objects (so differently calibrated scores compare), each "
                     "matched by score to the object of any class it overlaps most at IoU &ge; 0.5; the "
                     "<i>background</i> row holds detections on no object, the <i>missed</i> column objects no "
                     "detection matched. Rows sum to 1; seeds pooled. The menu picks the variant.</p>")
        parts.append(figs.div(figures.confusion(shares, counts, sd.variants), height=480))
    return "".join(parts)


# ------------------------------------------------------------------ speed

# ------------------------------------------------------------------ losses

def _diagnostics_section(ctx: PageContext, figs: Figures) -> str:
    diag = ctx.sd.data("loss_diagnostics")
    if not diag:
        return _missing("loss diagnostics")
    out = ""
    if any("negative" in d and "positive" in d for d in diag.values()):
        out += _figure4_section(ctx, figs, {k: d for k, d in diag.items() if "negative" in d and "positive" in d})
    if any("score_iou" in d for d in diag.values()):
        # detectors.evaluation.diagnostics.score_iou_diagnostics: sampled pairs under "points"
        out += _score_iou_section(ctx, figs, {k: d["score_iou"].get("points", d["score_iou"])
                                              for k, d in diag.items() if "score_iou" in d})
    return out or _missing("loss diagnostics this page knows how to plot")


def _score_iou_section(ctx: PageContext, figs: Figures, pairs: Dict[str, dict]) -> str:
    """GFL studies: score vs IoU per positive
    (data ``loss_diagnostics["score_iou"]["points"] = {"score": [...], "iou": [...]}``)."""
    sd = ctx.sd
    points, rows = {}, []
    for v in sd.variants:
        keys = [t["trial_key"] for t in sd.finished if t["variant"] == v and t["trial_key"] in pairs]
        if not keys:
            continue
        iou = [x for k in keys for x in pairs[k]["iou"]]
        score = [x for k in keys for x in pairs[k]["score"]]
        points[v] = {"iou": iou, "score": score}
        r = float(np.corrcoef(iou, score)[0, 1]) if len(iou) > 1 and np.std(iou) > 0 and np.std(score) > 0 else math.nan
        rows.append({"variant": esc(v), "positives (all seeds)": num(len(iou)), "Pearson r (score, IoU)": num(r)})
    return ("<h2>Score against localisation quality</h2><p class=note>GFL paper (Li et al., arXiv 2006.04388), "
            "sec. 1: with a separate quality branch the score a detection is ranked by and its IoU can disagree; "
            "a joint score should follow the IoU. Every val positive, seeds pooled.</p>"
            + table(pd.DataFrame(rows))
            + figs.div(figures.score_vs_iou(points, list(points), cols=figures.colors(sd.variants)), height=480))


def _figure4_section(ctx: PageContext, figs: Figures, diag: Dict[str, dict]) -> str:
    sd = ctx.sd
    parts = ["<h2>Where the classification loss comes from</h2><p class=note>Focal loss paper, Figure 4 "
             "(Lin et al., arXiv 1708.02002, sec. 5.1): each trained model runs over the val split; the loss of "
             "every positive and every negative anchor is sorted from low to high, normalised to sum to one and "
             "accumulated. A curve that stays low until the right edge means a few hard anchors carry the loss. "
             "Computed by the workers; curves are the mean over seeds.</p>"]
    curves: Dict[str, Dict[str, dict]] = {}
    rows, shares = [], []
    for v in sd.variants:
        keys = [t["trial_key"] for t in sd.finished if t["variant"] == v and t["trial_key"] in diag]
        if not keys:
            continue
        ds = [diag[k] for k in keys]
        curves[v] = {part: {"fraction": ds[0][part]["fraction"],
                            "cumulative_loss": np.mean([d[part]["cumulative_loss"] for d in ds],
                                                       axis=0).round(5).tolist()}
                     for part in ("positive", "negative") if all(part in d for d in ds)}
        share = [d.get("easy_negative_share", math.nan) for d in ds]
        shares += [{"variant": v, "seed": t["seed"], "value": diag[t["trial_key"]].get("easy_negative_share", math.nan)}
                   for t in sd.finished if t["trial_key"] in keys]
        ci = t_interval(share)
        params = ", ".join(f"{k} {fmt_value(x)}" for k, x in (ds[0].get("params") or {}).items())
        rows.append({"variant": esc(v), "loss": esc(f"{ds[0].get('loss', '?')} ({params})"),
                     "easy-negative share of the loss (p_t > 0.9) ± 95% CI": mean_ci(ci["mean"], ci["lo"], ci["hi"], 4),
                     "positive anchors": num(int(np.mean([d.get("num_positive", 0) for d in ds]))),
                     "negative anchors": num(int(np.mean([d.get("num_negative", 0) for d in ds]))),
                     "val images": num(ds[0].get("images"))})
    parts.append(table(pd.DataFrame(rows), left=["loss"]))
    variants = [v for v in sd.variants if v in curves]
    cols = figures.colors(sd.variants)
    parts.append(figs.div(figures.loss_cdf(curves, variants, {}, cols), height=460))
    sh = pd.DataFrame(shares)
    s = pd.DataFrame([{"variant": v, **t_interval(sh.loc[sh["variant"] == v, "value"].tolist())} for v in variants])
    parts.append(figs.div(figures.mean_and_points(s, sh, "Share of the total classification loss from easy "
                                                         "negatives (p_t > 0.9)", "share of loss", cols), height=360))
    return "".join(parts)


def loss_names(names) -> List[str]:
    """The training losses among metric names: ``train/loss`` (the weighted total) first, then every
    ``train/loss_*`` term in name order, whatever terms the trials' detectors report."""
    present = set(names)
    return [n for n in ("train/loss",) if n in present] + sorted(n for n in present if n.startswith("train/loss_"))


def build_loss(ctx: PageContext) -> str:
    sd, figs = ctx.sd, Figures("loss")
    parts = []
    names = loss_names(sd.epochs["name"].unique())
    ep = sd.epochs[sd.epochs["name"].isin(names)]
    parts.append("<h2>Training loss</h2>")
    if not ep.empty:
        parts.append("<p class=note>Mean over an epoch's steps, then over seeds; <code>train/loss</code> is the "
                     "weighted total the optimiser minimised, the <code>train/loss_*</code> panels the unweighted "
                     "terms each detector reports (a variant without a term has no curve in its panel).</p>")
        parts.append(figs.div(figures.epoch_curves(ep, names, sd.variants, "Training loss per epoch "
                                                   "(mean over seeds)", x="epoch")))
    else:
        parts.append(_missing("per-epoch losses"))
    parts.append(_diagnostics_section(ctx, figs))
    return ctx.write("loss.html", "Losses", "".join(parts), figs)


# ------------------------------------------------------------------ entry point

def build_study(store, study_name: str, reports_dir: str, resamples: int | None = None) -> PageContext:
    """All pages of one study plus the all-studies index; returns the context (paths, sizes, plot counts).
    Records the data's fingerprint (``dashboards.fingerprint``) beside the pages."""
    sd = load_study(store, study_name)
    sd.info["store_url"] = _safe_url(getattr(store, "url", ""))
    cache = os.path.join(os.path.abspath(reports_dir), study_name, BOOTSTRAP_CACHE)
    an = Analysis(sd, cache_path=cache) if resamples is None else Analysis(sd, resamples, cache_path=cache)
    tuning = load_tuning(store, study_name)
    gallery = load_gallery(sd, os.path.abspath(reports_dir))
    ctx = PageContext(sd, an, os.path.abspath(reports_dir), pretrainings=store.pretrainings(),
                      pages=PAGES + ((GALLERY_PAGE,) if gallery else ()) + ((TUNING_PAGE,) if tuning else ()))
    write_plotly_js(ctx.reports_dir)
    build_study_index(ctx)
    build_accuracy(ctx)
    build_speed(ctx)
    build_loss(ctx)
    # an optional page from an earlier build would be out of date and linked from nowhere
    if gallery:
        build_gallery(ctx, gallery)
    else:
        _remove(os.path.join(ctx.study_dir, GALLERY_PAGE[1]))
    if tuning:
        build_tuning(ctx, tuning)
    else:  # a tuning page from an earlier build of the study would be out of date and linked from nowhere
        _remove(os.path.join(ctx.study_dir, TUNING_PAGE[1]))
    ctx.sizes["../index.html"], ctx.plots["../index.html"] = build_all_index(store, ctx.reports_dir, ctx.built), 0
    mark_current(ctx.reports_dir, study_name, fingerprint(store, study_name, resamples),
                 pages=[file for _, file in ctx.pages])
    return ctx


def build_reports(store, study_name: str, reports_dir: str) -> str:
    """Build a study's pages and the all-studies index; returns the path of the study's index.html."""
    return os.path.join(build_study(store, study_name, reports_dir).study_dir, "index.html")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _safe_url(url: str) -> str:
    """The store URL without a password (PostgreSQL URLs may carry one)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return ""
