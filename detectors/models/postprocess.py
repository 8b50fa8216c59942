"""Test-time selection shared by the dense detectors: per-level top-k, then NMS.

As in the RetinaNet paper (sec. 4, Inference): per level, keep at most ``topk``
candidates whose score exceeds ``score_thresh``; merge levels; class-wise NMS;
keep the ``max_dets`` best. NMS is torchvision's ``batched_nms``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms


def level_candidates(scores: Tensor, score_thresh: float, topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """``scores`` [A, K] probabilities of one level -> (scores [M], anchor index [M], label [M])."""
    num_classes = scores.shape[-1]
    flat = scores.flatten()
    keep = torch.nonzero(flat > score_thresh).squeeze(1)
    kept = flat[keep]
    if kept.numel() > topk:
        kept, order = kept.topk(topk)
        keep = keep[order]
    return kept, keep // num_classes, keep % num_classes


def merge_levels(boxes: List[Tensor], scores: List[Tensor], labels: List[Tensor],
                 nms_iou: float, max_dets: int) -> Dict[str, Tensor]:
    """Concatenate the levels' candidates, class-wise NMS, best ``max_dets`` (sorted by score)."""
    boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
    keep = batched_nms(boxes, scores, labels, nms_iou)[:max_dets]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
