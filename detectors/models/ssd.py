"""SSD (Liu et al., "SSD: Single Shot MultiBox Detector", arXiv 1512.02325).

Several feature maps of decreasing resolution, no feature pyramid: each map
predicts, for ``k`` default boxes per location, ``K + 1`` class scores
(softmax, background at index 0) and 4 box offsets with a 3x3 conv (sec. 2.1).

- Default boxes (sec. 2.2, "Choosing scales and aspect ratios"): scale
  ``s_k = s_min + (s_max - s_min) (k - 1) / (m - 1)`` on map ``k`` of ``m``
  (``s_min = 0.2``, ``s_max = 0.9``), aspect ratios ``{1, 2, 3, 1/2, 1/3}``
  plus a ratio-1 box of scale ``sqrt(s_k s_{k+1})``; as in the paper's SSD300
  the first map and the last two keep only ``{1, 2, 1/2}`` (4 boxes), and the
  first map (conv4_3) has its own scale 0.1 while the formula spreads the other
  ``m - 1`` maps over 0.2..0.9 (sec. 3.1, "PASCAL VOC2007"). Built by
  torchvision's ``DefaultBoxGenerator``.
- Matching (sec. 2.2, "Matching strategy"): every ground truth takes its best
  default box, then every default box with IoU >= 0.5 is positive; the rest
  are background (``detectors.assigners.max_iou_assign`` with 0.5 / 0.5 and
  low-quality matches: the same rule as torchvision's ``SSDMatcher``).
- Hard negative mining (sec. 2.2, "Hard negative mining"): per image the
  background boxes with the highest confidence loss, at most 3 per positive.
- Loss (eq. 1): ``(L_conf + alpha L_loc) / N`` with ``N`` the matched boxes;
  ``loss_cls`` is the injected softmax loss (``softmax_ce``) over positives and
  mined negatives, ``loss_box`` the injected box loss (smooth L1, beta 1) on the
  offsets ``(10, 10, 5, 5)``-weighted as the reference code's variances 0.1 / 0.2;
  ``alpha = 1`` is the default weight.
- Test time: per class, softmax score above ``score_thresh``, top-k, class-wise
  NMS (paper: 0.45), at most ``max_dets``.

Images are resized to a fixed square (SSD300: 300 px), aspect not kept.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial
from typing import Annotated, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import vgg16
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import _vgg_extractor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectors.assigners import max_iou_assign
from detectors.boxes import BoxCoder, clip_boxes
from detectors.losses import BOX_LOSSES, SOFTMAX_LOSSES, smooth_l1_loss
from detectors.models.backbones import TINY_WIDTHS, TinyBody
from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD, ImageSide, TopK
from detectors.models.contract import LossRole, register_detector
from detectors.models.postprocess import level_candidates, merge_levels
from detectors.registry import Interval, OpenUnit
from detectors.train.runtime import worker_mean

Ratio = Annotated[float, Interval(ge=1, le=10)]           # r adds boxes of ratio r and 1/r
MaxScale = Annotated[float, Interval(gt=0, le=2)]        # of the input side
NegPosRatio = Annotated[float, Interval(gt=0, le=100)]

# ``paper``: SSD300 (VGG16, random init offline; six maps 38..1). ``tiny``: 128 px,
# the tiny conv body's C3-C5 plus two extra stride-2 blocks (maps 16, 8, 4, 2, 1).
SCALES = {"tiny": dict(widths=TINY_WIDTHS, extra_width=64, input_size=128),
          "paper": dict(widths=None, extra_width=None, input_size=300)}


def paper_aspect_ratios(num_maps: int, ratios: Sequence[float], reduced: bool = True) -> List[List[float]]:
    """Per map, the ratios ``r`` (each adds ``r`` and ``1/r``) for ``DefaultBoxGenerator``.

    ``reduced``: the first map and the last two keep only the first ratio (SSD300's
    4-box maps conv4_3, conv10_2, conv11_2; sec. 3.1).
    """
    full = [float(r) for r in ratios]
    if not reduced:
        return [full] * num_maps
    short = {0, num_maps - 2, num_maps - 1} if num_maps > 3 else {0}
    return [full[:1] if k in short else full for k in range(num_maps)]


def default_box_scales(num_maps: int, min_scale: float, max_scale: float,
                       first_scale: Optional[float]) -> List[float]:
    """The ``num_maps + 1`` scales ``DefaultBoxGenerator`` takes: ``s_k`` of each map, then the
    1.0 that only serves the last map's extra box ``sqrt(s_m * 1.0)`` (torchvision's convention).

    ``first_scale`` (SSD300: 0.1 on conv4_3) gives the first map a scale of its own and spreads
    the other maps over ``min_scale..max_scale``; None spreads all of them (the first at
    ``min_scale``). Small objects are why: at 0.2 of a 128 px input the smallest box is 25.6 px,
    and a 12 px object overlaps it at IoU 0.22 at best, below the 0.5 that makes a positive.
    """
    head = [] if first_scale is None else [float(first_scale)]
    spread = num_maps - len(head)
    if spread > 1:
        ramp = [min_scale + (max_scale - min_scale) * k / (spread - 1) for k in range(spread)]
    else:
        ramp = [float(min_scale)] * spread
    return head + ramp + [1.0]


class TinySSDBody(nn.Module):
    """C3-C5 of the tiny conv body, then extra blocks (1x1 conv, 3x3 stride-2 conv) as SSD's extra
    layers: an ordered dict of ``len(widths) - 2 + num_extra`` maps, strides 8, 16, 32, 64, ..."""

    def __init__(self, widths: List[int], extra_width: int, num_extra: int = 2) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(TinyBody(widths), {"layer3": "c3", "layer4": "c4", "layer5": "c5"})
        extras, cin = [], widths[-1]
        for _ in range(num_extra):
            # No batch norm, as the paper's extra layers: the last map is 1 x 1.
            extras.append(nn.Sequential(nn.Conv2d(cin, extra_width // 2, 1), nn.ReLU(inplace=True),
                                        nn.Conv2d(extra_width // 2, extra_width, 3, stride=2, padding=1),
                                        nn.ReLU(inplace=True)))
            cin = extra_width
        self.extras = nn.ModuleList(extras)
        self.out_channels = list(widths[2:]) + [extra_width] * num_extra

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        feats = OrderedDict(self.body(x))
        last = feats["c5"]
        for i, block in enumerate(self.extras):
            last = block(last)
            feats[f"extra{i + 1}"] = last
        return feats


class SSDHead(nn.Module):
    """One 3x3 conv per map for class scores (``A (K + 1)``) and one for offsets (``4 A``).

    Returns logits ``[N, sum(HWA), K + 1]`` and deltas ``[N, sum(HWA), 4]``, ordered
    map, location (row-major), default box: ``DefaultBoxGenerator``'s order.
    """

    def __init__(self, in_channels: List[int], boxes_per_location: List[int], num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes + 1
        self.cls = nn.ModuleList(nn.Conv2d(c, a * self.num_classes, 3, padding=1)
                                 for c, a in zip(in_channels, boxes_per_location))
        self.box = nn.ModuleList(nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, boxes_per_location))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _flatten(x: Tensor, last: int) -> Tensor:
        b, _, h, w = x.shape
        return x.view(b, -1, last, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, last)

    def forward(self, feats: List[Tensor]):
        logits = [self._flatten(conv(f), self.num_classes) for conv, f in zip(self.cls, feats)]
        deltas = [self._flatten(conv(f), 4) for conv, f in zip(self.box, feats)]
        return torch.cat(logits, 1), torch.cat(deltas, 1)


@torch.no_grad()
def hard_negative_mining(conf_loss: Tensor, positive: Tensor, ratio: float = 3.0) -> Tensor:
    """SSD's hard negatives of one image: of the non-positive boxes, the ``ratio x #positives``
    (at most all of them) with the highest confidence loss.

    Args:
        conf_loss: float ``[A]`` classification loss of each default box as background.
        positive: bool ``[A]``.
    Returns:
        bool ``[A]``: the mined negatives (disjoint from ``positive``). No positive, no negative.
    """
    num_neg = min(int(math.floor(ratio * int(positive.sum()))), int((~positive).sum()))
    mined = torch.zeros_like(positive)
    if num_neg > 0:
        loss = conf_loss.masked_fill(positive, -math.inf)
        mined[loss.topk(num_neg).indices] = True
    return mined


class SSD(nn.Module):
    """SSD with injected body, head, default boxes, transform and losses (see the module docstring).

    Args:
        cls_loss: ``fn(logits [M, K+1], labels [M] (0 = background), reduction=...)``.
        box_loss: ``fn(deltas [P, 4], targets [P, 4], reduction=...)``.
    """

    def __init__(self, *, body: nn.Module, head: SSDHead, default_boxes: DefaultBoxGenerator,
                 transform: GeneralizedRCNNTransform, cls_loss: Callable[..., Tensor],
                 box_loss: Callable[..., Tensor], iou: float = 0.5, neg_pos_ratio: float = 3.0,
                 score_thresh: float = 0.05, nms_iou: float = 0.45, max_dets: int = 100,
                 topk_candidates: int = 400) -> None:
        super().__init__()
        self.body, self.head, self.default_boxes, self.transform = body, head, default_boxes, transform
        self.cls_loss, self.box_loss = cls_loss, box_loss
        self.box_coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
        self.iou, self.neg_pos_ratio = iou, neg_pos_ratio
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.topk_candidates = topk_candidates

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("SSD in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(images, targets)
        feats = list(self.body(image_list.tensors).values())
        logits, deltas = self.head(feats)
        boxes = self.default_boxes(image_list, feats)
        if self.training:
            return self.compute_loss(targets, logits, deltas, boxes)
        detections = self.postprocess(logits, deltas, boxes, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    @torch.no_grad()
    def assign(self, boxes: Tensor, gt_boxes: Tensor) -> Tensor:
        """Matched gt index per default box, or BACKGROUND (nothing is ignored: 0.5 / 0.5)."""
        return max_iou_assign(boxes, gt_boxes, self.iou, self.iou, allow_low_quality=True)

    def compute_loss(self, targets, logits, deltas, default_boxes) -> Dict[str, Tensor]:
        cls_terms, box_terms, num_pos = [], [], 0
        for b, (t, boxes) in enumerate(zip(targets, default_boxes)):
            matched = self.assign(boxes, t["boxes"])
            pos = matched >= 0
            labels = torch.zeros_like(matched)  # 0 = background
            labels[pos] = t["labels"][matched[pos]] + 1
            per_box = self.cls_loss(logits[b], labels, reduction="none")
            keep = pos | hard_negative_mining(per_box.detach(), pos, self.neg_pos_ratio)
            cls_terms.append(per_box[keep].sum())
            target = self.box_coder.encode(boxes[pos], t["boxes"][matched[pos]])
            box_terms.append(self.box_loss(deltas[b][pos], target.to(deltas.dtype), reduction="sum"))
            num_pos += int(pos.sum())
        # eq. 1: divide by the number of matched default boxes (0 matched: the loss is 0)
        n = max(1.0, worker_mean(num_pos))  # over several workers, their mean (detectors.train.runtime)
        return {"loss_cls": torch.stack(cls_terms).sum() / n, "loss_box": torch.stack(box_terms).sum() / n}

    def postprocess(self, logits, deltas, default_boxes, image_sizes) -> List[Dict[str, Tensor]]:
        results = []
        for b, (h, w) in enumerate(image_sizes):
            scores = F.softmax(logits[b], dim=-1)[:, 1:]  # drop background
            kept, idx, labels = level_candidates(scores, self.score_thresh, self.topk_candidates)
            boxes = clip_boxes(self.box_coder.decode(deltas[b][idx], default_boxes[b][idx]), h, w)
            results.append(merge_levels([boxes], [kept], [labels], self.nms_iou, self.max_dets))
        return results


def _check(params: dict) -> None:
    if params["min_scale"] >= params["max_scale"]:
        raise ValueError(f"min_scale ({params['min_scale']}) must be below max_scale ({params['max_scale']})")


@register_detector("ssd", losses=("loss_cls", "loss_box"), check=_check, roles={
    "cls": LossRole(SOFTMAX_LOSSES, "softmax_ce", doc="softmax over K + 1 classes, background 0 (paper eq. 2)"),
    "box": LossRole(BOX_LOSSES, "smooth_l1", {"beta": 1.0}, doc="offsets of matched default boxes (paper eq. 2)"),
})
def build_ssd(num_classes: int, scale: str = "tiny", cls_loss: Optional[Callable] = None,
              box_loss: Optional[Callable] = None, min_scale: OpenUnit = 0.2, max_scale: MaxScale = 0.9,
              first_scale: Optional[OpenUnit] = 0.1, aspect_ratios: Optional[List[Ratio]] = None,
              reduced_maps: bool = True, iou: OpenUnit = 0.5, neg_pos_ratio: NegPosRatio = 3.0,
              input_size: Optional[ImageSide] = None, score_thresh: float = 0.05, nms_iou: float = 0.45,
              max_dets: int = 100, topk_candidates: TopK = 400) -> SSD:
    """Build SSD; defaults are the paper's (first map 0.1, the others 0.2-0.9, ratios 2 and 3,
    matching IoU 0.5, 3:1 negatives). ``first_scale`` None: every map on the 0.2-0.9 ramp, the
    first at ``min_scale`` (this project's SSD before issue 19); ``aspect_ratios`` None: the
    paper's 2 and 3; ``input_size`` None: the scale's (tiny 128, paper 300).

    ``nms_iou`` is the paper's 0.45 unless the study's ``eval.nms_iou`` sets one.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale '{scale}' (known: {', '.join(SCALES)})")
    cfg = SCALES[scale]
    if scale == "paper":
        body = _vgg_extractor(vgg16(weights=None), highres=False, trainable_layers=5)
        channels = [512, 1024, 512, 256, 256, 256]
    else:
        body = TinySSDBody(cfg["widths"], cfg["extra_width"])
        channels = body.out_channels
    ratios = paper_aspect_ratios(len(channels), aspect_ratios or [2.0, 3.0], reduced_maps)
    default_boxes = DefaultBoxGenerator(
        ratios, scales=default_box_scales(len(channels), min_scale, max_scale, first_scale))
    head = SSDHead(channels, default_boxes.num_anchors_per_location(), num_classes)
    size = input_size or cfg["input_size"]
    transform = GeneralizedRCNNTransform(size, size, IMAGENET_MEAN, IMAGENET_STD, size_divisible=1,
                                         fixed_size=(size, size))
    return SSD(body=body, head=head, default_boxes=default_boxes, transform=transform,
               cls_loss=cls_loss or SOFTMAX_LOSSES.get("softmax_ce"),
               box_loss=box_loss or partial(smooth_l1_loss, beta=1.0), iou=iou, neg_pos_ratio=neg_pos_ratio,
               score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets, topk_candidates=topk_candidates)
