"""Region Proposal Network (Faster R-CNN, Ren et al., arXiv 1506.01497, sec. 3.1).

torchvision's ``RegionProposalNetwork`` supplies the pieces: the 3x3 conv + sibling
1x1 convs head (``RPNHead``), the anchors (``AnchorGenerator``, here on the declared strides), per-level top-N
before NMS, clipping, NMS at 0.7 and top-N after it (``filter_proposals``), and the
256-anchor sampler (``BalancedPositiveNegativeSampler``, up to 1:1). What
differs here, hence the subclass:

- labelling is ``detectors.assigners.max_iou_assign`` with the paper's rule:
  positive at IoU >= 0.7 or for the anchor(s) with a ground truth's highest IoU
  (even below 0.7), negative below 0.3, the rest ignored; such a low-quality
  positive regresses to its own highest-IoU ground truth (``low_quality_target``,
  as py-faster-rcnn and torchvision);
- anchors that cross the image border by more than ``allowed_border`` px are
  ignored in training (py-faster-rcnn's ``anchor_target_layer``, allowed_border 0;
  the paper, sec. 3.3: "If the boundary-crossing outliers are not ignored in
  training, they introduce large, difficult to correct error terms in the
  objective, and training does not converge"); the image is the resized one before
  padding, and only the anchors inside take part in the matching, so a ground
  truth's best anchor is its best inside anchor;
- ``min_size``: proposals with a side below it (px of the resized image) are
  dropped (py-faster-rcnn's RPN_MIN_SIZE; torchvision's 1e-3);
- the losses are injected (``rpn_cls``: sigmoid objectness, ``rpn_box``: box deltas),
  both summed over the sampled anchors and divided by their number (the paper's
  lambda = 10 with N_reg ~ 2400 anchor locations is about this balance);
- ``forward(..., keep_box_grad=True)`` leaves the proposal boxes attached to the
  box-regression output, for non-approximate joint training; torchvision (and
  approximate joint training) detach them.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers

from detectors.assigners import BACKGROUND, IGNORE, max_iou_assign
from detectors.models.anchors import StridedAnchorGenerator
from detectors.train.runtime import worker_mean

__all__ = ["RPN", "rpn_anchor_generator"]


def rpn_anchor_generator(strides: Sequence[int], anchor_sizes: Sequence[float], anchor_base: float,
                         scales_per_level: int = 3) -> StridedAnchorGenerator:
    """3 ratios (1:2, 1:1, 2:1) per scale and location. One level: the 3 ``anchor_sizes``
    (the Faster R-CNN paper's 9 anchors); a pyramid: ``anchor_base * stride`` on each level,
    one scale (the FPN paper, sec. 4.1: areas 32^2 to 512^2 on P2-P6 at anchor_base 8, 3 anchors
    per location), or 3 scales ``anchor_base * stride * (1, 2^(1/3), 2^(2/3))`` (RetinaNet's octaves)."""
    if len(strides) == 1:
        sizes: Tuple[Tuple[float, ...], ...] = (tuple(anchor_sizes),)
    else:
        octaves = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))[:scales_per_level]
        sizes = tuple(tuple(anchor_base * s * o for o in octaves) for s in strides)
    return StridedAnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(sizes), strides=strides)


