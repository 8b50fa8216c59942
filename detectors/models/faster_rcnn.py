"""Faster R-CNN (Ren et al., arXiv 1506.01497): an RPN and a Fast R-CNN head on one backbone.

``fpn: false`` reads one map (C4, stride 16), as the paper; ``fpn: true`` an FPN's
P2-P6 for the RPN and P2-P5 for the regions (Lin et al., arXiv 1612.03144, sec. 4).
``training`` picks how the two networks learn together (paper sec. 3.2):

- ``alternating``: the paper's 4-step scheme, as four phases of one trial
  (``faster_rcnn_phases``): (1) ``rpn``: the RPN on its own backbone
  (``rpn_backbone``); (2) ``detector``: a Fast R-CNN on its own backbone
  (``backbone``) trained on the frozen step-1 RPN's proposals; (3) ``rpn_shared``:
  the RPN now reads the step-2 backbone, frozen, and only its own layers train;
  (4) ``detector_shared``: only the Fast R-CNN layers train, on the new proposals.
  After step 3 the two networks share every conv layer; ``rpn_backbone`` is not
  used again. ``begin_phase`` switches what the forward computes and where the
  RPN reads from; it copies no weights, so re-entering a phase on resume is the
  same as entering it.
- ``approximate_joint``: one phase, one summed loss; the proposal boxes are
  constants for the region stage (RoIAlign gives no gradient in the boxes).
- ``non_approximate_joint``: one phase; the proposals keep their dependence on
  the RPN's box regression, and the regions are read by an RoI warping layer
  differentiable in the box coordinates (``roi_features.roi_warp``), so the
  detection loss trains the RPN's regression too.

Eval-mode ``stage_times`` (ms), as the paper's Table 5: ``features`` (the shared
conv layers), ``proposals`` (RPN head, decoding, NMS) and ``regions``.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Annotated, Callable, Dict, List, Literal, Optional

from torch import Tensor, nn

from detectors.losses import BOX_LOSSES, CLS_LOSSES, SOFTMAX_LOSSES, smooth_l1_loss
from detectors.models.anchors import SIZE_DIVISIBLE
from detectors.models.common import Count, Epochs, ImageSide, RoISize, RoIsPerImage, UnitLow, Width
from detectors.models.contract import LossRole, register_detector
from detectors.models.fast_rcnn import ROI_ROLES, roi_head_for
from detectors.models.roi_heads import RoIHeads
from detectors.models.rpn import RPN
from detectors.models.two_stage import (StageClock, fpn_backbone, make_transform, maybe_no_grad, scale_preset,
                                        single_level_backbone)
from detectors.registry import Interval, OpenUnit

AllowedBorder = Annotated[float, Interval(ge=0, le=4096)]  # px an anchor may reach beyond the image
ProposalSide = Annotated[float, Interval(ge=0, le=4096)]   # px of the resized image

SCHEMES = ("alternating", "approximate_joint", "non_approximate_joint")
# Alternating training's steps: the losses each computes, and whether the RPN reads the detector's backbone.
STEPS = {"rpn": ({"rpn"}, False), "detector": ({"roi"}, False),
         "rpn_shared": ({"rpn"}, True), "detector_shared": ({"roi"}, True)}


class FasterRCNN(nn.Module):
    """``model(images, targets=None)``, torchvision style.

    Args:
        backbone: ``NamedFeatures`` (one map, or P2-P6); rpn: ``RPN``; roi_heads: ``RoIHeads``
            (reading the first ``roi_levels`` maps); transform: ``GeneralizedRCNNTransform``.
        training: one of ``SCHEMES``; rpn_backbone: the step-1 backbone of ``alternating``.
    """

    def __init__(self, *, backbone: nn.Module, rpn: RPN, roi_heads: RoIHeads, transform: nn.Module,
                 training: str, roi_levels: int, rpn_backbone: Optional[nn.Module] = None) -> None:
        super().__init__()
        if training not in SCHEMES:
            raise ValueError(f"unknown training scheme '{training}' (known: {', '.join(SCHEMES)})")
        self.backbone, self.rpn, self.roi_heads, self.transform = backbone, rpn, roi_heads, transform
        if rpn_backbone is not None:
            self.rpn_backbone = rpn_backbone
        self.scheme, self.roi_levels = training, roi_levels
        # What the forward computes in train mode, and where the RPN reads: everything, shared
        # (the joint schemes, and alternating training once its four steps are done).
        self.parts, self.rpn_shared = {"rpn", "roi"}, True
        self.stage_times: Dict[str, float] = {}

    def begin_phase(self, phase, resumed: bool = False) -> None:
        """Set up an alternating-training step (``STEPS``); nothing to do for the joint schemes."""
        if self.scheme != "alternating":
            return
        if phase.name not in STEPS:
            raise ValueError(f"alternating training has the steps {', '.join(STEPS)}; phase '{phase.name}' "
                             "is none of them")
        self.parts, self.rpn_shared = STEPS[phase.name]

    def end_training(self) -> None:
        """Alternating training's step-1 backbone is discarded once the steps are done (the paper's
        final network shares one backbone): it is no part of the trained detector's parameters,
        FLOPs or saved weights."""
        if hasattr(self, "rpn_backbone"):
            del self.rpn_backbone
        self.parts, self.rpn_shared = {"rpn", "roi"}, True

    def _features(self, module: nn.Module, tensors: Tensor) -> List[Tensor]:
        with maybe_no_grad(module):
            return list(module(tensors).values())

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("Faster R-CNN in train mode needs targets")
        device = images[0].device
        parts = self.parts if self.training else {"roi"}
        shared = self.rpn_shared or not hasattr(self, "rpn_backbone")
        clock = StageClock()
        original = [tuple(img.shape[-2:]) for img in images]
        with clock.stage("features", device):
            image_list, targets = self.transform(images, targets)
            features = self._features(self.backbone, image_list.tensors) if ("roi" in parts or shared) else None
        with clock.stage("proposals", device):
            rpn_features = features if shared else self._features(self.rpn_backbone, image_list.tensors)
            keep_grad = self.training and self.scheme == "non_approximate_joint"
            with maybe_no_grad(self.rpn) if "rpn" not in parts else contextlib.nullcontext():
                proposals, losses = self.rpn(image_list, rpn_features, targets if "rpn" in parts else None,
                                             keep_box_grad=keep_grad)
        if self.training:
            if "roi" in parts:
                losses.update(self.roi_heads.losses(features[: self.roi_levels], proposals, targets))
            return losses
        with clock.stage("regions", device):
            detections = self.roi_heads.detect(features[: self.roi_levels], proposals, image_list.image_sizes)
            detections = self.transform.postprocess(detections, image_list.image_sizes, original)
        self.stage_times = clock.times
        return detections


def faster_rcnn_phases(params: dict, train) -> Optional[list]:
    """The 4 steps of alternating training as phases; the joint schemes train in one phase.

    Epochs per step: ``alternating_epochs``, else ``train.epochs`` for the RPN steps and half
    of it for the detector steps (py-faster-rcnn's alt-opt: 80k, 40k, 80k, 40k iterations).
    """
    if params["training"] != "alternating":
        return None
    full = train.epochs
    epochs = params["alternating_epochs"] or [full, math.ceil(full / 2), full, math.ceil(full / 2)]
    rpn, roi = ["rpn_cls", "rpn_box"], ["roi_cls", "roi_box"]
    return [
        {"name": "rpn", "epochs": epochs[0], "trainable": ["rpn_backbone", "rpn"], "losses": rpn},
        {"name": "detector", "epochs": epochs[1], "trainable": ["backbone", "roi_heads"], "losses": roi},
        {"name": "rpn_shared", "epochs": epochs[2], "trainable": ["rpn"], "losses": rpn},
        {"name": "detector_shared", "epochs": epochs[3], "trainable": ["roi_heads"], "losses": roi},
    ]


def _check(params: dict) -> None:
    if params["training"] == "non_approximate_joint" and params["roi_op"] == "pool":
        raise ValueError("training 'non_approximate_joint' reads regions with a bilinear warping layer "
                         "(RoIAlign's geometry, differentiable in the boxes); set roi_op: align")
    steps = params.get("alternating_epochs")
    if steps is not None and len(steps) != 4:
        raise ValueError(f"alternating_epochs needs one number per step (4), got {steps}")
    if params["neg_iou"] > params["pos_iou"]:
        raise ValueError(f"neg_iou ({params['neg_iou']}) must not exceed pos_iou ({params['pos_iou']})")


@register_detector("faster_rcnn", primary="roi_cls", check=_check, phases=faster_rcnn_phases,
                   losses=("loss_rpn_cls", "loss_rpn_box", "loss_roi_cls", "loss_roi_box"), roles={
                       "rpn_cls": LossRole(CLS_LOSSES, "ce", doc="RPN objectness (sigmoid, one logit per anchor)"),
                       "rpn_box": LossRole(BOX_LOSSES, "smooth_l1", {"beta": 1.0 / 9},
                                           doc="RPN box deltas of positive anchors"),
                       **ROI_ROLES})
def build_faster_rcnn(num_classes: int, scale: str = "tiny", rpn_cls_loss: Optional[Callable] = None,
                      rpn_box_loss: Optional[Callable] = None, roi_cls_loss: Optional[Callable] = None,
                      roi_box_loss: Optional[Callable] = None,
                      training: Literal["alternating", "approximate_joint", "non_approximate_joint"] = (
                          "approximate_joint"),
                      alternating_epochs: Optional[List[Epochs]] = None, fpn: bool = False,
                      pos_iou: OpenUnit = 0.7, neg_iou: OpenUnit = 0.3, rpn_batch: Count = 256,
                      rpn_pos_fraction: OpenUnit = 0.5, rpn_nms: OpenUnit = 0.7,
                      rpn_allowed_border: Optional[AllowedBorder] = 0.0, fpn_anchor_scales: Literal[1, 3] = 1,
                      rpn_low_quality: Literal["own_best", "best_for"] = "own_best",
                      pre_nms_top_n_train: Optional[Count] = None, post_nms_top_n_train: Optional[Count] = None,
                      pre_nms_top_n_test: Optional[Count] = None, post_nms_top_n_test: Optional[Count] = None,
                      rpn_min_size: Optional[ProposalSide] = None,
                      roi_op: Literal["pool", "align"] = "align", rois_per_image: RoIsPerImage = 64,
                      fg_fraction: OpenUnit = 0.25, fg_iou: OpenUnit = 0.5, bg_iou_lo: UnitLow = 0.1,
                      roi_size: Optional[RoISize] = None, rep: Optional[Width] = None,
                      min_size: Optional[ImageSide] = None, max_size: Optional[ImageSide] = None,
                      score_thresh: float = 0.05, nms_iou: float = 0.3, max_dets: int = 100) -> FasterRCNN:
    """Build a Faster R-CNN; ``None`` takes the scale's preset (``detectors.models.two_stage.SCALES``).

    RPN: 3 scales x 3 ratios per location (FPN: one scale per level, the FPN paper's 32^2 to 512^2
    on P2-P6 at paper scale), positive IoU >= 0.7 or a ground truth's best anchor (regressing to
    its own best ground truth), negative < 0.3, anchors crossing the image border ignored in
    training, 256 anchors per image up to 1:1, NMS 0.7; proposals per image 12000 before NMS and
    2000 after it in training, 6000 / 300 at test, at least 16 px (py-faster-rcnn; FPN: Detectron's
    2000 / 1000 per level before NMS, 2000 / 1000 in total after it), scaled to the tiny preset's
    images (``two_stage.RPN_PAPER``). Test NMS 0.3 (py-faster-rcnn's TEST.NMS).
    """
    cfg = scale_preset(scale)
    cfg.update({k: v for k, v in dict(roi_size=roi_size, rep=rep, min_size=min_size, max_size=max_size).items()
                if v is not None})
    make_backbone = partial(fpn_backbone if fpn else single_level_backbone, scale, cfg)
    backbone = make_backbone()
    strides, preset = backbone.strides, cfg["rpn_fpn" if fpn else "rpn"]
    rpn = RPN(backbone.out_channels, strides, cfg["anchor_sizes"], cfg["anchor_base"],
              rpn_cls_loss or CLS_LOSSES.get("ce"), rpn_box_loss or partial(smooth_l1_loss, beta=1.0 / 9),
              pos_iou=pos_iou, neg_iou=neg_iou, batch_size_per_image=rpn_batch, positive_fraction=rpn_pos_fraction,
              pre_nms_top_n={"training": pre_nms_top_n_train or preset["pre_train"],
                             "testing": pre_nms_top_n_test or preset["pre_test"]},
              post_nms_top_n={"training": post_nms_top_n_train or preset["post_train"],
                              "testing": post_nms_top_n_test or preset["post_test"]}, nms_iou=rpn_nms,
              scales_per_level=fpn_anchor_scales, allowed_border=rpn_allowed_border,
              low_quality_target=rpn_low_quality,
              min_size=preset["min_size"] if rpn_min_size is None else rpn_min_size)
    roi_levels = 4 if fpn else 1  # FPN: regions on P2-P5 (P6 serves the RPN only)
    op = "warp" if training == "non_approximate_joint" else roi_op
    heads = roi_head_for(backbone.out_channels, strides[:roi_levels], cfg, num_classes, op,
                         roi_cls_loss or SOFTMAX_LOSSES.get("softmax_ce"),
                         roi_box_loss or partial(smooth_l1_loss, beta=1.0),
                         rois_per_image=rois_per_image, fg_fraction=fg_fraction, fg_iou=fg_iou, bg_iou_lo=bg_iou_lo,
                         score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets)
    # Padded to 32 as torchvision's (FPN: P6's anchors sit on stride 64 anyway); one map: to its stride.
    transform = make_transform(cfg, min(max(strides), SIZE_DIVISIBLE))
    return FasterRCNN(backbone=backbone, rpn=rpn, roi_heads=heads, transform=transform,
                      training=training, roi_levels=roi_levels,
                      rpn_backbone=make_backbone() if training == "alternating" else None)
