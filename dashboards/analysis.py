"""What the pages state: per-variant means with CIs, the winner and whether its lead holds.

    a = Analysis(load_study(store, name))
    a.summary("AP")        # variant, n, mean, lo, hi (95% t interval over seeds)
    a.headline()           # winner, runner-up, paired seed difference, image-bootstrap difference
    a.difference(v, w, "AP")   # (diff, lo, hi, method) used by the paper comparison

The bootstrap over val images needs every compared trial's detections (trial
data "detections") and the val ground truth they were evaluated on, which the
driver stored once per val set (trial data "val_ground_truth", a digest of the
stored copy); when either is missing the pages say so and use the seed-based
interval alone. Nothing here reads a file: the pages read the store alone.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd

from dashboards import stats
from dashboards.data import StudyData
from detectors.cocotools import coco_ground_truth

BOOTSTRAP_RESAMPLES = 200
BOOTSTRAP_SEED = 0


class Analysis:
    def __init__(self, sd: StudyData, resamples: int = BOOTSTRAP_RESAMPLES) -> None:
        self.sd, self.resamples = sd, resamples
        self._boot: Optional[Dict[str, np.ndarray]] = None
        self.boot_note = ""

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
            gt = coco_ground_truth(stored)
            by_variant = {v: [dets[t["trial_key"]] for t in finished if t["variant"] == v]
                          for v in self.sd.variants}
            self._boot = stats.bootstrap_ap(gt, by_variant, self.resamples, BOOTSTRAP_SEED)
            self.boot_note = (f"{self.resamples} bootstrap resamples of the {len(gt.getImgIds())} val images; "
                              f"in each, a variant's AP is the mean over its seeds (pooled), all variants "
                              f"on the same resampled images; AP by pycocotools COCOeval")
        return self._boot

    # ---------------------------------------------------------- differences

    def paired(self, a: str, b: str, metric: str = "AP") -> Dict[str, Any]:
        return stats.paired_difference(self.per_seed(a, metric), self.per_seed(b, metric))

    def boot_diff(self, a: str, b: str) -> Optional[Dict[str, float]]:
        boot = self.bootstrap()
        if not boot or a not in boot or b not in boot:
            return None
        return stats.bootstrap_difference(boot[a], boot[b])

    def difference(self, a: str, b: str, metric: str) -> Optional[Tuple[float, float, float, str]]:
        """a - b in metric units with a 95% CI: the image bootstrap for AP when it is available,
        else the paired t interval over matching seeds."""
        pa, pb = self.per_seed(a, metric), self.per_seed(b, metric)
        if not pa or not pb:
            return None
        diff = float(np.mean(list(pa.values())) - np.mean(list(pb.values())))
        if metric == "AP":
            bd = self.boot_diff(a, b)
            if bd is not None:
                return diff, bd["lo"], bd["hi"], "bootstrap over images"
        pd_ = self.paired(a, b, metric)
        return diff, pd_["lo"], pd_["hi"], f"paired t over {len(pd_['seeds'])} seeds"

    def headline(self, metric: str = "AP") -> Dict[str, Any]:
        """Winner by mean AP, the runner-up, and both tests of the lead."""
        order = self.ranking(metric)
        if not order:
            return {}
        s = self.summary(metric).set_index("variant")
        out: Dict[str, Any] = {"winner": order[0], "winner_ci": s.loc[order[0]].to_dict(), "runner_up": None}
        if len(order) > 1:
            w, r = order[:2]
            paired = self.paired(w, r, metric)
            boot = self.boot_diff(w, r) if metric == "AP" else None
            sig_seed = stats.significant(paired["lo"], paired["hi"])
            sig_boot = stats.significant(boot["lo"], boot["hi"]) if boot else None
            out.update(runner_up=r, runner_up_ci=s.loc[r].to_dict(), paired=paired, boot=boot,
                       significant_seeds=sig_seed, significant_images=sig_boot,
                       lead=float(s.loc[w, "mean"] - s.loc[r, "mean"]))
        return out


def verdict(h: Dict[str, Any]) -> str:
    """One sentence on whether the winner's lead is significant."""
    if not h:
        return "No finished trials."
    if h.get("runner_up") is None:
        return "Only one variant finished: nothing to compare."
    parts = []
    ss, si = h.get("significant_seeds"), h.get("significant_images")
    n = len(h["paired"]["seeds"])
    if ss is None:
        parts.append(f"over seeds: not testable ({n} matching seed{'s' if n != 1 else ''})")
    else:
        parts.append(f"over {n} matching seeds: {'significant' if ss else 'not significant'}")
    if si is None:
        parts.append("over images: not available")
    else:
        parts.append(f"over images (bootstrap): {'significant' if si else 'not significant'}")
    lead_ok = ss or si
    head = "The lead is significant" if lead_ok else "The lead is not significant"
    if ss is not None and si is not None and ss != si:
        head = "The lead is significant on one test only"
    return f"{head} ({'; '.join(parts)})."

