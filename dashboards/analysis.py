"""What the pages state: per-variant means with CIs, the winner and whether its lead holds.

    a = Analysis(load_study(store, name))
    a.summary("AP")        # variant, n, mean, lo, hi (95% t interval over seeds)
    a.headline()           # winner, runner-up, paired seed difference, image-bootstrap difference
    a.set_aside()          # variants that are no candidates for the winner or the frontier, and why
    a.difference(v, w, "AP")   # diff, display CI, both tests and their joint verdict (paper comparison)

The bootstrap over val images needs every compared trial's detections (trial
data "detections") and the val ground truth they were evaluated on, which the
driver stored once per val set (trial data "val_ground_truth", a digest of the
stored copy); when either is missing the pages say so and use the seed-based
interval alone. The pages read the store alone; the bootstrap's result is cached
in a file beside the pages (``BOOTSTRAP_CACHE``) under a key of the data it came
from (each compared trial's config hash and finish time, the ground truth's
digest, the resamples and the seed), so an unchanged study is not resampled again.
Each trial's per-image AP (``per_image_ap``, from the same evaluated records) is
cached with it: the probability of improvement takes the val images as its tasks.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from dashboards import stats
from dashboards.convergence import study_convergence
from dashboards.data import StudyData, dataset_identity
from detectors.evaluation.cocotools import coco_ground_truth

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0
BOOTSTRAP_CACHE = ".bootstrap.json"


class Analysis:
    def __init__(self, sd: StudyData, resamples: int = BOOTSTRAP_RESAMPLES, cache_path: Optional[str] = None) -> None:
        self.sd, self.resamples, self.cache_path = sd, resamples, cache_path
        self._boot: Optional[Dict[str, np.ndarray]] = None
        self._per_image: Optional[Dict[str, np.ndarray]] = None
        self.boot_note = ""
        self.boot_cached = False  # whether the last bootstrap came from the cache file
        self._conv: Optional[Dict[str, Dict[str, Any]]] = None

    # ------------------------------------------------------------- over seeds

    def summary(self, metric: str) -> pd.DataFrame:
        """One row per variant (sweep order): n, mean, sd, lo, hi of a final metric over seeds."""
        df = self.sd.metric(metric)
        rows = []
        for v in self.sd.variants:
            ci = stats.t_interval(df.loc[df["variant"] == v, "value"].tolist())
            rows.append({"variant": v, **ci})
        return pd.DataFrame(rows, columns=["variant", "mean", "lo", "hi", "half", "n", "sd"])

    def per_seed(self, variant: str, metric: str) -> Dict[int, float]:
        df = self.sd.metric(metric)
        df = df[df["variant"] == variant]
        return dict(zip(df["seed"].astype(int), df["value"].astype(float)))

    def ranking(self, metric: str = "AP") -> List[str]:
        s = self.summary(metric).dropna(subset=["mean"])
        return s.sort_values("mean", ascending=False, kind="mergesort")["variant"].tolist()

    # ---------------------------------------------------------- convergence

    def convergence(self) -> Dict[str, Dict[str, Any]]:
        """``dashboards.convergence.study_convergence`` of the study, computed once."""
        if self._conv is None:
            self._conv = study_convergence(self.sd)
        return self._conv

    def set_aside(self) -> Dict[str, str]:
        """variant -> why it is no candidate for the winner or the speed-accuracy frontier (a majority of
        its seeds still improving, input-independent or without detections), in sweep order."""
        return {v: m["text"] for v, m in self.convergence()["variants"].items() if m["marks"]}

    # ---------------------------------------------------------- over images

    def bootstrap(self) -> Optional[Dict[str, np.ndarray]]:
        """variant -> AP per bootstrap resample (seeds pooled), computed once; None if impossible."""
        if self._boot is not None or self.boot_note:
            return self._boot
        dets, gt_digests = self.sd.data("detections"), self.sd.data("val_ground_truth")
        finished = self.sd.finished
        missing = [t["trial_key"] for t in finished if t["trial_key"] not in dets]
        no_gt = [t["trial_key"] for t in finished if t["trial_key"] not in gt_digests]
        digests = {gt_digests.get(t["trial_key"]) for t in finished}
        if not finished:
            self.boot_note = "no finished trials"
        elif missing:
            self.boot_note = f"no stored detections for {len(missing)} of {len(finished)} trials"
        elif no_gt:
            self.boot_note = f"no stored val ground truth for {len(no_gt)} of {len(finished)} trials"
        elif len(digests) != 1:
            self.boot_note = "variants were evaluated on different val sets"
        elif (stored := self.sd.ground_truth(next(iter(digests)))) is None:
            self.boot_note = "the stored val ground truth is missing"
        else:
            key = self._boot_key(next(iter(digests)))
            self._boot, self._per_image = self._cached(key)
            self.boot_cached = self._boot is not None
            gt = coco_ground_truth(stored)
            if self._boot is None:
                by_variant = {v: [dets[t["trial_key"]] for t in finished if t["variant"] == v]
                              for v in self.sd.variants}
                recs = stats.seed_records(gt, by_variant)
                self._boot = stats.bootstrap_records(recs, self.resamples, BOOTSTRAP_SEED)
                n_img = len(gt.getImgIds())
                self._per_image = {v: np.stack([r.per_image_ap() for r in seed_recs]) if seed_recs
                                   else np.empty((0, n_img)) for v, seed_recs in recs.items()}
                self._save(key, self._boot, self._per_image)
            self.boot_note = (f"{self.resamples} bootstrap resamples of the {len(gt.getImgIds())} val images; "
                              f"in each, a variant's AP is the mean over its seeds (pooled), all variants "
                              f"on the same resampled images; AP by pycocotools COCOeval")
        return self._boot

    def per_image_ap(self) -> Optional[Dict[str, np.ndarray]]:
        """variant -> ``[seeds, val images]`` AP of each of its seeds on each val image alone (NaN on an image
        without ground truth; ``stats.ImageRecords.per_image_ap``), from the records the bootstrap evaluated
        and cached with it; None where the bootstrap is impossible (``boot_note`` says why)."""
        self.bootstrap()
        return self._per_image

    def _boot_key(self, gt_digest: str) -> str:
        """What the bootstrap's result depends on: the trials' identities (a re-run under the same
        hash has a new finish time), their variants, the ground truth, resamples and seed."""
        trials = sorted([t["variant"], t["trial_key"], t["config_hash"], str(t["finished_at"])]
                        for t in self.sd.finished)
        payload = {"trials": trials, "variants": self.sd.variants, "gt": gt_digest, "resamples": self.resamples,
                   "seed": BOOTSTRAP_SEED, "version": 2}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def _cached(self, key: str) -> Tuple[Optional[Dict[str, np.ndarray]], Optional[Dict[str, np.ndarray]]]:
        """The cached (resamples, per-image AP) under ``key``, or (None, None)."""
        if not self.cache_path or not os.path.isfile(self.cache_path):
            return None, None
        try:
            with open(self.cache_path) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None, None
        if entry.get("key") != key:
            return None, None
        return ({v: np.asarray(x, dtype=float) for v, x in entry["resamples"].items()},
                {v: np.asarray(x, dtype=float) for v, x in entry["per_image"].items()})

    def _save(self, key: str, boot: Dict[str, np.ndarray], per_image: Dict[str, np.ndarray]) -> None:
        if not self.cache_path:
            return
        os.makedirs(os.path.dirname(self.cache_path), exist_ok=True)
        tmp = f"{self.cache_path}.{os.getpid()}.tmp"
        # NaN (a resample without any defined AP, an image without ground truth) is written as NaN and read back
        with open(tmp, "w") as f:
            json.dump({"key": key, "resamples": {v: a.tolist() for v, a in boot.items()},
                       "per_image": {v: a.tolist() for v, a in per_image.items()}}, f)
        os.replace(tmp, self.cache_path)

    # ---------------------------------------------------------- differences

    def paired(self, a: str, b: str, metric: str = "AP") -> Dict[str, Any]:
        return stats.paired_difference(self.per_seed(a, metric), self.per_seed(b, metric),
                                       margin=stats.equivalence_margin(metric))

    def boot_diff(self, a: str, b: str) -> Optional[Dict[str, float]]:
        boot = self.bootstrap()
        if not boot or a not in boot or b not in boot:
            return None
        return stats.bootstrap_difference(boot[a], boot[b], margin=stats.EQUIVALENCE_MARGIN)

    def improvement(self, a: str, b: str, metric: str = "AP") -> Dict[str, Any]:
        """P(a > b) with its 95% stratified bootstrap interval (``stats.probability_of_improvement``).

        For AP with per-image records (``per_image_ap``) the tasks are the val images with ground truth and
        the runs each variant's seeds, scored by their AP on that image alone; the bootstrap resamples the
        seeds within each image. Otherwise (no stored detections or ground truth, or another metric) one
        task, the val set, with the seeds' final ``metric``. ``over`` says which ("images" or "the val set"),
        ``tasks`` how many, ``no_gt`` how many val images were left out for having no ground truth."""
        per = self.per_image_ap() if metric == "AP" else None
        if per is None or not per.get(a, np.empty(0)).size or not per.get(b, np.empty(0)).size:
            pi = stats.probability_of_improvement([list(self.per_seed(a, metric).values())],
                                                  [list(self.per_seed(b, metric).values())])
            return {**pi, "over": "the val set", "no_gt": 0}
        # An image without ground truth has no AP (NaN on every seed alike): it is no task.
        has_gt = np.isfinite(per[a]).any(axis=0) | np.isfinite(per[b]).any(axis=0)
        pi = stats.probability_of_improvement(per[a][:, has_gt].T, per[b][:, has_gt].T)
        return {**pi, "over": "images", "no_gt": int(np.count_nonzero(~has_gt))}

    def difference(self, a: str, b: str, metric: str) -> Optional[Dict[str, Any]]:
        """a - b in metric units: ``diff`` (of the means), a 95% CI ``lo``/``hi`` for display (the
        image bootstrap for AP when available, else the paired t interval; ``method`` says which),
        both tests (``paired``, ``boot``) and their joint verdict (``stats.decide``: ``sign``,
        ``equivalent``, ``why``). The bootstrap exists for AP only; other accuracy metrics then
        lack image evidence and stay undecided. Speed metrics need the seed test alone."""
        pa, pb = self.per_seed(a, metric), self.per_seed(b, metric)
        if not pa or not pb:
            return None
        diff = float(np.mean(list(pa.values())) - np.mean(list(pb.values())))
        paired = self.paired(a, b, metric)
        boot = self.boot_diff(a, b) if metric == "AP" else None
        out = dict(diff=diff, paired=paired, boot=boot,
                   **stats.decide(paired, boot, stats.equivalence_margin(metric),
                                  needs_images=not metric.startswith("speed/")))
        if boot is not None:
            out.update(lo=boot["lo"], hi=boot["hi"], method="bootstrap over images")
        else:
            out.update(lo=paired["lo"], hi=paired["hi"], method=f"paired t over {paired['n']} seeds")
        return out

    def headline(self, metric: str = "AP") -> Dict[str, Any]:
        """Winner by mean AP, the runner-up, and both tests of the lead (``stats.decide``), both among the
        variants not set aside (``set_aside``); ``set_aside`` lists the ranked ones that were, with why.
        When every ranked variant is set aside, or the variants span several datasets (``datasets``),
        ``winner`` is None; so it is when variants still improving
        rank above the best candidate (``ahead_improving``; ``best_settled`` names that candidate)."""
        ranked = self.ranking(metric)
        if not ranked:
            return {}
        aside = self.set_aside()
        order = [v for v in ranked if v not in aside]
        datasets = {dataset_identity(t["config"]) for t in self.sd.finished}
        out: Dict[str, Any] = {"winner": None, "runner_up": None, "ahead_improving": [], "datasets": len(datasets),
                               "set_aside": {v: aside[v] for v in ranked if v in aside}}
        if not order or len(datasets) > 1:  # AP on other data is no rival: the pages compare within each
            return out
        # A variant still improving that ranks above every candidate could only gain with more epochs:
        # the best settled variant does not win, the budget decides (the zoo crowned YOLOv1 at AP 0.006).
        marks = self.convergence()["variants"]
        out["ahead_improving"] = [v for v in ranked[:ranked.index(order[0])]
                                  if "still improving" in marks[v]["marks"]]
        if out["ahead_improving"]:
            s = self.summary(metric).set_index("variant")
            out.update(best_settled=order[0], best_settled_ci=s.loc[order[0]].to_dict())
            return out
        s = self.summary(metric).set_index("variant")
        out.update(winner=order[0], winner_ci=s.loc[order[0]].to_dict())
        if len(order) > 1:
            w, r = order[:2]
            d = self.difference(w, r, metric)
            out.update(runner_up=r, runner_up_ci=s.loc[r].to_dict(), paired=d["paired"], boot=d["boot"],
                       decision={k: d[k] for k in ("sign", "equivalent", "why", "split")},
                       seed_word=stats.seed_evidence(d["paired"], stats.equivalence_margin(metric))["text"],
                       lead=float(s.loc[w, "mean"] - s.loc[r, "mean"]))
        return out


def verdict(h: Dict[str, Any]) -> str:
    """One sentence on whether the winner's lead holds: significant only when the seed test
    (>= MIN_SEEDS seeds) and the image bootstrap both say so."""
    if not h:
        return "No finished trials."
    if h["winner"] is None and h.get("datasets", 1) > 1:
        return (f"No winner: the variants trained and were scored on {h['datasets']} different datasets, "
                "so their APs do not rank against each other.")
    if h["winner"] is None and h.get("ahead_improving"):
        ahead = h["ahead_improving"]
        verb = ("ranks above every settled variant but is" if len(ahead) == 1
                else "rank above every settled variant but are")
        return f"No winner: {', '.join(ahead)} {verb} still improving, so more epochs could only widen the gap."
    if h["winner"] is None:
        return "Every variant is set aside (still improving, input-independent or without detections): no winner."
    if h.get("runner_up") is None:
        return ("No other variant is a candidate (the rest are set aside): nothing to compare." if h["set_aside"]
                else "Only one variant finished: nothing to compare.")
    d = h["decision"]
    if d["sign"] == 1:
        head = "The lead is significant on both tests"
    elif d["sign"] is None:
        head = "Can't tell whether the lead is real"
    elif d["split"]:
        head = "The lead is not established: the tests disagree"
    else:
        head = "The lead is not significant"
    if d["equivalent"]:
        head += f"; the two are equivalent within ±{100 * stats.EQUIVALENCE_MARGIN:.1f} AP"
    return f"{head} ({d['why']})."


RULE = (f"A lead counts as significant only when both tests exclude 0 at 95% on the same side: the paired "
        f"t test over at least {stats.MIN_SEEDS} matching seeds (retraining noise) and the bootstrap over val "
        f"images (evaluation noise). Two variants count as equivalent only when two one-sided tests (TOST, 5%) "
        f"on both put the gap within ±{100 * stats.EQUIVALENCE_MARGIN:.1f} AP; an interval that merely "
        f"contains 0 shows neither.")



def latency_budgets(means: pd.DataFrame) -> Dict[str, Any]:
    """The speed-accuracy frontier read as budgets, from variant means (columns variant, lat, ap).

    Returns ``{"budgets": [(variant, from_ms, to_ms or None)], "dominated": {variant: frontier variant
    that is no slower and no less accurate}}``: with a latency budget in ``[from, to)`` the most
    accurate variant that fits is ``variant``.
    """
    from dashboards.figures import pareto_front

    means = means.dropna(subset=["lat", "ap"])
    front = pareto_front(means, "lat", "ap")
    by = means.set_index("variant")
    budgets = [(v, float(by.loc[v, "lat"]), float(by.loc[front[i + 1], "lat"]) if i + 1 < len(front) else None)
               for i, v in enumerate(front)]
    dominated = {}
    for v in means["variant"]:
        if v not in front:
            dominated[v] = next(f for f in front
                                if by.loc[f, "lat"] <= by.loc[v, "lat"] and by.loc[f, "ap"] >= by.loc[v, "ap"])
    return {"budgets": budgets, "dominated": dominated}
