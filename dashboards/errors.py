"""Why a detector loses AP: TIDE's error breakdown and a class confusion matrix, from stored
detections and ground truth (COCO format: ``bbox`` is xywh pixels).

    tide_errors(gt, detections)     # {"AP50": ..., "dAP": {"cls": ..., ...}, "counts": {...}}
    confusion_counts(gt, detections, class_ids)
    trial_errors(gt, detections)    # both for one trial, JSON-able: what the driver stores as it finishes

TIDE (Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection
Errors", ECCV 2020, sec. 2) at foreground IoU ``t_f = 0.5`` and background IoU
``t_b = 0.1``. Detections are matched to ground truth per image and class as
COCO does (by score, each to the unmatched same-class box it overlaps most,
IoU >= t_f). Each false positive gets the first type that applies:

- ``loc``: IoU in [t_b, t_f] with a box of its class;
- ``cls``: IoU >= t_f with a box of another class;
- ``dupe``: IoU >= t_f with a box of its class that a higher-scoring detection took;
- ``bkg``: IoU <= t_b with every box;
- ``both``: anything else (wrong class and poorly localised);

and a ground truth no detection took, and that no ``cls`` / ``loc`` error could
take, is ``miss``. The AP each type costs (``dAP``) is AP50 with that type
alone fixed minus AP50 as it is (floored at 0): a ``cls`` error takes the
class of its box and a ``loc`` error its box's position, becoming a true
positive (only the highest-scoring such error per box; the others, and every
``dupe``, ``bkg`` and ``both``, are removed), a ``miss`` is removed from the
ground truth. AP is TIDE's: per class, 101-point interpolated precision over
recall (COCO's), averaged over every class with a detection or a ground truth.
This follows the reference implementation (``tidecv`` 1.0.1), which does not
install cleanly beside this stack (it needs ``opencv-python``, which clashes
with the ``opencv-contrib`` build here, plus seaborn at import); on random
cases the two agree (see the tests' note).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Sequence

import numpy as np

ERROR_TYPES = ("cls", "loc", "both", "dupe", "bkg", "miss")
ERROR_LABELS = {"cls": "classification", "loc": "localisation", "both": "both (cls + loc)",
                "dupe": "duplicate", "bkg": "background", "miss": "missed"}
FG_IOU, BG_IOU = 0.5, 0.1
# A finished trial's trial_errors, stored by the driver (``platform.runner.callbacks``) so that the pages
# need not run TIDE on every trial's detections (about 20 ms a trial). A stored result of another
# version is computed again: bump it when what tide_errors or confusion_counts return changes.
ERRORS_KEY = "errors"
ERRORS_VERSION = 1


def _xyxy(bbox: Sequence[float]) -> List[float]:
    x, y, w, h = bbox
    return [x, y, x + w, y + h]


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[P, 4]`` x ``[G, 4]`` xyxy -> ``[P, G]``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-12)


def _per_image(gt: dict, detections: List[dict], max_dets: int):
    gts, dets = defaultdict(list), defaultdict(list)
    for a in gt.get("annotations", []):
        if not a.get("iscrowd", 0):
            gts[a["image_id"]].append(a)
    for d in detections:
        dets[d["image_id"]].append(d)
    for img in gt.get("images", []):
        ds = sorted(dets.get(img["id"], []), key=lambda d: -d["score"])[:max_dets]
        yield img, gts.get(img["id"], []), ds


def average_precision(points: List[tuple], num_gt: int) -> float:
    """101-point interpolated AP (COCO's, as TIDE computes it) of ``(score, is_tp)`` points."""
    if num_gt <= 0 or not points:
        return 0.0
    points = sorted(points, key=lambda p: -p[0])
    tp = np.cumsum([1.0 if p[1] else 0.0 for p in points])
    precision = tp / np.arange(1, len(points) + 1) if points else np.zeros(0)
    recall = tp / num_gt
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    idx = np.searchsorted(recall, np.arange(101) / 100, side="left")  # TIDE's recall points
    return float(np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0).mean())


def _mean_ap(points: Dict[int, list], num_gt: Dict[int, int]) -> float:
    classes = [c for c in set(points) | set(num_gt) if points.get(c) or num_gt.get(c, 0) > 0]
    return float(np.mean([average_precision(points.get(c, []), num_gt.get(c, 0)) for c in classes])) if classes else 0.0