class RPN(RegionProposalNetwork):
    """An RPN over a list of feature maps (one, or a pyramid sharing the head).

    Args:
        in_channels: width of the feature maps; strides: one per map.
        cls_loss: ``fn(logits [S, 1], targets [S, 1], reduction=...)`` (a ``CLS_LOSSES`` entry);
        box_loss: ``fn(deltas [P, 4], targets [P, 4], reduction=...)`` (a ``BOX_LOSSES`` entry).
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}``; before NMS per level,
            after it in total (per image).
        allowed_border: px an anchor may reach beyond the image and still train; ``None``: every
            anchor trains. low_quality_target: see ``max_iou_assign``. min_size: see above.
    """

    def __init__(self, in_channels: int, strides: Sequence[int], anchor_sizes: Sequence[float], anchor_base: float,
                 cls_loss: Callable, box_loss: Callable, *, pos_iou: float = 0.7, neg_iou: float = 0.3,
                 batch_size_per_image: int = 256, positive_fraction: float = 0.5,
                 pre_nms_top_n: Dict[str, int], post_nms_top_n: Dict[str, int], nms_iou: float = 0.7,
                 scales_per_level: int = 3, allowed_border: Optional[float] = 0.0,
                 low_quality_target: str = "own_best", min_size: float = 1e-3) -> None:
        if scales_per_level not in (1, 3):
            raise ValueError(f"scales_per_level is 1 or 3, got {scales_per_level}")
        anchors = rpn_anchor_generator(strides, anchor_sizes, anchor_base, scales_per_level)
        super().__init__(anchors, RPNHead(in_channels, anchors.num_anchors_per_location()[0]), pos_iou, neg_iou,
                         batch_size_per_image, positive_fraction, pre_nms_top_n, post_nms_top_n, nms_iou)
        self.pos_iou, self.neg_iou = pos_iou, neg_iou
        self.allowed_border, self.low_quality_target = allowed_border, low_quality_target
        self.min_size = min_size  # read by torchvision's filter_proposals
        self.cls_loss, self.box_loss = cls_loss, box_loss

    def inside(self, anchors: Tensor, image_size: Optional[Tuple[int, int]]) -> Tensor:
        """bool ``[A]``: the anchor lies within the (resized, unpadded) image, give or take
        ``allowed_border`` px (py-faster-rcnn's ``inds_inside``, in pixel-edge coordinates:
        x1 >= -border and x2 <= width + border, likewise in y). No image size: all inside."""
        if self.allowed_border is None or image_size is None:
            return torch.ones(anchors.shape[0], dtype=torch.bool, device=anchors.device)
        h, w = image_size
        b = self.allowed_border
        return ((anchors[:, 0] >= -b) & (anchors[:, 1] >= -b)
                & (anchors[:, 2] <= w + b) & (anchors[:, 3] <= h + b))

    @torch.no_grad()
    def assign_targets_to_anchors(self, anchors: List[Tensor], targets: List[Dict[str, Tensor]],
                                  image_sizes: Optional[List[Tuple[int, int]]] = None
                                  ) -> Tuple[List[Tensor], List[Tensor]]:
        """Per image: labels ``[A]`` (1 positive, 0 negative, -1 ignored, the sampler's convention)
        and the matched gt box of every anchor ``[A, 4]`` (meaningful for positives only).

        ``image_sizes`` (h, w) per image: anchors crossing its border (``allowed_border``) are
        ignored and left out of the matching; ``None``: no border (every anchor is inside).
        """
        labels, matched_boxes = [], []
        for i, (a, t) in enumerate(zip(anchors, targets)):
            inside = self.inside(a, image_sizes[i] if image_sizes is not None else None)
            matched = torch.full(a.shape[:1], IGNORE, dtype=torch.int64, device=a.device)
            matched[inside] = max_iou_assign(a[inside], t["boxes"], self.pos_iou, self.neg_iou,
                                             allow_low_quality=True, low_quality_target=self.low_quality_target)
            lab = torch.full(matched.shape, -1.0, device=a.device)
            lab[matched >= 0] = 1.0
            lab[matched == BACKGROUND] = 0.0
            gt = t["boxes"][matched.clamp(min=0)] if t["boxes"].shape[0] else torch.zeros_like(a)
            labels.append(lab)
            matched_boxes.append(gt.to(a.dtype))
        return labels, matched_boxes

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: List[Tensor],
                     regression_targets: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Objectness loss over the sampled anchors, box loss over the sampled positives,
        both summed and divided by the number of sampled anchors."""
        pos, neg = self.fg_bg_sampler(labels)
        pos = torch.nonzero(torch.cat(pos)).squeeze(1)
        sampled = torch.cat([pos, torch.nonzero(torch.cat(neg)).squeeze(1)])
        n = max(1.0, worker_mean(sampled.numel()))  # over several workers, their mean (detectors.train.runtime)
        labels_all = torch.cat(labels)
        cls = self.cls_loss(objectness.reshape(-1, 1)[sampled], labels_all[sampled, None], reduction="sum") / n
        box = self.box_loss(pred_bbox_deltas[pos], torch.cat(regression_targets)[pos].to(pred_bbox_deltas.dtype),
                            reduction="sum") / n
        return cls, box

    def forward(self, images: ImageList, features: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None,
                keep_box_grad: bool = False) -> Tuple[List[Tensor], Dict[str, Tensor]]:
        """Proposals per image (float ``[P_b, 4]`` xyxy in the transformed image's pixels, best
        objectness first) and, with ``targets``, ``{"loss_rpn_cls", "loss_rpn_box"}``."""
        objectness, deltas = self.head(features)
        anchors = self.anchor_generator(images, features)
        per_level = [o[0].numel() for o in objectness]  # A * H * W per level
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        # Approximate joint training (and torchvision) stop the gradient here: proposals are constants.
        boxes = self.box_coder.decode(deltas if keep_box_grad else deltas.detach(), anchors)
        proposals, _ = self.filter_proposals(boxes.view(len(anchors), -1, 4), objectness, images.image_sizes,
                                             per_level)
        losses: Dict[str, Tensor] = {}
        if targets is not None:
            labels, matched = self.assign_targets_to_anchors(anchors, targets, images.image_sizes)
            regression_targets = self.box_coder.encode(matched, anchors)
            cls, box = self.compute_loss(objectness, deltas, labels, regression_targets)
            losses = {"loss_rpn_cls": cls, "loss_rpn_box": box}
        return proposals, losses
