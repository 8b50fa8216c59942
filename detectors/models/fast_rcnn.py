"""Fast R-CNN (Girshick, arXiv 1504.08083): one conv pass per image, RoI pooling per proposal.

Selective-search proposals (``detectors.models.proposals``, cached on disk), the whole
image through the conv body once (C4, stride 16: VGG-16's conv5_3 analogue),
each proposal's features by RoI pooling (sec. 2.1; ``roi_op: align`` for RoIAlign)
into a 7x7 grid, two FC layers, then a softmax over K + 1 classes and per-class
box deltas (sec. 2.3, ``detectors.models.roi_heads``). Training minibatches:
64 RoIs per image (128 per 2 images), 25% foreground at IoU >= 0.5, background
at IoU in [0.1, 0.5).

In eval mode the model records ``stage_times`` (ms): ``proposals`` (selective
search, computed afresh inside ``uncached()``), ``features`` (the conv body) and
``regions`` (RoI pooling, head, NMS).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Dict, List, Literal, Optional

from torch import Tensor, nn

from detectors.losses import BOX_LOSSES, SOFTMAX_LOSSES, smooth_l1_loss
from detectors.models.common import Count, ImageSide, RoISize, RoIsPerImage, UnitLow, Width
from detectors.models.contract import LossRole, register_detector
from detectors.models.roi_features import RoIFeatures
from detectors.models.roi_heads import BoxHead, RoIHeads
from detectors.models.two_stage import (StageClock, make_transform, resize_boxes_to, scale_preset,
                                        single_level_backbone)
from detectors.models.proposals import SelectiveSearch
from detectors.registry import OpenUnit

ROI_ROLES = {
    "roi_cls": LossRole(SOFTMAX_LOSSES, "softmax_ce", doc="softmax over K + 1 classes of the sampled regions"),
    "roi_box": LossRole(BOX_LOSSES, "smooth_l1", {"beta": 1.0}, doc="per-class box deltas of foreground regions "
                        "(Fast R-CNN eq. 3: smooth L1, beta 1)"),
}


class ProposalModel(nn.Module):
    """What the detectors that read selective-search proposals share: attaching datasets
    (load or compute every image's proposals once) and ``uncached()`` for honest timing."""

    proposals: SelectiveSearch

    def attach_datasets(self, datasets) -> None:
        """Index the proposals of every image of ``datasets`` (``CocoDetection``), from the disk
        cache or computed now; the training loop calls this once before training."""
        for ds in datasets:
            self.proposals.attach(ds)

    def uncached(self):
        """A context in which every forward segments its images afresh (speed measurement)."""
        return self.proposals.uncached()


class FastRCNN(ProposalModel):
    """``model(images, targets=None)``, torchvision style (see ``docs/architecture.md``).

    Args:
        backbone: ``NamedFeatures`` with one map; roi_heads: ``RoIHeads``; transform:
            ``GeneralizedRCNNTransform``; proposals: ``SelectiveSearch``.
    """

    def __init__(self, *, backbone: nn.Module, roi_heads: RoIHeads, transform: nn.Module,
                 proposals: SelectiveSearch) -> None:
        super().__init__()
        self.backbone, self.roi_heads, self.transform = backbone, roi_heads, transform
        self.proposals = proposals
        self.stage_times: Dict[str, float] = {}

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("Fast R-CNN in train mode needs targets")
        device = images[0].device
        clock = StageClock()
        original = [tuple(img.shape[-2:]) for img in images]
        with clock.stage("proposals", device):
            proposals = self.proposals(images)
        with clock.stage("features", device):
            image_list, targets = self.transform(images, targets)
            features = list(self.backbone(image_list.tensors).values())
        proposals = resize_boxes_to(proposals, original, image_list.image_sizes)
        if self.training:
            return self.roi_heads.losses(features, proposals, targets)
        with clock.stage("regions", device):
            detections = self.roi_heads.detect(features, proposals, image_list.image_sizes)
            detections = self.transform.postprocess(detections, image_list.image_sizes, original)
        self.stage_times = clock.times
        return detections


def roi_head_for(in_channels: int, strides, cfg: dict, num_classes: int, roi_op: str, cls_loss: Callable,
                 box_loss: Callable, **sampling) -> RoIHeads:
    """The Fast R-CNN region stage over maps of ``in_channels`` at ``strides``."""
    size = cfg["roi_size"]
    features = RoIFeatures(roi_op, size, strides, canonical_scale=cfg["canonical_scale"])
    return RoIHeads(features, BoxHead(in_channels * size * size, cfg["rep"], num_classes), cls_loss, box_loss,
                    **sampling)


@register_detector("fast_rcnn", roles=ROI_ROLES, primary="roi_cls", losses=("loss_roi_cls", "loss_roi_box"))
def build_fast_rcnn(num_classes: int, scale: str = "tiny", roi_cls_loss: Optional[Callable] = None,
                    roi_box_loss: Optional[Callable] = None, max_proposals: Count = 2000,
                    selective_search: Literal["fast", "quality"] = "fast", roi_op: Literal["pool", "align"] = "pool",
                    rois_per_image: RoIsPerImage = 64, fg_fraction: OpenUnit = 0.25, fg_iou: OpenUnit = 0.5,
                    bg_iou_lo: UnitLow = 0.1, roi_size: Optional[RoISize] = None,
                    rep: Optional[Width] = None, min_size: Optional[ImageSide] = None,
                    max_size: Optional[ImageSide] = None, score_thresh: float = 0.05, nms_iou: float = 0.3,
                    max_dets: int = 100) -> FastRCNN:
    """Build a Fast R-CNN; ``None`` takes the scale's preset (``detectors.models.two_stage.SCALES``).

    Test NMS 0.3 per class (the reference code's TEST.NMS), unless the study's ``eval.nms_iou`` sets one.
    """
    cfg = scale_preset(scale)
    cfg.update({k: v for k, v in dict(roi_size=roi_size, rep=rep, min_size=min_size, max_size=max_size).items()
                if v is not None})
    backbone = single_level_backbone(scale, cfg)
    heads = roi_head_for(backbone.out_channels, backbone.strides, cfg, num_classes, roi_op,
                         roi_cls_loss or SOFTMAX_LOSSES.get("softmax_ce"),
                         roi_box_loss or partial(smooth_l1_loss, beta=1.0),
                         rois_per_image=rois_per_image, fg_fraction=fg_fraction, fg_iou=fg_iou, bg_iou_lo=bg_iou_lo,
                         score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets)
    return FastRCNN(backbone=backbone, roi_heads=heads, transform=make_transform(cfg, max(backbone.strides)),
                    proposals=SelectiveSearch(max_proposals, mode=selective_search))