def classify(gt: dict, detections: List[dict], max_dets: int = 100) -> List[dict]:
    """Every detection (an image's ``max_dets`` highest-scoring) and every missed object with its TIDE type.

    Returns records in image order, each ``{"image_id", "type", "class", "bbox"}`` (xywh px) where ``type`` is
    ``"tp"`` or one of ``ERROR_TYPES``; a detection's also has ``"score"`` and ``"rank"`` (0-based, by score
    within its image), a ``cls`` / ``loc`` error ``"fix_class"`` and ``"fix"`` (the key of the box it would
    take, None when that box is already found), a miss ``"score": None``. See the module docstring.
    """
    records: List[dict] = []
    for img, gts, dets in _per_image(gt, detections, max_dets):
        g_box = np.array([_xyxy(a["bbox"]) for a in gts]).reshape(-1, 4)
        g_cls = np.array([a["category_id"] for a in gts])
        iou = _iou(np.array([_xyxy(d["bbox"]) for d in dets]).reshape(-1, 4), g_box)
        same = g_cls[None, :] == np.array([d["category_id"] for d in dets])[:, None] if len(dets) else iou > 1
        used = np.zeros(len(gts), dtype=bool)
        # A detection overlapping no box at FG_IOU matches none, and one under BG_IOU with every box is
        # background: most of a set's detections, settled without the per-detection work (the pages of a
        # thousand trials)
        top = iou.max(axis=1) if len(gts) else np.zeros(len(dets))
        kinds: List[dict] = []
        for p in range(len(dets)):
            if top[p] < FG_IOU:
                kinds.append({})
                continue
            cand = np.where(same[p] & ~used, iou[p], 0.0)
            g = int(cand.argmax()) if len(gts) else -1
            kinds.append({"type": "tp"} if g >= 0 and cand[g] >= FG_IOU else {})
            if kinds[-1]:
                used[g] = True
        fixable = set()
        for p, err in enumerate(kinds):
            if err:
                continue
            err["fix"] = None
            if top[p] < BG_IOU:  # (no box at all, too)
                err["type"] = "bkg"
                continue
            same_iou, other_iou = np.where(same[p], iou[p], 0.0), np.where(same[p], 0.0, iou[p])
            if BG_IOU <= same_iou.max() <= FG_IOU:
                err.update(type="loc", fix=int(same_iou.argmax()))
            elif other_iou.max() >= FG_IOU:
                err.update(type="cls", fix=int(other_iou.argmax()))
            elif np.where(used, same_iou, 0.0).max() >= FG_IOU:
                err["type"] = "dupe"
            elif iou[p].max() <= BG_IOU:
                err["type"] = "bkg"
            else:
                err["type"] = "both"
            if err["fix"] is not None:
                g = err["fix"]
                err["fix_class"] = int(g_cls[g])
                # an already found box: fixing this error could only duplicate it
                err["fix"] = None if used[g] else (img["id"], g)
                if err["fix"] is not None:
                    fixable.add(g)
        for p, (d, kind) in enumerate(zip(dets, kinds)):
            records.append({"image_id": img["id"], "class": d["category_id"], "bbox": d["bbox"],
                            "score": d["score"], "rank": p, **kind})
        records += [{"image_id": img["id"], "type": "miss", "class": int(g_cls[g]), "bbox": gts[g]["bbox"],
                     "score": None} for g in range(len(gts)) if not used[g] and g not in fixable]
    return records


def tide_errors(gt: dict, detections: List[dict], max_dets: int = 100) -> dict:
    """TIDE's main errors of one detection set (see the module docstring).

    Returns ``{"AP50": float, "dAP": {type: float}, "counts": {type: int}}``, AP in [0, 1].
    """
    records = classify(gt, detections, max_dets)
    num_gt: Dict[int, int] = defaultdict(int)
    for _, gts, _ in _per_image(gt, [], max_dets):
        for a in gts:
            num_gt[a["category_id"]] += 1
    tps: Dict[int, list] = defaultdict(list)        # class -> (score, True) of true positives
    errors = [r for r in records if r["type"] != "tp"]
    best: Dict[tuple, tuple] = {}                   # box key -> (score, error index) fixing it, the highest score
    for i, e in enumerate(errors):
        if e.get("fix") is not None and (e["fix"] not in best or best[e["fix"]][0] < e["score"]):
            best[e["fix"]] = (e["score"], i)
    for r in records:
        if r["type"] == "tp":
            tps[r["class"]].append((r["score"], True))
    chosen = {e for _, e in best.values()}

    def ap_fixing(kind: str) -> float:
        points = {c: list(v) for c, v in tps.items()}
        counts = dict(num_gt)
        for i, e in enumerate(errors):
            if e["type"] != kind:
                if e["type"] != "miss":
                    points.setdefault(e["class"], []).append((e["score"], False))
            elif kind == "miss":
                counts[e["class"]] -= 1
            elif kind in ("cls", "loc") and i in chosen:
                c = e["fix_class"] if kind == "cls" else e["class"]
                points.setdefault(c, []).append((e["score"], True))
        return _mean_ap(points, counts)

    base = ap_fixing("")
    return {"AP50": base, "dAP": {k: max(ap_fixing(k) - base, 0.0) for k in ERROR_TYPES},
            "counts": {k: sum(e["type"] == k for e in errors) for k in ERROR_TYPES}}


