"""Anchor -> ground-truth assignment, in its own unit (cf. DETR ``models/matcher.py``).

Max-IoU assignment of RetinaNet (focal loss paper, arXiv 1708.02002, sec. 4
"Inference and Training": IoU >= 0.5 foreground, < 0.4 background, in between
ignored) and of the RPN (Faster R-CNN sec. 3.1.2, with 0.7 / 0.3). Runs under
``torch.no_grad()``: assignment picks targets, it is not part of the graph.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["BACKGROUND", "IGNORE", "max_iou_assign"]

# Negative codes so that every value >= 0 can be a gt index.
BACKGROUND = -1  # classification target all zeros, no box loss
IGNORE = -2  # neither foreground nor background: no loss at all


@torch.no_grad()
def max_iou_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality: bool = True,
) -> Tensor:
    """Assign each anchor to a ground-truth box, to background, or to "ignore".

    Each anchor takes the gt it overlaps most (ties: the lower gt index) and is
    labelled by that IoU: ``>= pos_iou`` -> the gt's index, ``< neg_iou`` ->
    ``BACKGROUND``, in between -> ``IGNORE``.

    ``allow_low_quality``: additionally, every gt gets the anchor(s) with its
    highest IoU (all of them on ties), assigned to *that* gt even when the IoU
    is below ``pos_iou``, so small or oddly shaped boxes are not left without
    a positive. Where one anchor is the best anchor of several gts, the gt it
    overlaps most wins (so near-duplicate gts can still share out one anchor). A gt that overlaps no anchor at all (best IoU 0) gets
    none: there is nothing to regress from.

    The focal loss paper does not mention low-quality matches; torchvision's
    ``Matcher`` (``allow_low_quality_matches=True`` in RetinaNet) and
    Detectron2's RetinaNet config enable them by default, and Faster R-CNN's RPN
    rule "the anchor with the highest IoU with a gt box" is the same idea.
    Unlike torchvision / Detectron2, which give such an anchor to its own
    argmax gt (so a gt can still end up with no anchor when its best anchor
    overlaps another gt more), here it goes to the gt it is the best anchor for.

    Args:
        anchors: float ``[A, 4]`` xyxy absolute pixels.
        gt_boxes: float ``[G, 4]`` xyxy absolute pixels.
        pos_iou: foreground threshold (inclusive).
        neg_iou: background threshold (exclusive); must be ``<= pos_iou``.
        allow_low_quality: see above.
    Returns:
        int64 ``[A]``: gt index ``>= 0``, ``BACKGROUND`` or ``IGNORE``.
        ``G == 0`` -> all ``BACKGROUND``.
    """
    if neg_iou > pos_iou:
        raise ValueError(f"neg_iou ({neg_iou}) must be <= pos_iou ({pos_iou})")
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return torch.full((num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device)

    iou = box_iou(gt_boxes, anchors.to(gt_boxes.dtype))  # [G, A]
    best_iou, best_gt = iou.max(dim=0)  # per anchor, [A]

    assigned = best_gt.clone()
    assigned[best_iou < pos_iou] = IGNORE
    assigned[best_iou < neg_iou] = BACKGROUND

    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
        # (gt, anchor) pairs where the anchor is (one of) the gt's best.
        is_best = (iou == best_per_gt) & (best_per_gt > 0)
        # For each anchor, the gt with the highest IoU among those it is best for.
        masked = torch.where(is_best, iou, torch.full_like(iou, -1.0))
        lq_iou, lq_gt = masked.max(dim=0)  # [A]
        has_lq = lq_iou >= 0
        assigned[has_lq] = lq_gt[has_lq]
    return assigned
