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
(``evaluateImg``) depends on one image only, so it runs once per detection set;
a resample concatenates those per-image records in its order and accumulates
them. ``_accumulate_on`` does that through COCOeval's own ``accumulate``;
``ImageRecords.ap`` does the same arithmetic with numpy on arrays flattened once
per detection set (stable sort by score, cumulative sums, the precision envelope,
101 recall thresholds), bit for bit the same AP and 4-6x faster than
COCOeval's Python loop (the tests hold the three equal). AP is read from the precision array
as ``summarize`` reads it (mean of the defined entries, area all, 100 detections).
Seeds are pooled: in each resample a variant's AP is the mean over its seeds.

Probability of improvement (``probability_of_improvement``, Agarwal et al. 2021): how often a run of
one variant beats a run of another (the Mann-Whitney statistic), averaged over tasks, with a bootstrap
that resamples runs within each task. The pages take the val images as the tasks and each seed's AP
on an image alone (``ImageRecords.per_image_ap``) as its score there. A description beside the tests,
not a verdict.

Verdicts (``decide``) need both kinds of evidence. Two variants *differ* only when
the paired t test over at least ``MIN_SEEDS`` matching seeds and the image
bootstrap both exclude 0 on the same side (95%); they are *equivalent* only when
both two one-sided tests (TOST, 5% each side) put the difference inside
±``EQUIVALENCE_MARGIN``. An interval that merely contains 0 is neither.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from scipy import stats as _st

from detectors.evaluation.cocotools import coco_ground_truth, load_results

CONF = 0.95
ALPHA = 1 - CONF
# Fewer matching seeds give no seed verdict: with 2 the t test has 1 degree of
# freedom (t(0.975, 1) = 12.7) and says more about the draw than about retraining.
MIN_SEEDS = 3
# Equivalence margin for AP-family metrics (fractions): 0.01 = 1.0 AP point. A stated
# convention, not a law: papers call ablation rows within about a point "comparable"
# (Faster R-CNN's "close results"); the pages print the value used.
EQUIVALENCE_MARGIN = 0.01
AP_FAMILY = {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100"}


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


def equivalence_margin(metric: str) -> Optional[float]:
    """The TOST margin in the metric's own units, or None where no margin is defined (speed)."""
    return EQUIVALENCE_MARGIN if metric in AP_FAMILY else None


def paired_difference(a: Mapping[int, float], b: Mapping[int, float], conf: float = CONF,
                      margin: Optional[float] = None) -> Dict[str, object]:
    """A - B over the seeds both have: mean difference, t interval, two-sided p (paired t test),
    and with ``margin`` the TOST p that |A - B| < margin (``p_equiv``).

    Identical differences on every seed (zero variance) leave t undefined. If they are all 0,
    p = 1 (no difference to explain); otherwise p, p_equiv and the interval are NaN and
    ``degenerate`` is set: a constant gap usually means the seed did not change training,
    which says nothing about retraining noise, so it must not read as p = 0.
    """
    seeds = sorted(set(a) & set(b))
    d = np.asarray([a[s] - b[s] for s in seeds if math.isfinite(a[s]) and math.isfinite(b[s])], dtype=float)
    out: Dict[str, object] = dict(t_interval(d, conf), seeds=seeds, p=math.nan, p_equiv=math.nan,
                                  degenerate=False)
    if d.size < 2:
        return out
    mean, n = float(d.mean()), int(d.size)
    # "Identical" up to float rounding: 0.7 - 0.6 and 0.5 - 0.4 differ in the last bit.
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):
        out["degenerate"] = True
        if np.allclose(d, 0.0, rtol=0.0, atol=1e-12):
            out.update(p=1.0, mean=0.0, lo=0.0, hi=0.0, half=0.0)
        else:
            out.update(lo=math.nan, hi=math.nan, half=math.nan)
        return out
    se = float(d.std(ddof=1)) / math.sqrt(n)
    out["p"] = float(2 * _st.t.sf(abs(mean) / se, n - 1))
    if margin is not None:
        # TOST: H0 A - B <= -margin (p_low) and H0 A - B >= margin (p_high); both must go.
        p_low = _st.t.sf((mean + margin) / se, n - 1)
        p_high = _st.t.cdf((mean - margin) / se, n - 1)
        out["p_equiv"] = float(max(p_low, p_high))
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


