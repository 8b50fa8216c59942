"""Anchor -> ground-truth assignment, in its own unit (cf. DETR ``models/matcher.py``).

Max-IoU assignment of RetinaNet (focal loss paper, arXiv 1708.02002, sec. 4
"Inference and Training": IoU >= 0.5 foreground, < 0.4 background, in between
ignored) and of the RPN (Faster R-CNN sec. 3.1.2, with 0.7 / 0.3); ATSS's
adaptive IoU threshold (Zhang et al., arXiv 1912.02424, Algorithm 1; the GFL
paper's assigner) and FCOS's point-in-box rule with per-level size ranges
(Tian et al., arXiv 1904.01355, sec. 3.2); and the region labelling of the
two-stage detectors' box heads (Fast R-CNN sec. 2.3, :func:`roi_assign`). All run under ``torch.no_grad()``:
assignment picks targets, it is not part of the graph.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectors.boxes import box_area, box_centres, box_iou, box_to_distance

__all__ = ["BACKGROUND", "IGNORE", "LOW_QUALITY_TARGETS", "max_iou_assign", "roi_assign", "atss_assign", "fcos_assign",
           "fcos_size_ranges", "assignment_figures"]

# Negative codes so that every value >= 0 can be a gt index.
BACKGROUND = -1  # classification target all zeros, no box loss
IGNORE = -2  # neither foreground nor background: no loss at all
# Which gt a low-quality match regresses to (``max_iou_assign``).
LOW_QUALITY_TARGETS = ("best_for", "own_best")


@torch.no_grad()
def max_iou_assign(
    anchors: Tensor,
    gt_boxes: Tensor,
    pos_iou: float = 0.5,
    neg_iou: float = 0.4,
    allow_low_quality: bool = True,
    low_quality_target: str = "best_for",
) -> Tensor:
    """Assign each anchor to a ground-truth box, to background, or to "ignore".

    Each anchor takes the gt it overlaps most (ties: the lower gt index) and is
    labelled by that IoU: ``>= pos_iou`` -> the gt's index, ``< neg_iou`` ->
    ``BACKGROUND``, in between -> ``IGNORE``.

    ``allow_low_quality``: additionally, every gt gets the anchor(s) with its
    highest IoU (all of them on ties) as positives even when the IoU is below
    ``pos_iou``, so small or oddly shaped boxes are not left without
    a positive. A gt that overlaps no anchor at all (best IoU 0) gets none: there
    is nothing to regress from.

    ``low_quality_target``: which gt such an anchor regresses to.

    - ``"best_for"``: the gt it is the best anchor for (where it is the best
      anchor of several, the one it overlaps most), so near-duplicate gts can
      still share out one anchor; SSD's reference ``match`` and mmdetection's
      ``MaxIoUAssigner`` do this.
    - ``"own_best"``: its own highest-IoU gt, whatever made it positive, as
      torchvision's ``Matcher.set_low_quality_matches_``, Detectron2 and
      py-faster-rcnn's ``anchor_target_layer`` (``gt_boxes[argmax_overlaps]``):
      an anchor never regresses to a gt it overlaps less than another, though a
      gt whose best anchor overlaps another gt more then ends up with no anchor.

    The focal loss paper does not mention low-quality matches; torchvision's
    ``Matcher`` (``allow_low_quality_matches=True`` in RetinaNet) and
    Detectron2's RetinaNet config enable them by default, and Faster R-CNN's RPN
    rule "the anchor with the highest IoU with a gt box" is the same idea.

    Args:
        anchors: float ``[A, 4]`` xyxy absolute pixels.
        gt_boxes: float ``[G, 4]`` xyxy absolute pixels.
        pos_iou: foreground threshold (inclusive).
        neg_iou: background threshold (exclusive); must be ``<= pos_iou``.
        allow_low_quality, low_quality_target: see above.
    Returns:
        int64 ``[A]``: gt index ``>= 0``, ``BACKGROUND`` or ``IGNORE``.
        ``G == 0`` -> all ``BACKGROUND``.
    """
    if neg_iou > pos_iou:
        raise ValueError(f"neg_iou ({neg_iou}) must be <= pos_iou ({pos_iou})")
    if low_quality_target not in LOW_QUALITY_TARGETS:
        raise ValueError(f"unknown low_quality_target '{low_quality_target}' "
                         f"(known: {', '.join(LOW_QUALITY_TARGETS)})")
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return _background(num_anchors, anchors.device)

    iou = box_iou(gt_boxes, anchors.to(gt_boxes.dtype))  # [G, A]
    best_iou, best_gt = iou.max(dim=0)  # per anchor, [A]

    assigned = best_gt.clone()
    assigned[best_iou < pos_iou] = IGNORE
    assigned[best_iou < neg_iou] = BACKGROUND

    if allow_low_quality:
        best_per_gt = iou.max(dim=1, keepdim=True).values  # [G, 1]
        # (gt, anchor) pairs where the anchor is (one of) the gt's best.
        is_best = (iou == best_per_gt) & (best_per_gt > 0)
        if low_quality_target == "own_best":
            lq_gt, has_lq = best_gt, is_best.any(dim=0)  # [A]: the anchor's own argmax gt
        else:
            # For each anchor, the gt with the highest IoU among those it is best for.
            masked = torch.where(is_best, iou, torch.full_like(iou, -1.0))
            lq_iou, lq_gt = masked.max(dim=0)  # [A]
            has_lq = lq_iou >= 0
        assigned[has_lq] = lq_gt[has_lq]
    return assigned


@torch.no_grad()
def roi_assign(proposals: Tensor, gt_boxes: Tensor, fg_iou: float = 0.5, bg_iou_lo: float = 0.1) -> Tensor:
    """Label region proposals for a box head (Fast R-CNN sec. 2.3, "Mini-batch sampling").

    Each proposal takes the gt it overlaps most (ties: the lower gt index):
    IoU ``>= fg_iou`` -> that gt's index (foreground); ``[bg_iou_lo, fg_iou)`` ->
    ``BACKGROUND``; below ``bg_iou_lo`` -> ``IGNORE`` ("the lower threshold of 0.1
    appears to act as a heuristic for hard example mining"). ``bg_iou_lo = 0``
    makes every non-foreground proposal background (R-CNN's fine-tuning, and
    Detectron's Faster R-CNN).

    Args:
        proposals: float ``[P, 4]`` xyxy absolute pixels.
        gt_boxes: float ``[G, 4]`` xyxy absolute pixels.
    Returns:
        int64 ``[P]``: gt index ``>= 0``, ``BACKGROUND`` or ``IGNORE``. ``G == 0``: every
        proposal has IoU 0, so ``BACKGROUND`` if ``bg_iou_lo == 0`` else ``IGNORE``.
    """
    if not 0 <= bg_iou_lo <= fg_iou:
        raise ValueError(f"need 0 <= bg_iou_lo ({bg_iou_lo}) <= fg_iou ({fg_iou})")
    num = proposals.shape[0]
    if gt_boxes.shape[0] == 0 or num == 0:
        return torch.full((num,), BACKGROUND if bg_iou_lo <= 0 else IGNORE, dtype=torch.int64,
                          device=proposals.device)
    best_iou, best_gt = box_iou(proposals.to(gt_boxes.dtype), gt_boxes).max(dim=1)  # [P]
    assigned = best_gt.clone()
    assigned[best_iou < fg_iou] = BACKGROUND
    assigned[best_iou < bg_iou_lo] = IGNORE
    return assigned


@torch.no_grad()
def assignment_figures(matched: Tensor, num_images: int) -> Dict[str, float]:
    """How imbalanced one batch's assignment is: the figures a dense detector reports to the loop.

    ``fg_fraction`` is positives / (positives + negatives): the share of foreground
    among the anchors (or points) the classification loss sees, IGNORE left out.
    The focal loss paper's case is about 1e-3 or less (~100k anchors per image, sec. 1);
    the smaller it is, the more easy negatives swamp plain cross entropy.
    ``anchors_per_image`` counts every anchor, ignored ones included.

    Args:
        matched: int64 assignment codes of the whole batch, any shape (``[B, A]`` or
            ``[B * A]``): gt index ``>= 0``, ``BACKGROUND`` or ``IGNORE``.
        num_images: B.
    Returns:
        ``{"fg_fraction": float, "anchors_per_image": float}``; ``fg_fraction`` is 0.0
        when no anchor counts.
    """
    pos = int((matched >= 0).sum())
    neg = int((matched == BACKGROUND).sum())
    return {"fg_fraction": pos / max(1, pos + neg), "anchors_per_image": matched.numel() / max(1, num_images)}


def _background(n: int, device) -> Tensor:
    """int64 ``[n]``, all ``BACKGROUND``: the start of every assignment."""
    return torch.full((n,), BACKGROUND, dtype=torch.int64, device=device)


def _check_level_sizes(per_level: Sequence[int], n: int, what: str) -> None:
    if sum(per_level) != n:
        raise ValueError(f"num_{what}_per_level sums to {sum(per_level)}, but there are {n} {what}")


@torch.no_grad()
def atss_assign(anchors: Tensor, num_anchors_per_level: Sequence[int], gt_boxes: Tensor,
                topk: int = 9) -> Tensor:
    """Adaptive Training Sample Selection (ATSS paper, Algorithm 1).

    For every gt: on each pyramid level take the ``topk`` anchors whose centres
    are closest (L2) to the gt centre; over all these candidates compute the
    IoU with the gt and the threshold ``mean + std`` (``std`` unbiased, as the
    reference implementation's ``torch.std``); a candidate is positive when its
    IoU reaches the threshold *and* its centre lies inside the gt. An anchor
    positive for several gts takes the one with the highest IoU (ties: the
    lower gt index). Everything else is background; nothing is ignored.

    Args:
        anchors: float ``[A, 4]`` xyxy absolute pixels, ordered level by level.
        num_anchors_per_level: anchors on each level, summing to ``A``.
        gt_boxes: float ``[G, 4]`` xyxy absolute pixels.
        topk: candidates per level and gt (paper: 9; fewer if the level is smaller).
    Returns:
        int64 ``[A]``: gt index ``>= 0`` or ``BACKGROUND``. ``G == 0`` -> all ``BACKGROUND``.
    """
    num_anchors = anchors.shape[0]
    _check_level_sizes(num_anchors_per_level, num_anchors, "anchors")
    assigned = _background(num_anchors, anchors.device)
    if gt_boxes.shape[0] == 0 or num_anchors == 0:
        return assigned
    anchors = anchors.to(gt_boxes.dtype)
    iou = box_iou(anchors, gt_boxes)  # [A, G]
    anchor_ctr = box_centres(anchors)
    dist = torch.cdist(anchor_ctr, box_centres(gt_boxes))  # [A, G]

    candidates: List[Tensor] = []  # per level, [k, G] anchor indices
    start = 0
    for n in num_anchors_per_level:
        if n > 0:
            k = min(topk, n)
            candidates.append(dist[start:start + n].topk(k, dim=0, largest=False).indices + start)
        start += n
    cand = torch.cat(candidates)  # [K, G]
    cand_iou = iou.gather(0, cand)  # [K, G]
    if cand.shape[0] > 1:
        thresh = cand_iou.mean(0) + cand_iou.std(0)
    else:  # a single candidate: no spread to measure; it must merely overlap
        thresh = torch.zeros_like(cand_iou[0])
    # Anchor centre inside the gt by more than 0.01 px on every side (as mmdet), then per candidate: [K, G]
    inside = (box_to_distance(anchor_ctr[:, None], gt_boxes[None]).min(dim=-1).values > 0.01).gather(0, cand)
    is_pos = (cand_iou >= thresh) & inside
    gt_idx = torch.arange(gt_boxes.shape[0], device=gt_boxes.device).expand_as(cand)

    # Positive (anchor, gt) pairs keep their IoU, the rest -1; then best gt per anchor.
    pair_iou = torch.full_like(iou, -1.0)
    pair_iou[cand[is_pos], gt_idx[is_pos]] = cand_iou[is_pos]
    best_iou, best_gt = pair_iou.max(dim=1)
    pos = best_iou >= 0
    assigned[pos] = best_gt[pos]
    return assigned


def fcos_size_ranges(strides: Sequence[float], multiple: float = 8.0) -> List[Tuple[float, float]]:
    """FCOS's regression ranges: level ``i`` keeps ``max(l, t, r, b)`` in ``(m*s_{i-1}, m*s_i]``, ``m = multiple``.

    With strides 8..128 and ``multiple = 8`` these are the paper's 0, 64, 128, 256,
    512, inf; the first level starts at 0 and the last is open.
    """
    bounds = [0.0] + [multiple * s for s in strides[:-1]] + [float("inf")]
    return list(zip(bounds[:-1], bounds[1:]))


@torch.no_grad()
def fcos_assign(points: Tensor, num_points_per_level: Sequence[int], strides: Sequence[float],
                gt_boxes: Tensor, size_ranges: Optional[Sequence[Tuple[float, float]]] = None,
                center_radius: Optional[float] = 1.5) -> Tensor:
    """FCOS point assignment (FCOS paper sec. 3.2, centre sampling from its later versions).

    A point is positive for a gt when it lies inside the gt box (with
    ``center_radius``: inside the box *and* within ``center_radius * stride``
    of the gt centre on both axes) and the largest of its distances ``l, t, r,
    b`` to the box sides falls in its level's range ``(lo, hi]``. A point
    positive for several gts takes the one with the smallest area (ties: the
    lower gt index), as the paper resolves ambiguous locations.

    Args:
        points: float ``[P, 2]`` (x, y) absolute pixels, ordered level by level.
        num_points_per_level: points per level, summing to ``P``.
        strides: one stride per level (pixels).
        gt_boxes: float ``[G, 4]`` xyxy absolute pixels.
        size_ranges: one ``(lo, hi)`` per level; ``None`` -> :func:`fcos_size_ranges`.
        center_radius: centre-sampling radius in strides, ``None`` to use the whole box.
    Returns:
        int64 ``[P]``: gt index ``>= 0`` or ``BACKGROUND``.
    """
    num_points = points.shape[0]
    if len(num_points_per_level) != len(strides):
        raise ValueError(f"{len(num_points_per_level)} levels but {len(strides)} strides")
    _check_level_sizes(num_points_per_level, num_points, "points")
    ranges = list(size_ranges) if size_ranges is not None else fcos_size_ranges(strides)
    if len(ranges) != len(strides):
        raise ValueError(f"{len(ranges)} size ranges for {len(strides)} levels")
    assigned = _background(num_points, points.device)
    if gt_boxes.shape[0] == 0 or num_points == 0:
        return assigned
    points = points.to(gt_boxes.dtype)
    counts = torch.as_tensor(list(num_points_per_level), device=points.device)

    def per_point(values) -> Tensor:  # one value per level -> one per point
        return torch.repeat_interleave(torch.as_tensor(values, dtype=points.dtype, device=points.device), counts)

    stride, lo, hi = per_point(strides), per_point([r[0] for r in ranges]), per_point([r[1] for r in ranges])

    ltrb = box_to_distance(points[:, None], gt_boxes[None])  # [P, G, 4]
    ok = ltrb.min(dim=-1).values > 0  # [P, G] inside the box
    if center_radius is not None:
        # |point - gt centre| < radius on both axes: [P, G, 2] -> [P, G]
        near = (points[:, None] - box_centres(gt_boxes)[None]).abs() < center_radius * stride[:, None, None]
        ok &= near.all(dim=-1)
    reach = ltrb.max(dim=-1).values
    ok &= (reach > lo[:, None]) & (reach <= hi[:, None])

    area = box_area(gt_boxes)
    cost = torch.where(ok, area.expand_as(ok), torch.full_like(ok, float("inf"), dtype=area.dtype))
    best_area, best_gt = cost.min(dim=1)
    pos = torch.isfinite(best_area)
    assigned[pos] = best_gt[pos]
    return assigned
