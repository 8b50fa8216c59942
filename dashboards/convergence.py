"""Whether a trial's result is a result: still improving at the end of training, or blind to its input.

Two checks per trial, from what the store holds:

* still improving: the OLS slope of val AP against epoch over the last ``k``
  evaluated epochs (``k = max(3, half of them, rounded down)``) with its 95% t
  interval (``n - 2`` degrees of freedom). "improving" when the interval's lower
  end is above 0: the AP measures the epoch budget more than the method.
  Fewer than 3 evaluated epochs (``train.eval_every_epoch: false``) give "unknown".
* input-independent: each val image's highest-scoring box (trial data
  ``detections``, COCO results format, bbox xywh). When at least 2 images have a
  detection and their top boxes agree within ``BOX_TOLERANCE_PX`` on every
  coordinate, the detector draws the same box whatever the image. No detection at
  all is "no detections": AP 0 of an empty output, not an input-independent one.

A variant is marked when a majority of its seeds are (``variant_marks``); the pages
keep marked variants out of the winner line and off the speed-accuracy frontier.

    trial_convergence(epochs, ap, detections)   # one trial
    study_convergence(sd)                       # {"trials": {key: ...}, "variants": {variant: marks}}
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as _st

CONF = 0.95
MIN_EPOCHS = 3            # a line through 2 points has no residual, so no interval
BOX_TOLERANCE_PX = 1.0
MARKS = ("no detections", "input-independent", "still improving")   # the order a variant's marks are listed in
# A finished trial's input_dependence, stored by the driver as the trial finishes (``platform.runner.callbacks``)
# so that the pages need not read every trial's detections; its state is decided again from images and spread.
INPUT_KEY = "input_dependence"


def last_epochs(n: int) -> int:
    """How many of ``n`` evaluated epochs the slope is fitted on: max(3, n // 2); 0 below 3."""
    return max(MIN_EPOCHS, n // 2) if n >= MIN_EPOCHS else 0


def ap_slope(epochs: Sequence[float], ap: Sequence[float], conf: float = CONF) -> Dict[str, Any]:
    """Slope of val AP per epoch over the last evaluated epochs, with its t interval.

    ``epochs``, ``ap``: one value per evaluated epoch (any order; NaN AP dropped).
    Returns ``state`` ("improving", "not improving" or "unknown"), ``slope``, ``lo``, ``hi``
    (AP per epoch), ``k`` (epochs fitted), ``evaluated`` (epochs with an AP) and ``epochs``
    (first and last fitted epoch).
    """
    pairs = sorted((float(e), float(a)) for e, a in zip(epochs, ap) if a is not None and math.isfinite(a))
    n = len(pairs)
    k = last_epochs(n)
    out: Dict[str, Any] = {"state": "unknown", "slope": math.nan, "lo": math.nan, "hi": math.nan, "k": k,
                           "evaluated": n, "epochs": None}
    if k == 0:
        return out
    x, y = np.array(pairs[-k:]).T
    fit = _st.linregress(x, y)
    # A constant AP fits exactly, but linregress then leaves its stderr NaN (it divides by the AP's spread)
    stderr = 0.0 if np.ptp(y) == 0 else float(fit.stderr)
    half = float(_st.t.ppf(0.5 + conf / 2, k - 2)) * stderr
    slope = float(fit.slope)
    out.update(slope=slope, lo=slope - half, hi=slope + half, epochs=(int(x[0]), int(x[-1])),
               state="improving" if slope - half > 0 else "not improving")
    return out


def top_boxes(detections: Sequence[Dict[str, Any]]) -> Dict[Any, List[float]]:
    """image_id -> bbox (xywh) of its highest-scoring detection (the first one on a tie)."""
    best: Dict[Any, Dict[str, Any]] = {}
    for d in detections:
        held = best.get(d["image_id"])
        if held is None or d["score"] > held["score"]:
            best[d["image_id"]] = d
    return {i: [float(c) for c in d["bbox"]] for i, d in best.items()}


def input_dependence(detections: Optional[Sequence[Dict[str, Any]]]) -> Dict[str, Any]:
    """Whether the detections change with the image.

    ``detections``: COCO results (image_id, bbox xywh, score), or None when none were stored.
    Returns ``state``: "unknown" (not stored, or a detection on one image only), "no detections",
    "input-independent" (top boxes of >= 2 images within ``BOX_TOLERANCE_PX`` on every coordinate)
    or "depends"; ``images`` (images with a detection) and ``spread`` (the largest range of a top-box
    coordinate over the images, px).
    """
    if detections is None:
        return {"state": "unknown", "images": 0, "spread": math.nan}
    boxes = np.array(list(top_boxes(detections).values()), dtype=float).reshape(-1, 4)
    spread = float((boxes.max(axis=0) - boxes.min(axis=0)).max()) if len(boxes) else math.nan
    return _dependence(len(boxes), spread)


def _dependence(images: int, spread: float) -> Dict[str, Any]:
    """:func:`input_dependence` from the number of images with a detection and the top boxes' spread."""
    if images == 0:
        state = "no detections"
    elif images < 2:
        state = "unknown"
    else:
        state = "input-independent" if spread <= BOX_TOLERANCE_PX else "depends"
    return {"state": state, "images": images, "spread": spread}


def trial_convergence(epochs: Sequence[float], ap: Sequence[float],
                      detections: Optional[Sequence[Dict[str, Any]]],
                      stored: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Both checks of one trial: ``slope`` (``ap_slope``), ``input`` (``input_dependence`` of the
    detections, or of a stored result of it, ``stored``) and ``marks``, the names in ``MARKS`` that apply."""
    inp = _dependence(stored["images"], stored["spread"]) if stored else input_dependence(detections)
    slope = ap_slope(epochs, ap)
    marks = [m for m in MARKS if (m == "still improving" and slope["state"] == "improving") or inp["state"] == m]
    return {"slope": slope, "input": inp, "marks": marks}


def fmt_slope(s: Dict[str, Any]) -> str:
    """"+0.012 AP/epoch [0.004, 0.020]"."""
    return f"{s['slope']:+.3f} AP/epoch [{s['lo']:.3f}, {s['hi']:.3f}]"


def variant_marks(trials: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """A variant's marks from its seeds' ``trial_convergence`` results (each with its ``seed``).

    A mark holds when more than half the seeds have it. Returns ``marks`` (in ``MARKS`` order),
    ``text`` (one phrase per mark, e.g. "still improving in 2 of 3 seeds: seed 0 +0.012 AP/epoch
    [0.004, 0.020], ..."), ``seeds`` and ``unknown_slope`` (whether most seeds had too few
    evaluated epochs to tell).
    """
    n = len(trials)
    marks, text = [], []
    for m in MARKS:
        having = [t for t in trials if m in t["marks"]]
        if 2 * len(having) <= n:
            continue
        marks.append(m)
        head = f"{m} in {len(having)} of {n} seed{'s' if n != 1 else ''}"
        if m == "still improving":
            head += ": " + ", ".join(f"seed {t['seed']} {fmt_slope(t['slope'])}" for t in having)
        elif m == "input-independent":
            head += f": within {BOX_TOLERANCE_PX:g} px the same top box on every image with a detection"
        text.append(head)
    unknown = 2 * sum(t["slope"]["state"] == "unknown" for t in trials) > n
    return {"marks": marks, "text": "; ".join(text), "seeds": n, "unknown_slope": unknown}


def study_convergence(sd) -> Dict[str, Dict[str, Any]]:
    """Both checks for every finished trial of a study (``dashboards.data.StudyData``) and the marks
    of every variant: ``{"trials": {trial_key: trial_convergence + seed, variant}, "variants": {variant:
    variant_marks}}``. Val AP per epoch from the stored epoch rows (``val/AP`` at its ``epoch``), the
    detections from trial data ``detections``."""
    ep = sd.epochs
    ap = ep[ep["name"] == "val/AP"] if "name" in ep else ep
    curves = {k: g for k, g in ap.groupby("trial_key")} if not ap.empty else {}
    stored = sd.data(INPUT_KEY)
    # the detections are read only for trials without a stored result (a store of an older detbench)
    dets = sd.data("detections") if any(t["trial_key"] not in stored for t in sd.finished) else {}
    trials: Dict[str, Dict[str, Any]] = {}
    for t in sd.finished:
        g = curves.get(t["trial_key"])
        epochs, values = (g["epoch"].tolist(), g["value"].tolist()) if g is not None else ([], [])
        check = trial_convergence(epochs, values, dets.get(t["trial_key"]), stored.get(t["trial_key"]))
        trials[t["trial_key"]] = {**check,
                                  "seed": t["seed"], "variant": t["variant"]}
    variants = {v: variant_marks([c for c in trials.values() if c["variant"] == v]) for v in sd.variants}
    return {"trials": trials, "variants": variants}