class ImageRecords:
    """An evaluated COCOeval's per-image records as flat arrays per category, for fast resampling.

    For category k: ``scores`` of every image's (at most 100, score-sorted) detections,
    concatenated in image order; ``tp`` / ``fp`` ``[T, n]`` (matched / unmatched and not
    ignored); per image the ``start`` and ``count`` of its detections and ``npig``, its
    ground truths that are not ignored. An image without ground truth and detections of
    the category (COCOeval's ``None`` record) has count 0 and npig 0.
    """

    def __init__(self, ev) -> None:
        pe = ev._paramsEval
        self.n_img, self.rec_thrs = len(pe.imgIds), np.asarray(pe.recThrs)
        n_img, self.n_iou, self.per_cat = self.n_img, len(pe.iouThrs), []
        max_det = pe.maxDets[-1]
        for k in range(len(pe.catIds)):
            recs = ev.evalImgs[k * n_img:(k + 1) * n_img]
            count = np.array([0 if e is None else min(len(e["dtScores"]), max_det) for e in recs], dtype=np.int64)
            npig = np.array([0 if e is None else int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
                             for e in recs], dtype=np.int64)
            live = [e for e in recs if e is not None and len(e["dtScores"])]
            if live:
                scores = np.concatenate([np.asarray(e["dtScores"][:max_det]) for e in live])
                dtm = np.concatenate([e["dtMatches"][:, :max_det] for e in live], axis=1)
                dtig = np.concatenate([e["dtIgnore"][:, :max_det] for e in live], axis=1)
            else:
                scores, dtm, dtig = np.zeros(0), np.zeros((self.n_iou, 0)), np.zeros((self.n_iou, 0), dtype=bool)
            self.per_cat.append({"scores": scores, "tp": np.logical_and(dtm, np.logical_not(dtig)),
                                 "fp": np.logical_and(np.logical_not(dtm), np.logical_not(dtig)),
                                 "start": np.cumsum(count) - count, "count": count, "npig": npig})

    def ap(self, idx: np.ndarray) -> float:
        """AP on the images at positions ``idx`` (repeats count again), as ``_accumulate_on``."""
        n_rec = len(self.rec_thrs)
        precision = -np.ones((self.n_iou, n_rec, len(self.per_cat)))
        for k, c in enumerate(self.per_cat):
            npig = int(c["npig"][idx].sum())
            if npig == 0:
                continue
            counts, starts = c["count"][idx], c["start"][idx]
            total = int(counts.sum())
            # the resample's detections, image after image: ranges start..start+count concatenated
            sel = np.arange(total) + np.repeat(starts - (np.cumsum(counts) - counts), counts)
            sel = sel[np.argsort(-c["scores"][sel], kind="mergesort")]
            tp_sum = np.cumsum(c["tp"][:, sel], axis=1).astype(dtype=float)
            fp_sum = np.cumsum(c["fp"][:, sel], axis=1).astype(dtype=float)
            rc = tp_sum / npig
            pr = tp_sum / (fp_sum + tp_sum + np.spacing(1))
            pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # COCOeval's precision envelope
            inds = np.stack([np.searchsorted(rc[t], self.rec_thrs, side="left") for t in range(self.n_iou)])
            ok = inds < total
            q = np.zeros((self.n_iou, n_rec))
            q[ok] = pr[np.nonzero(ok)[0], inds[ok]]
            precision[:, :, k] = q
        valid = precision[precision > -1]
        return float(valid.mean()) if valid.size else math.nan

    def per_image_ap(self) -> np.ndarray:
        """``[n_img]``: AP on each image alone (``ap`` of that one image), i.e. the mean over the categories with
        ground truth on it; NaN for an image without ground truth of any category (no AP is defined there)."""
        return np.array([self.ap(np.array([i])) for i in range(self.n_img)])


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


def seed_records(gt, detections: Mapping[str, List[List[dict]]]) -> Dict[str, List[ImageRecords]]:
    """variant -> one ``ImageRecords`` per seed (COCOeval's per-image matching, run once per detection set).

    Args:
        gt: pycocotools COCO of the val split every detection set was made on.
        detections: variant -> one COCO results list per seed.
    """
    img_ids = sorted(gt.getImgIds())
    return {v: [ImageRecords(_evaluated(gt, dets, img_ids)) for dets in per_seed] for v, per_seed in detections.items()}


def bootstrap_ap(gt, detections: Mapping[str, List[List[dict]]], resamples: int = 200,
                 rng_seed: int = 0) -> Dict[str, np.ndarray]:
    """Per variant, AP on each of ``resamples`` bootstrap image sets (mean over its seeds' detections);
    ``gt`` and ``detections`` as in ``seed_records``."""
    return bootstrap_records(seed_records(gt, detections), resamples, rng_seed)


