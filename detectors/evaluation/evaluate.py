"""COCO evaluation through COCOeval (never our own AP code): faster-coco-eval or pycocotools.

    results = to_coco_results(predictions, dataset.cat_ids)     # COCO results format
    out = evaluate_coco(dataset.coco, results, dataset.class_names, dataset.cat_ids)
    out["metrics"]["AP"], out["per_class_ap"]["circle"], out["pr_curves"]["iou50"]["circle"]

The pycocotools plumbing shared with the dataset loader and the driver side
(``load_results``, ``coco_ground_truth``) and the choice of backend
(``bbox_eval``: faster-coco-eval when installed, else pycocotools; both give the
same numbers) are in ``detectors/evaluation/cocotools.py``.

Conventions of the returned dict (everything plain Python, JSON-able):

- ``metrics``: the first 9 of COCOeval's 12 summary numbers (``METRIC_NAMES``).
  COCOeval writes -1 where a metric is undefined (no ground truth of that
  size, e.g. ``APl`` when no object is larger than 96^2 px); we return ``None``
  there, so a -1 never gets averaged into a table.
- ``per_class_ap``: AP@[.5:.95] per class (area all, 100 detections), the mean
  of the valid (> -1) precision entries; ``None`` for a class with no ground truth.
- ``pr_curves``: precision at the 101 COCO recall thresholds, per class, at IoU
  0.5 and 0.75 (area all, 100 detections). COCOeval's -1 (no ground truth) and
  the zeros it leaves beyond the highest reached recall both appear as 0.0.
- ``summary``: COCOeval's printed summary, captured instead of printed.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from pycocotools.coco import COCO

from detectors.boxes import xyxy_to_xywh
from detectors.evaluation.cocotools import bbox_eval

__all__ = ["METRIC_NAMES", "to_coco_results", "evaluate_coco", "predict", "evaluate_model"]

# The order of COCOeval.stats for iouType "bbox" (cocoeval.py, _summarizeDets).
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100")


def to_coco_results(predictions: Sequence[dict], cat_ids: Sequence[int]) -> List[dict]:
    """Detections in COCO results format, with the dataset's original category ids.

    Args:
        predictions: one dict per image: ``image_id`` int, ``boxes`` float
            ``[N, 4]`` xyxy pixels, ``scores`` float ``[N]``, ``labels`` int ``[N]``
            contiguous ``0..K-1`` (tensors, arrays or lists).
        cat_ids: original category id of each label (``CocoDetection.cat_ids``).
    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h] (2 decimals), "score"}, ...]``.
    """
    results = []
    for pred in predictions:
        boxes = torch.as_tensor(pred["boxes"], dtype=torch.float64).reshape(-1, 4)
        scores = torch.as_tensor(pred["scores"], dtype=torch.float64).reshape(-1).tolist()
        labels = torch.as_tensor(pred["labels"]).reshape(-1).tolist()
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"image {pred['image_id']}: {len(boxes)} boxes, {len(scores)} scores, "
                             f"{len(labels)} labels")
        for box, score, label in zip(xyxy_to_xywh(boxes).tolist(), scores, labels):
            if not 0 <= label < len(cat_ids):
                raise ValueError(f"image {pred['image_id']}: label {label} out of range 0..{len(cat_ids) - 1}")
            results.append({"image_id": int(pred["image_id"]), "category_id": int(cat_ids[int(label)]),
                            "bbox": [round(v, 2) for v in box], "score": float(score)})
    return results


def evaluate_coco(coco_gt: COCO, results: List[dict], class_names: Optional[Sequence[str]] = None,
                  cat_ids: Optional[Sequence[int]] = None, backend: Optional[str] = None) -> dict:
    """Run COCOeval (bbox) on ``results`` against ``coco_gt``.

    Args:
        coco_gt: ground truth, e.g. ``CocoDetection.coco``.
        results: COCO results format (``to_coco_results``); may be empty. Not modified.
        class_names, cat_ids: per-label names and category ids; default to the
            ground truth's categories in sorted id order.
        backend: ``"faster"`` or ``"pycocotools"`` (``detectors.evaluation.cocotools.eval_backend``).
    Returns:
        ``{"metrics": {name: float | None}, "per_class_ap": {name: float | None},
        "pr_curves": {"recall": [101], "iou50": {name: [101]}, "iou75": {name: [101]}},
        "summary": str}`` (see the module docstring for the conventions).
    """
    cat_ids = list(cat_ids) if cat_ids is not None else sorted(coco_gt.getCatIds())
    if class_names is None:
        class_names = [c["name"] for c in coco_gt.loadCats(cat_ids)]
    if len(class_names) != len(cat_ids):
        raise ValueError(f"{len(class_names)} class names for {len(cat_ids)} category ids")
    ev, summary = bbox_eval(coco_gt, results, cat_ids, backend)
    metrics = {name: _defined(v) for name, v in zip(METRIC_NAMES, ev.stats)}
    precision = ev.eval["precision"]  # [T iou thresholds, R 101 recalls, K classes, A areas, M maxDets]
    area_all = ev.params.areaRngLbl.index("all")
    max_dets = ev.params.maxDets.index(100)
    per_class_ap, iou50, iou75 = {}, {}, {}
    t50, t75 = (int(np.argmin(np.abs(ev.params.iouThrs - t))) for t in (0.5, 0.75))
    for name, cat in zip(class_names, cat_ids):
        k = ev.params.catIds.index(cat)
        p = precision[:, :, k, area_all, max_dets]
        valid = p[p > -1]
        per_class_ap[name] = float(valid.mean()) if valid.size else None
        iou50[name] = np.clip(p[t50], 0.0, None).tolist()
        iou75[name] = np.clip(p[t75], 0.0, None).tolist()
    recall = [round(float(r), 2) for r in ev.params.recThrs]
    return {"metrics": metrics, "per_class_ap": per_class_ap,
            "pr_curves": {"recall": recall, "iou50": iou50, "iou75": iou75},
            "summary": summary}


def _defined(value) -> Optional[float]:
    """COCOeval's -1 ("no ground truth here") -> None; anything else a plain float."""
    value = float(value)
    return None if value < 0 else value


@torch.no_grad()
def predict(model, dataset, batch_size: int, device: torch.device) -> List[dict]:
    """Eval-mode inference over a ``CocoDetection``; boxes in the dataset images' pixels."""
    from torch.utils.data import DataLoader

    from detectors.data.coco import collate

    model.eval()
    preds = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        for out, tgt in zip(outputs, targets):
            preds.append({"image_id": int(tgt["image_id"]), **{k: v.cpu() for k, v in out.items()}})
    return preds


def evaluate_model(model, dataset, batch_size: int, device: torch.device) -> dict:
    """:func:`predict` then :func:`evaluate_coco` on the dataset's ground truth; the
    detections (COCO results format) ride along under ``"detections"``."""
    results = to_coco_results(predict(model, dataset, batch_size, device), dataset.cat_ids)
    out = evaluate_coco(dataset.coco, results, class_names=dataset.class_names, cat_ids=dataset.cat_ids)
    out["detections"] = results
    return out
