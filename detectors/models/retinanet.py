"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection", arXiv 1708.02002).

Backbone + FPN (P3-P7), separate classification and box subnets shared across
levels, 9 anchors per location (3 scales x 3 ratios), IoU >= 0.5 positive,
< 0.4 negative, ignored between, classification bias initialised to the prior
pi = 0.01, losses normalised by the number of positive anchors, batched NMS.
``fpn=False`` is the pyramid's ablation: one stride-16 map (C4) carrying the
anchors of all five levels (45 per location), so only the pyramid changes.

API as torchvision's detectors: ``model(images, targets=None)``; train mode
returns unweighted ``loss_cls`` / ``loss_box``; eval mode a list of dicts with
``boxes`` (float [N,4] xyxy, pixels of the input image), ``scores``, ``labels``.
The classification loss is injected (``cls_loss``), so CE, balanced CE and
focal loss are compared on exactly the same model.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Callable, Dict, List, Literal, Optional, Tuple

import torch
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectors.assigners import assignment_figures, max_iou_assign
from detectors.boxes import BoxCoder, clip_boxes
from detectors.losses import BOX_LOSSES, CLS_LOSSES, smooth_l1_loss
from detectors.models.anchors import StridedAnchorGenerator
from detectors.models.backbones import (TINY_WIDTHS, PYRAMID_STRIDES, pyramid_backbone, pyramid_transform, scale_config,
                                        single_level_backbone)
from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD, ImageSide, InStrides, NumConvs, TopK, Width
from detectors.models.contract import LossRole, register_detector
from detectors.models.postprocess import level_candidates, merge_levels
from detectors.registry import OpenUnit
from detectors.train.runtime import worker_mean