def bootstrap_records(recs: Mapping[str, List[ImageRecords]], resamples: int = 200,
                      rng_seed: int = 0) -> Dict[str, np.ndarray]:
    """``bootstrap_ap`` on records already made (``seed_records``): variant -> float array ``[resamples]``;
    row b of every variant used the same images."""
    n_img = next((r.n_img for seed_recs in recs.values() for r in seed_recs), 0)
    rng = np.random.default_rng(rng_seed)
    out = {v: np.empty(resamples) for v in recs}
    for b in range(resamples):
        idx = rng.integers(0, n_img, size=n_img)
        for v, seed_recs in recs.items():
            out[v][b] = float(np.nanmean([r.ap(idx) for r in seed_recs]))
    return out


def bootstrap_difference(a: np.ndarray, b: np.ndarray, conf: float = CONF,
                         margin: Optional[float] = None) -> Dict[str, float]:
    """Percentile interval of A - B over paired resamples, the share of resamples where A > B,
    and with ``margin`` the bootstrap TOST p: the larger share of resamples outside ±margin
    on either side (below ALPHA about when the 90% percentile interval lies inside the margin)."""
    d = np.asarray(a) - np.asarray(b)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return {"lo": math.nan, "hi": math.nan, "p_better": math.nan, "n": 0, "p_equiv": math.nan}
    lo, hi = np.percentile(d, [50 * (1 - conf), 100 - 50 * (1 - conf)])
    p_equiv = math.nan if margin is None else float(max(np.mean(d <= -margin), np.mean(d >= margin)))
    return {"lo": float(lo), "hi": float(hi), "p_better": float(np.mean(d > 0)), "n": int(d.size),
            "p_equiv": p_equiv}


# ------------------------------------------------------------------ probability of improvement

IMPROVEMENT_RESAMPLES = 2000
IMPROVEMENT_SEED = 0


# Elements of one stacked pair comparison ([resamples, tasks, n, m]) at most: bounds the memory of a chunk of tasks.
_PAIRS_PER_CHUNK = 1 << 23


