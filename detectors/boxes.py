"""The one box module: format conversions, clipping, IoU, centres, side distances and the box coder.

Every box inside ``detectors/`` is a float ``[N, 4]`` tensor in xyxy absolute
pixels ``(x1, y1, x2, y2)``. Other formats (COCO xywh) exist only at the edges
(loading annotations, writing detections) and are converted here, so a format
bug has exactly one place to live (cf. detectron2 ``structures/boxes.py``).

``box_area`` and ``box_iou`` are torchvision's, re-exported rather than
rewritten. The point <-> side-distance pair is the box encoding of the
one-point-per-location heads (FCOS, ATSS, GFL) and of the point-in-box tests of
their assigners. Functions written with ``...`` indexing broadcast over leading
dimensions: ``box_to_distance(points[:, None], boxes[None])`` gives every
(point, box) pair, ``[P, G, 4]``.
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
from torch import Tensor
from torchvision.ops import box_area, box_iou

__all__ = [
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "clip_boxes",
    "box_area",
    "box_iou",
    "aligned_box_iou",
    "box_centres",
    "distance_to_box",
    "box_to_distance",
    "BoxCoder",
]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``(x, y, w, h)`` (top-left corner + size) -> ``(x1, y1, x2, y2)``.

    Args:
        boxes: float ``[N, 4]`` xywh, absolute pixels.
    Returns:
        float ``[N, 4]`` xyxy, absolute pixels (a new tensor).
    """
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(x1, y1, x2, y2)`` -> COCO ``(x, y, w, h)``; used when writing detections.

    Args:
        boxes: float ``[N, 4]`` xyxy, absolute pixels.
    Returns:
        float ``[N, 4]`` xywh, absolute pixels (a new tensor).
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clip xyxy boxes to the image ``[0, width] x [0, height]``.

    Args:
        boxes: float ``[N, 4]`` xyxy, absolute pixels.
        height, width: image size in pixels.
    Returns:
        float ``[N, 4]`` xyxy (a new tensor). Boxes fully outside the image
        collapse to zero area; removing them is the caller's decision.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    x1 = x1.clamp(min=0, max=width)
    x2 = x2.clamp(min=0, max=width)
    y1 = y1.clamp(min=0, max=height)
    y2 = y2.clamp(min=0, max=height)
    return torch.stack((x1, y1, x2, y2), dim=-1)


def aligned_box_iou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of row-paired xyxy boxes ``[N, 4]`` x ``[N, 4]`` -> ``[N]`` (``box_iou``'s diagonal).

    ``eps`` keeps two zero-area boxes at IoU 0 instead of NaN.
    """
    wh = (torch.min(a[:, 2:], b[:, 2:]) - torch.max(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    return inter / (area_a + area_b - inter + eps)


def box_centres(boxes: Tensor) -> Tensor:
    """xyxy ``[..., 4]`` -> ``[..., 2]`` (x, y) centres, ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return torch.stack(((boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2), dim=-1)


def distance_to_box(points: Tensor, dist: Tensor) -> Tensor:
    """Points ``[..., 2]`` and side distances ``[..., 4]`` (l, t, r, b, pixels) -> xyxy ``[..., 4]``."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack((x - dist[..., 0], y - dist[..., 1], x + dist[..., 2], y + dist[..., 3]), dim=-1)


def box_to_distance(points: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`distance_to_box`: ``[..., 4]`` (l, t, r, b) from points ``[..., 2]`` to xyxy
    ``boxes`` ``[..., 4]`` (broadcast); a side is negative where the point lies outside it."""
    x, y = points[..., 0], points[..., 1]
    return torch.stack((x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y), dim=-1)


class BoxCoder:
    """R-CNN box parametrisation (Fast R-CNN eq. / Faster R-CNN sec. 3.1.2).

    For a reference box (anchor or proposal) with centre ``(xa, ya)`` and size
    ``(wa, ha)`` and a target box ``(x, y, w, h)``::

        dx = wx * (x - xa) / wa      dy = wy * (y - ya) / ha
        dw = ww * log(w / wa)        dh = wh * log(h / ha)

    Same formulas and defaults as torchvision's ``BoxCoder`` (RetinaNet uses
    weights ``(1, 1, 1, 1)``, Faster R-CNN's box head ``(10, 10, 5, 5)``).
    All boxes are float ``[N, 4]`` xyxy absolute pixels; ``N == 0`` is fine.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        clamp: float = math.log(1000.0 / 16),
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"BoxCoder needs 4 weights (wx, wy, ww, wh), got {tuple(weights)}")
        self.weights: Tuple[float, float, float, float] = tuple(float(w) for w in weights)  # type: ignore[assignment]
        # Bound on the *unweighted* dw, dh before exp(): an untrained head can
        # emit huge values and exp() would overflow to inf. log(1000/16) lets a
        # 16 px anchor grow to 1000 px at most (torchvision/detectron2 default).
        self.clamp = float(clamp)

    def encode(self, ref_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Regression targets of ``gt_boxes`` relative to ``ref_boxes``.

        Args:
            ref_boxes: float ``[N, 4]`` xyxy reference boxes (anchors), positive size.
            gt_boxes: float ``[N, 4]`` xyxy matched ground-truth boxes, positive size.
        Returns:
            float ``[N, 4]`` weighted deltas ``(dx, dy, dw, dh)``.
        """
        ref_boxes = ref_boxes.to(gt_boxes.dtype)
        rw, rh, rx, ry = _size_and_centre(ref_boxes)
        gw, gh, gx, gy = _size_and_centre(gt_boxes)
        wx, wy, ww, wh = self.weights
        dx = wx * (gx - rx) / rw
        dy = wy * (gy - ry) / rh
        dw = ww * torch.log(gw / rw)
        dh = wh * torch.log(gh / rh)
        return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """Apply ``deltas`` to ``ref_boxes``; the exact inverse of :meth:`encode`.

        Args:
            deltas: float ``[N, 4]`` weighted ``(dx, dy, dw, dh)``.
            ref_boxes: float ``[N, 4]`` xyxy reference boxes.
        Returns:
            float ``[N, 4]`` xyxy boxes, absolute pixels (not clipped to the image).
        """
        ref_boxes = ref_boxes.to(deltas.dtype)
        rw, rh, rx, ry = _size_and_centre(ref_boxes)
        wx, wy, ww, wh = self.weights
        dx = deltas[:, 0] / wx
        dy = deltas[:, 1] / wy
        # Only an upper bound: a very negative dw just gives a tiny box, but a
        # large one overflows exp() and poisons the loss with inf/NaN.
        dw = (deltas[:, 2] / ww).clamp(max=self.clamp)
        dh = (deltas[:, 3] / wh).clamp(max=self.clamp)

        cx = dx * rw + rx
        cy = dy * rh + ry
        half_w = 0.5 * torch.exp(dw) * rw
        half_h = 0.5 * torch.exp(dh) * rh
        return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def _size_and_centre(boxes: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``[N, 4]`` xyxy -> four ``[N]`` tensors: width, height, centre x, centre y."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return w, h, boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h