def confusion_counts(gt: dict, detections: List[dict], class_ids: Sequence[int], iou: float = FG_IOU) -> np.ndarray:
    """Counts ``[K + 1, K + 1]``: rows the true class (last row: background, a detection on no
    object), columns the detected class (last column: missed, an object nobody detected).

    Threshold-free, so detectors with differently calibrated scores compare: per image the ``n``
    highest-scoring detections, ``n`` its number of objects, each matched (by score) to the
    unmatched object of any class it overlaps most at IoU >= ``iou``.
    """
    index = {c: i for i, c in enumerate(class_ids)}
    k = len(class_ids)
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    for _, gts, dets in _per_image(gt, detections, 100):
        dets = dets[:len(gts)]
        ov = _iou(np.array([_xyxy(d["bbox"]) for d in dets]).reshape(-1, 4),
                  np.array([_xyxy(a["bbox"]) for a in gts]).reshape(-1, 4))
        used = np.zeros(len(gts), dtype=bool)
        for p, d in enumerate(dets):
            cand = np.where(used, 0.0, ov[p])
            g = int(cand.argmax())
            if cand[g] >= iou:
                used[g] = True
                counts[index[gts[g]["category_id"]], index[d["category_id"]]] += 1
            else:
                counts[k, index[d["category_id"]]] += 1
        for g in np.flatnonzero(~used):
            counts[index[gts[g]["category_id"]], k] += 1
    return counts


def trial_errors(gt: dict, detections: List[dict]) -> dict:
    """One trial's :func:`tide_errors` and :func:`confusion_counts` (over the ground truth's categories
    in id order), JSON-able: ``{"version", "AP50", "dAP", "counts", "confusion": [[int]]}``."""
    class_ids = [c["id"] for c in sorted(gt.get("categories", []), key=lambda c: c["id"])]
    return {"version": ERRORS_VERSION, **tide_errors(gt, detections),
            "confusion": confusion_counts(gt, detections, class_ids).tolist()}


def study_errors(sd) -> dict:
    """TIDE per finished trial and confusion counts per variant (seeds pooled), from the store: a trial's
    stored :func:`trial_errors` (``ERRORS_KEY``), else computed from its detections.

    Returns ``{"tide": DataFrame(trial_key, variant, seed, AP50, dAP/<type>, n/<type>),
    "confusion": {variant: counts}, "classes": [names]}``, or ``{"note": why not}``.
    """
    import pandas as pd

    stored, digests = sd.data(ERRORS_KEY), sd.data("val_ground_truth")
    stored = {k: r for k, r in stored.items() if r.get("version") == ERRORS_VERSION}
    # the detections (2,400 a trial on 150 val images) are read only for trials without a stored result
    dets = sd.data("detections") if any(t["trial_key"] not in stored for t in sd.finished) else {}
    finished = [t for t in sd.finished if (t["trial_key"] in stored or t["trial_key"] in dets)
                and t["trial_key"] in digests]
    if not finished:
        return {"note": "no stored detections with their val ground truth"}
    gts: Dict[str, dict] = {}
    rows, confusion, classes = [], {}, None
    for t in finished:
        digest = digests[t["trial_key"]]
        if digest not in gts:
            gts[digest] = sd.ground_truth(digest)
        gt = gts[digest]
        if gt is None:
            continue
        cats = sorted(gt.get("categories", []), key=lambda c: c["id"])
        names = [c.get("name", str(c["id"])) for c in cats]
        classes = classes or names
        r = stored.get(t["trial_key"]) or trial_errors(gt, dets[t["trial_key"]])
        rows.append({"trial_key": t["trial_key"], "variant": t["variant"], "seed": t["seed"], "AP50": r["AP50"],
                     **{f"dAP/{k}": v for k, v in r["dAP"].items()}, **{f"n/{k}": v for k, v in r["counts"].items()}})
        if names == classes:
            c = np.asarray(r["confusion"], dtype=np.int64)
            confusion[t["variant"]] = confusion.get(t["variant"], 0) + c
    if not rows:
        return {"note": "the stored val ground truth is missing"}
    return {"tide": pd.DataFrame(rows), "confusion": confusion, "classes": classes}