def _u_share(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mann-Whitney U of ``x`` against ``y`` over the last axis divided by n * m, i.e. P(X > Y) + 0.5 P(X = Y)
    over all run pairs; ``x`` ``[..., n]``, ``y`` ``[..., m]`` with the same leading shape (one value each)."""
    # U counted over the n * m pairs directly: the same statistic as scipy.stats.mannwhitneyu (the tests hold
    # them equal), which ranks every row and is 15x slower on [2000 resamples, 150 images, 3 seeds].
    above = np.count_nonzero(x[..., :, None] > y[..., None, :], axis=(-2, -1))
    ties = np.count_nonzero(x[..., :, None] == y[..., None, :], axis=(-2, -1))
    return (above + 0.5 * ties) / (x.shape[-1] * y.shape[-1])


def probability_of_improvement(x: Sequence[Sequence[float]], y: Sequence[Sequence[float]],
                               resamples: int = IMPROVEMENT_RESAMPLES, conf: float = CONF,
                               rng_seed: int = IMPROVEMENT_SEED) -> Dict[str, float]:
    """P(X > Y) as in Agarwal et al., "Deep RL at the edge of the statistical precipice", NeurIPS 2021
    (rliable's ``probability_of_improvement``), with its stratified bootstrap interval.

    Args:
        x, y: per task, the scores of X's and of Y's runs (task k of both is the same task; run
            counts may differ between X and Y). Non-finite scores are dropped.
    Returns:
        ``p``: per task the Mann-Whitney U of X's runs against Y's over n * m (the share of run pairs
        where X scores higher, ties counting half), averaged over tasks; ``lo`` / ``hi``: the percentile
        interval of the same over ``resamples`` stratified bootstrap draws (within each task X's runs and
        Y's runs are each resampled with replacement); ``tasks``. All NaN when a task has no runs of X or Y.

    Unlike a test of the mean difference, it says how often a run of X beats a run of Y, not by how much.
    Tasks with the same run counts (every val image of a study) are stacked and resampled in one array
    operation: 150 tasks x 2000 resamples take milliseconds, not a Python loop over tasks.
    """
    xs = [np.asarray([v for v in a if math.isfinite(v)], dtype=float) for a in x]
    ys = [np.asarray([v for v in b if math.isfinite(v)], dtype=float) for b in y]
    if not xs or len(xs) != len(ys) or any(a.size == 0 for a in xs) or any(b.size == 0 for b in ys):
        return {"p": math.nan, "lo": math.nan, "hi": math.nan, "tasks": len(xs)}
    by_shape: Dict[tuple, List[int]] = {}
    for k, (a, b) in enumerate(zip(xs, ys)):
        by_shape.setdefault((a.size, b.size), []).append(k)
    rng = np.random.default_rng(rng_seed)
    points, draws = np.zeros(len(xs)), np.zeros(resamples)
    for (n, m), tasks in by_shape.items():
        step = max(1, _PAIRS_PER_CHUNK // (resamples * n * m))
        for i in range(0, len(tasks), step):
            ks = tasks[i:i + step]
            a, b = np.stack([xs[k] for k in ks]), np.stack([ys[k] for k in ks])  # [g, n], [g, m]
            points[ks] = _u_share(a, b)
            # the strata: each task's runs are resampled within that task only -> [resamples, g, n] and [.., m]
            rows = np.arange(len(ks))[:, None]
            ra = a[rows, rng.integers(0, n, size=(resamples, len(ks), n))]
            rb = b[rows, rng.integers(0, m, size=(resamples, len(ks), m))]
            draws += _u_share(ra, rb).sum(axis=1)
    draws /= len(xs)
    lo, hi = np.percentile(draws, [50 * (1 - conf), 100 - 50 * (1 - conf)])
    return {"p": float(points.mean()), "lo": float(lo), "hi": float(hi), "tasks": len(xs)}


# ------------------------------------------------------------------ verdicts

def seed_evidence(paired: Mapping[str, object], margin: Optional[float]) -> Dict[str, object]:
    """The paired seed test as evidence: ``sign`` +1 / -1 (A above / below B), 0 (not
    significant) or None (can't tell); ``equivalent`` True / False / None; ``text``."""
    n = int(paired["n"])
    if n < MIN_SEEDS:
        return {"sign": None, "equivalent": None, "text": f"over seeds: too few seeds ({n}) to tell"}
    p, mean = float(paired["p"]), float(paired["mean"])
    if paired["degenerate"] and not p == 1.0:
        return {"sign": None, "equivalent": None,
                "text": f"over {n} seeds: can't tell (the same difference on every seed, so no "
                        "retraining noise to test against)"}
    sign = (1 if mean > 0 else -1) if p < ALPHA else 0
    text = f"over {n} matching seeds: {'significant' if sign else 'not significant'}, {fmt_p(p)}"
    equivalent = None
    if margin is not None and math.isfinite(float(paired["p_equiv"])):
        equivalent = float(paired["p_equiv"]) < ALPHA
        if equivalent:
            text += f", equivalent within {_margin_text(margin)}"
    return {"sign": sign, "equivalent": equivalent, "text": text}


def image_evidence(boot: Optional[Mapping[str, float]], margin: Optional[float]) -> Dict[str, object]:
    """The image bootstrap as evidence, in ``seed_evidence``'s terms (None: no bootstrap)."""
    if not boot or not boot.get("n"):
        return {"sign": None, "equivalent": None, "text": "over images: not available"}
    sig = significant(boot["lo"], boot["hi"])
    sign = (1 if boot["lo"] > 0 else -1) if sig else 0
    text = f"over images (bootstrap): {'significant' if sign else 'not significant'}"
    equivalent = None
    if margin is not None and math.isfinite(boot.get("p_equiv", math.nan)):
        equivalent = boot["p_equiv"] < ALPHA
        if equivalent:
            text += f", equivalent within {_margin_text(margin)}"
    return {"sign": sign, "equivalent": equivalent, "text": text}


def fmt_p(p: float) -> str:
    """"p = 0.032", "p < 0.001" (a printed 0.000 reads as certainty)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _margin_text(margin: float) -> str:
    return f"±{100 * margin:.1f} AP" if margin == EQUIVALENCE_MARGIN else f"±{margin:g}"


def decide(paired: Mapping[str, object], boot: Optional[Mapping[str, float]], margin: Optional[float],
           needs_images: bool = True) -> Dict[str, object]:
    """Both tests together: A - B is ``sign`` +1 / -1 only when every required test says so,
    0 when all could tell but did not agree on a side, None when one could not tell;
    ``equivalent`` True only when every required test shows it (None: some could not tell
    or no margin). ``why`` lists each test's word. ``needs_images`` is False for speed
    metrics, where the val images are not the noise that matters."""
    evs = [seed_evidence(paired, margin)] + ([image_evidence(boot, margin)] if needs_images else [])
    signs = [e["sign"] for e in evs]
    if any(s is None for s in signs):
        sign = None
    else:
        sign = signs[0] if signs[0] != 0 and all(s == signs[0] for s in signs) else 0
    eqs = [e["equivalent"] for e in evs]
    equivalent = None if any(e is None for e in eqs) else all(eqs)
    return {"sign": sign, "equivalent": equivalent, "why": "; ".join(str(e["text"]) for e in evs),
            "split": sign == 0 and len(set(signs)) > 1}