def gn_groups(width: int) -> int:
    """GroupNorm groups for ``width`` channels: up to 32 of at least 4 channels each,
    lowered to a divisor of ``width`` (GroupNorm needs one; 32 at the usual 256)."""
    groups = min(32, width // 4) or 1
    while width % groups:
        groups -= 1
    return groups


def conv_subnet(width_in: int, width: int, num_convs: int, norm: Optional[str]) -> nn.Sequential:
    """``num_convs`` x (conv3x3, [GroupNorm], ReLU). A conv followed by a norm has no bias: the
    norm's own shift takes its place (torchvision's ``Conv2dNormActivation``, mmdet's ``ConvModule``)."""
    layers: List[nn.Module] = []
    for i in range(num_convs):
        layers.append(nn.Conv2d(width_in if i == 0 else width, width, 3, padding=1, bias=norm != "gn"))
        if norm == "gn":
            layers.append(nn.GroupNorm(gn_groups(width), width))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """Class and box subnets (paper fig. 3): ``num_convs`` x conv3x3(width) + a final conv.

    Returns per-image flattened predictions over all levels, ordered level,
    then location (row-major), then anchor: the order torchvision's
    ``AnchorGenerator`` emits anchors in. Shapes: logits [B, sum(HWA), K],
    deltas [B, sum(HWA), 4].
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, width: int,
                 num_convs: int, norm: Optional[str], prior_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.cls_subnet = conv_subnet(in_channels, width, num_convs, norm)
        self.box_subnet = conv_subnet(in_channels, width, num_convs, norm)
        tower_out = width if num_convs else in_channels  # no convs: the outputs sit on the features
        self.cls_out = nn.Conv2d(tower_out, num_anchors * num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(tower_out, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Prior init (paper sec. 4.1): every anchor starts at foreground probability
        # pi, so the many easy negatives do not swamp the first iterations.
        nn.init.constant_(self.cls_out.bias, -math.log((1.0 - prior_prob) / prior_prob))

    @staticmethod
    def _flatten(x: Tensor, last: int) -> Tensor:
        b, _, h, w = x.shape
        return x.view(b, -1, last, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, last)

    def forward(self, feats: List[Tensor]) -> Tuple[Tensor, Tensor]:
        logits = [self._flatten(self.cls_out(self.cls_subnet(f)), self.num_classes) for f in feats]
        deltas = [self._flatten(self.box_out(self.box_subnet(f)), 4) for f in feats]
        return torch.cat(logits, 1), torch.cat(deltas, 1)


class RetinaNet(nn.Module):
    """One-stage detector; every component injected by keyword.

    Args:
        backbone: module returning an ordered dict of pyramid features, with
            ``out_channels``.
        head: module mapping the feature list to (logits, deltas).
        anchor_generator: ``StridedAnchorGenerator`` (torchvision's, on the backbone's strides)
            matching the head's order.
        transform: torchvision ``GeneralizedRCNNTransform`` (resize, normalise,
            batch; maps boxes back to the input size).
        cls_loss: ``fn(logits [M,K], targets [M,K], reduction=...)`` from
            ``detectors.losses``; box_loss likewise on deltas.
    """

    def __init__(self, *, backbone: nn.Module, head: nn.Module, anchor_generator: StridedAnchorGenerator,
                 transform: GeneralizedRCNNTransform, cls_loss: Callable[..., Tensor],
                 box_loss: Callable[..., Tensor], box_coder: Optional[BoxCoder] = None,
                 pos_iou: float = 0.5, neg_iou: float = 0.4, allow_low_quality: bool = True,
                 score_thresh: float = 0.05, nms_iou: float = 0.5, max_dets: int = 100,
                 topk_candidates: int = 1000) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.anchor_generator, self.transform = anchor_generator, transform
        self.cls_loss, self.box_loss = cls_loss, box_loss
        self.box_coder = box_coder or BoxCoder()
        self.pos_iou, self.neg_iou, self.allow_low_quality = pos_iou, neg_iou, allow_low_quality
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.topk_candidates = topk_candidates
        # The last training batch's assignment figures (``assignment_figures``): not losses, so not in
        # the returned dict; the training loop reads them after each step and logs ``train/<name>``.
        self.train_figures: Dict[str, float] = {}

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("RetinaNet in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        feats = list(self.backbone(image_list.tensors).values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(image_list, feats)
        if self.training:
            return self.compute_loss(targets, logits, deltas, anchors)
        level_sizes = [f.shape[-2] * f.shape[-1] * self.anchor_generator.num_anchors_per_location()[0]
                       for f in feats]
        detections = self.postprocess(logits, deltas, anchors, level_sizes, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @torch.no_grad()
    def classification_terms(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Tuple[Tensor, Tensor]:
        """Logits [M, K] and one-hot targets [M, K] of the non-ignored anchors, as the loss sees them
        (for the loss diagnostics; runs in whatever mode the model is in)."""
        image_list, targets = self.transform(images, targets)
        feats = list(self.backbone(image_list.tensors).values())
        logits, deltas = self.head(feats)
        anchors = self.anchor_generator(image_list, feats)
        cls_pred, cls_tgt, _, _ = self.loss_targets(targets, logits, deltas, anchors)
        return cls_pred, cls_tgt

    @torch.no_grad()
    def assign(self, targets: List[Dict[str, Tensor]], anchors: List[Tensor]) -> List[Tensor]:
        """Per image, the matched gt index of each anchor (or BACKGROUND / IGNORE)."""
        return [max_iou_assign(a, t["boxes"], self.pos_iou, self.neg_iou, self.allow_low_quality)
                for a, t in zip(anchors, targets)]

    def loss_targets(self, targets, logits, deltas, anchors):
        """Flatten the batch into (cls logits, one-hot targets) over non-ignored
        anchors and (deltas, regression targets) over positives, image after image.

        The whole batch at once (every image has the same anchors, the batch is padded
        to one size): one one-hot matrix of the kept rows only and one encode, where a
        loop over images built a full ``[A, K]`` matrix per image and copied it again.
        """
        m = torch.stack(self.assign(targets, anchors))  # [B, A] gt index, BACKGROUND or IGNORE
        self.train_figures = assignment_figures(m, len(targets))
        offsets = torch.tensor([0] + [t["boxes"].shape[0] for t in targets[:-1]], device=m.device).cumsum(0)
        gt_boxes = torch.cat([t["boxes"] for t in targets])
        gt_labels = torch.cat([t["labels"] for t in targets])
        pos = m >= 0
        valid = m >= -1  # BACKGROUND (-1) and positives; IGNORE (-2) drops out
        matched = (m + offsets[:, None])[pos]  # batch-wide gt index of each positive
        cls_pred = logits[valid]
        cls_tgt = torch.zeros_like(cls_pred)
        cls_tgt[torch.nonzero(pos[valid]).squeeze(1), gt_labels[matched]] = 1.0
        box_tgt = self.box_coder.encode(torch.stack(anchors)[pos], gt_boxes[matched])
        return cls_pred, cls_tgt, deltas[pos], box_tgt

    def compute_loss(self, targets, logits, deltas, anchors) -> Dict[str, Tensor]:
        cls_pred, cls_tgt, box_pred, box_tgt = self.loss_targets(targets, logits, deltas, anchors)
        # Normalise by the number of positive anchors in the batch (paper sec. 3.3),
        # not by all anchors: the sum is dominated by a few hard examples. Over several
        # workers, by the mean count (worker_mean): the global batch's normaliser.
        num_pos = max(1.0, worker_mean(box_tgt.shape[0]))
        return {
            "loss_cls": self.cls_loss(cls_pred, cls_tgt, reduction="sum") / num_pos,
            "loss_box": self.box_loss(box_pred, box_tgt.to(box_pred.dtype), reduction="sum") / num_pos,
        }

    def postprocess(self, logits, deltas, anchors, level_sizes, image_sizes) -> List[Dict[str, Tensor]]:
        """Top-k candidates per level above ``score_thresh``, decode, batched NMS per class."""
        results = []
        for b, (h, w) in enumerate(image_sizes):
            boxes_all, scores_all, labels_all = [], [], []
            for lg, dl, an in zip(logits[b].split(level_sizes), deltas[b].split(level_sizes),
                                  anchors[b].split(level_sizes)):
                scores, idx, labels = level_candidates(torch.sigmoid(lg), self.score_thresh, self.topk_candidates)
                boxes_all.append(clip_boxes(self.box_coder.decode(dl[idx], an[idx]), h, w))
                scores_all.append(scores)
                labels_all.append(labels)
            results.append(merge_levels(boxes_all, scores_all, labels_all, self.nms_iou, self.max_dets))
        return results


# Scale presets. ``paper`` is the RetinaNet paper's ResNet-50-FPN with 4 x conv(256)
# heads at 600 px (its ablation setting); ``tiny`` is sized for 2 CPU cores.
# ``anchor_base`` is the anchor size in units of the level's stride: the paper's
# 32 px on P3 (stride 8) is 4; tiny images hold small objects, so tiny uses 2.
SCALES = {
    "tiny": dict(widths=TINY_WIDTHS, fpn_width=32, head_width=32, head_convs=2,
                 head_norm="gn", min_size=128, max_size=512, anchor_base=2.0),
    "paper": dict(widths=None, fpn_width=256, head_width=256, head_convs=4,
                  head_norm=None, min_size=600, max_size=1000, anchor_base=4.0),
}


def retinanet_anchor_generator(anchor_base: float, strides=(8, 16, 32, 64, 128), fpn: bool = True,
                               map_stride: int = 16) -> StridedAnchorGenerator:
    """3 scales (2^0, 2^(1/3), 2^(2/3)) x 3 ratios (1:2, 1:1, 2:1) per level (paper sec. 4).

    ``fpn=False``: the sizes of every level in ``strides`` on one map of stride ``map_stride``
    (15 sizes x 3 ratios).
    """
    octaves = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    sizes = tuple(tuple(anchor_base * s * o for o in octaves) for s in strides)
    if not fpn:
        return StridedAnchorGenerator(sizes=(sum(sizes, ()),), aspect_ratios=((0.5, 1.0, 2.0),),
                                      strides=(map_stride,))
    return StridedAnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * len(strides), strides=strides)


def check_common(params: dict) -> None:
    """Combinations of the parameters RetinaNet and the dense detectors share."""
    if params["neg_iou"] > params["pos_iou"]:
        raise ValueError(f"neg_iou ({params['neg_iou']}) must not exceed pos_iou ({params['pos_iou']})")
    low, high = params["min_size"], params["max_size"]
    if low is not None and high is not None and low > high:
        raise ValueError(f"min_size ({low}) must not exceed max_size ({high}): the transform would cap "
                         f"the shorter side at max_size")


@register_detector("retinanet", losses=("loss_cls", "loss_box"), check=check_common, roles={
    "cls": LossRole(CLS_LOSSES, "focal", doc="per-anchor sigmoid classification (paper: focal, gamma 2, alpha 0.25)"),
    "box": LossRole(BOX_LOSSES, "smooth_l1", {"beta": 1.0 / 9}, doc="box deltas of positive anchors"),
})
def build_retinanet(num_classes: int, scale: str = "tiny", cls_loss: Optional[Callable] = None,
                    box_loss: Optional[Callable] = None, anchor_base: Optional[InStrides] = None,
                    pos_iou: OpenUnit = 0.5, neg_iou: OpenUnit = 0.4, allow_low_quality: bool = True,
                    head_width: Optional[Width] = None, head_convs: Optional[NumConvs] = None,
                    head_norm: Optional[Literal["scale", "gn"]] = "scale", fpn_width: Optional[Width] = None,
                    prior_prob: OpenUnit = 0.01, min_size: Optional[ImageSide] = None,
                    max_size: Optional[ImageSide] = None, score_thresh: float = 0.05, nms_iou: float = 0.5,
                    max_dets: int = 100, topk_candidates: TopK = 1000, fpn: bool = True) -> RetinaNet:
    """Build a RetinaNet. ``None`` (and ``head_norm="scale"``) take the scale's preset.

    ``fpn=False``: no pyramid, one stride-16 map (C4) with all levels' anchors on it.

    ``cls_loss`` defaults to focal loss with the paper's gamma 2, alpha 0.25;
    ``box_loss`` to smooth L1 with beta 1/9 (Detectron2's RetinaNet).
    """
    cfg = scale_config(SCALES, scale, head_norm, anchor_base=anchor_base, head_width=head_width,
                       head_convs=head_convs, fpn_width=fpn_width, min_size=min_size, max_size=max_size)
    backbone = pyramid_backbone(scale, cfg) if fpn else single_level_backbone(scale, cfg)
    anchors = retinanet_anchor_generator(cfg["anchor_base"], PYRAMID_STRIDES, fpn, backbone.strides[0])
    head = RetinaHead(backbone.out_channels, anchors.num_anchors_per_location()[0], num_classes, cfg["head_width"],
                      cfg["head_convs"], cfg["head_norm"], prior_prob)
    return RetinaNet(
        backbone=backbone, head=head, anchor_generator=anchors,
        transform=pyramid_transform(cfg, IMAGENET_MEAN, IMAGENET_STD),
        cls_loss=cls_loss or CLS_LOSSES.get("focal"), box_loss=box_loss or partial(smooth_l1_loss, beta=1.0 / 9),
        pos_iou=pos_iou, neg_iou=neg_iou, allow_low_quality=allow_low_quality,
        score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets, topk_candidates=topk_candidates)
