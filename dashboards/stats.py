"""Statistics for the pages: t intervals over seeds, paired seed differences, image bootstrap.

Over seeds (training noise): a 95% confidence interval with Student's t
(``scipy.stats.t``), and for two variants the paired difference over the seeds
both ran (seed s of A against seed s of B), tested against zero.

Over val images (evaluation-set noise): a bootstrap that resamples the val
images with replacement and evaluates every variant on the same resampled set
with pycocotools. Evaluating against a ground truth rebuilt from the resampled
images with fresh image ids (so a duplicate counts twice) is the definition;
``resampled_ap`` does exactly that and the tests use it as the reference. The
bootstrap itself gets the same numbers faster: COCOeval's per-image matching
(``evaluateImg``) depends on one image only, so it runs once per detection set
and each resample re-orders those per-image records under fresh ids before
COCOeval's own ``accumulate``. AP is then read from COCOeval's precision array
as ``summarize`` reads it (mean of the defined entries, area all, 100 detections).
Seeds are pooled: in each resample a variant's AP is the mean over its seeds.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as _st

from detectors.cocotools import coco_ground_truth, load_results

CONF = 0.95


def t_interval(values: Sequence[float], conf: float = CONF) -> Dict[str, float]:
    """Mean and a two-sided t confidence interval; lo/hi NaN with fewer than 2 values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = int(x.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "half": math.nan, "n": 0, "sd": math.nan}
    mean = float(x.mean())
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "half": math.nan, "n": 1, "sd": math.nan}
    sd = float(x.std(ddof=1))
    half = float(_st.t.ppf(0.5 + conf / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "n": n, "sd": sd}


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], conf: float = CONF) -> Dict[str, object]:
    """A - B over the seeds both have: mean difference, t interval, two-sided p (paired t test)."""
    seeds = sorted(set(a) & set(b))
    d = [a[s] - b[s] for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])]
    out: Dict[str, object] = dict(t_interval(d, conf), seeds=seeds, p=math.nan)
    if len(d) >= 2:
        sd = float(np.std(d, ddof=1))
        if sd > 0:
            t = float(np.mean(d)) / (sd / math.sqrt(len(d)))
            out["p"] = float(2 * _st.t.sf(abs(t), len(d) - 1))
        else:
            out["p"] = 0.0 if np.mean(d) != 0 else 1.0
    return out


def significant(lo: float, hi: float) -> Optional[bool]:
    """True when an interval excludes zero, None when it is undefined."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None
    return lo > 0 or hi < 0


# ------------------------------------------------------------------ image bootstrap

def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _ap_from(ev) -> float:
    """AP@[.5:.95] as COCOeval.summarize reads it: the defined precision entries, last maxDets."""
    p = ev.eval["precision"][:, :, :, 0, -1]
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else math.nan


def _evaluated(gt, detections: List[dict], img_ids: Sequence[int]):
    """COCOeval after ``evaluate()``: area 'all' and 100 detections only (what AP reads)."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(gt, load_results(gt, detections), iouType="bbox")
    ev.params.imgIds = list(img_ids)
    ev.params.areaRng, ev.params.areaRngLbl, ev.params.maxDets = [ev.params.areaRng[0]], ["all"], [100]
    with _quiet():
        ev.evaluate()
    return ev


def _accumulate_on(ev, idx: np.ndarray) -> float:
    """AP of an evaluated COCOeval on the images at positions ``idx`` (duplicates kept, fresh ids)."""
    pe = ev._paramsEval
    n_img, n_cat = len(pe.imgIds), len(pe.catIds)
    sub = copy.copy(ev)
    p = copy.copy(pe)
    p.imgIds = list(range(len(idx)))
    sub.params = sub._paramsEval = p
    sub.evalImgs = [ev.evalImgs[k * n_img + int(i)] for k in range(n_cat) for i in idx]
    with _quiet():
        sub.accumulate()
    return _ap_from(sub)


def resampled_ap(gt, detections: List[dict], img_ids: Sequence[int]) -> float:
    """Reference definition: AP on a ground truth rebuilt from ``img_ids`` (repeats allowed) with fresh ids."""
    anns_by_img: Dict[int, List[dict]] = {}
    for a in gt.dataset["annotations"]:
        anns_by_img.setdefault(a["image_id"], []).append(a)
    dets_by_img: Dict[int, List[dict]] = {}
    for d in detections:
        dets_by_img.setdefault(d["image_id"], []).append(d)
    images, anns, dets = [], [], []
    for new_id, old in enumerate(img_ids):
        images.append(dict(gt.imgs[old], id=new_id))
        anns += [dict(a, id=len(anns) + j + 1, image_id=new_id) for j, a in enumerate(anns_by_img.get(old, []))]
        dets += [dict(d, image_id=new_id) for d in dets_by_img.get(old, [])]
    new_gt = coco_ground_truth({"images": images, "annotations": anns,
                                "categories": copy.deepcopy(gt.dataset["categories"])})
    ev = _evaluated(new_gt, dets, list(range(len(images))))
    with _quiet():
        ev.accumulate()
    return _ap_from(ev)


def bootstrap_ap(gt, detections: Mapping[str, List[List[dict]]], resamples: int = 200,
                 rng_seed: int = 0) -> Dict[str, np.ndarray]:
    """Per variant, AP on each of ``resamples`` bootstrap image sets (mean over its seeds' detections).

    Args:
        gt: pycocotools COCO of the val split every detection set was made on.
        detections: variant -> one COCO results list per seed.
    Returns:
        variant -> float array ``[resamples]``; row b of every variant used the same images.
    """
    img_ids = sorted(gt.getImgIds())
    evs = {v: [_evaluated(gt, dets, img_ids) for dets in per_seed] for v, per_seed in detections.items()}
    rng = np.random.default_rng(rng_seed)
    out = {v: np.empty(resamples) for v in evs}
    for b in range(resamples):
        idx = rng.integers(0, len(img_ids), size=len(img_ids))
        for v, seed_evs in evs.items():
            out[v][b] = float(np.nanmean([_accumulate_on(ev, idx) for ev in seed_evs]))
    return out


def bootstrap_difference(a: np.ndarray, b: np.ndarray, conf: float = CONF) -> Dict[str, float]:
    """Percentile interval of A - B over paired resamples, and the share of resamples where A > B."""
    d = np.asarray(a) - np.asarray(b)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"lo": math.nan, "hi": math.nan, "p_better": math.nan, "n": 0}
    lo, hi = np.percentile(d, [50 * (1 - conf), 100 - 50 * (1 - conf)])
    return {"lo": float(lo), "hi": float(hi), "p_better": float(np.mean(d > 0)), "n": int(d.size)}
