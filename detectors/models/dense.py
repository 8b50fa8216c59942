"""One configurable dense detector: FCOS, ATSS, IoU-aware and GFL heads on RetinaNet's body.

Generalized Focal Loss (Li et al., arXiv 2006.04388) and the detectors it
compares with, as switches on one model so a study changes one thing at a time:

- ``quality``: how localisation quality enters the score.
  ``none``; ``centerness`` (FCOS, arXiv 1904.01355 sec. 3.3: a branch trained
  by BCE against the centerness of the location in its gt); ``iou`` (IoU-aware,
  Wu et al. arXiv 1912.05992: a branch trained by BCE against the IoU of the
  decoded box with its gt); both are multiplied into the class score at test
  time. ``joint`` (GFL sec. 3.1): no branch; the class score itself is trained
  against the IoU on the gt's class (soft targets, use the ``qfl`` loss).
- ``box``: the side-distance representation (GFL Table 2a): ``dirac``,
  ``gaussian`` (+ NLL), ``general`` (integral, GIoU only), ``general_dfl`` (+ DFL).
- ``assigner``: ``atss`` (GFL's), ``fcos`` (point in box + size ranges),
  ``max_iou`` (RetinaNet's rule on the single anchor).

Backbone, FPN (P3-P7), transform and scale presets are RetinaNet's. Each
location carries one square anchor of ``anchor_scale`` strides (GFL: 8), used
by the ATSS / max-IoU assigners and as the origin (its centre) of the box.

Train mode returns unweighted losses (weights live in the training loop):
``loss_cls`` (the injected classification loss, sum / #positives), ``loss_box``
(GIoU on decoded boxes), ``loss_dfl`` (general_dfl), ``loss_nll`` (gaussian),
``loss_quality`` (centerness / iou). As in the GFL and ATSS reference code, the box
terms of a positive are weighted by its detached max class score when
``quality == "joint"`` and by its centerness target when ``"centerness"``
(ATSS), 1 otherwise, and averaged with those weights (DFL and NLL over the
four sides too).
"""
from __future__ import annotations

import functools
import inspect
from typing import Annotated, Callable, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectors.assigners import assignment_figures, atss_assign, fcos_assign, fcos_size_ranges, max_iou_assign
from detectors.boxes import aligned_box_iou, box_centres, box_to_distance, clip_boxes, distance_to_box
from detectors.losses import CLS_LOSSES, balanced_ce_loss, focal_loss
from detectors.losses.gfl import giou_loss
from detectors.models.anchors import StridedAnchorGenerator
from detectors.models.backbones import pyramid_backbone, pyramid_transform, scale_config
from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD, ImageSide, InStrides, NumConvs, TopK, Width
from detectors.models.contract import MODELS, LossRole, register_detector
from detectors.models.box_repr import make_box_representation
from detectors.models.postprocess import level_candidates, merge_levels
from detectors.models.dense_heads import DenseHead, centerness_target
from detectors.models.retinanet import SCALES, check_common  # RetinaNet's presets and combination checks
from detectors.registry import Interval, OpenUnit
from detectors.train.runtime import worker_mean

QUALITIES = ("none", "centerness", "iou", "joint")
# GFL's n (bins 0..n per side; the paper's ablation tries up to 20): each bin is 4 output
# channels per location, so 10^5 would be a 400k-channel conv.
RegMax = Annotated[int, Interval(ge=1, le=128)]
ASSIGNERS = ("atss", "fcos", "max_iou")


class DenseDetector(nn.Module):
    """One prediction per location; components injected by keyword (see the module docstring).

    Args:
        strides: nominal stride of each pyramid level (pixels); box distances are in these units.
        cls_loss: ``fn(logits [M,K], targets [M,K], reduction=...)``; targets are
            soft (IoU) for ``quality="joint"``, one-hot otherwise.
        assigner: ``fn(anchors [A,4], level_sizes, gt_boxes [G,4]) -> matched [A]`` (gt
            index, ``BACKGROUND`` or ``IGNORE``), e.g. from :func:`make_assigner`.
        box_repr: the box representation (``detectors.models.box_repr``).
    """

    def __init__(self, *, backbone: nn.Module, head: DenseHead, anchor_generator: StridedAnchorGenerator,
                 transform: GeneralizedRCNNTransform, cls_loss: Callable[..., Tensor], strides: Sequence[int],
                 assigner: Callable[[Tensor, List[int], Tensor], Tensor], box_repr,
                 quality: str = "joint", score_thresh: float = 0.05, nms_iou: float = 0.6,
                 max_dets: int = 100, topk_candidates: int = 1000) -> None:
        super().__init__()
        if quality not in QUALITIES:
            raise ValueError(f"unknown quality '{quality}' (known: {', '.join(QUALITIES)})")
        self.backbone, self.head = backbone, head
        self.anchor_generator, self.transform, self.cls_loss = anchor_generator, transform, cls_loss
        self.strides = tuple(float(s) for s in strides)
        self.assigner, self.box_repr, self.quality = assigner, box_repr, quality
        self.score_thresh, self.nms_iou, self.max_dets = score_thresh, nms_iou, max_dets
        self.topk_candidates = topk_candidates
        self.train_figures: Dict[str, float] = {}  # the last training batch's assignment figures (RetinaNet's)

    def forward(self, images: List[Tensor], targets: Optional[List[Dict[str, Tensor]]] = None):
        if self.training and targets is None:
            raise ValueError("DenseDetector in train mode needs targets")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets, out, anchors, level_sizes = self._run(images, targets)
        if self.training:
            return self.compute_loss(self.loss_targets(targets, out, anchors, level_sizes))
        detections = self.postprocess(out, anchors, level_sizes, image_list.image_sizes)
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def _run(self, images, targets):
        image_list, targets = self.transform(images, targets)
        feats = list(self.backbone(image_list.tensors).values())
        out = self.head(feats)
        anchors = self.anchor_generator(image_list, feats)
        return image_list, targets, out, anchors, [f.shape[-2] * f.shape[-1] for f in feats]

    def distances(self, raw: Tensor) -> Tensor:
        """Raw box outputs ``[M, C]`` -> side distances ``[M, 4]`` in stride units."""
        return self.box_repr.distances(raw)

    @torch.no_grad()
    def assign(self, anchors: Tensor, level_sizes: List[int], gt_boxes: Tensor) -> Tensor:
        """Matched gt index per anchor of one image (or BACKGROUND / IGNORE)."""
        return self.assigner(anchors, level_sizes, gt_boxes)

    def loss_targets(self, targets, out, anchors, level_sizes) -> Dict[str, Tensor]:
        """Assign, decode the positives and build the classification targets, batch flattened.

        Returns a dict: ``logits`` [M, K] and ``cls_target`` [M, K] of the
        non-ignored locations; for the P positives ``raw`` [P, C] box outputs,
        ``dist`` [P, 4] predicted and ``target_dist`` [P, 4] gt side distances
        (stride units), ``pred`` / ``gt`` [P, 4] xyxy pixels, ``iou`` [P]
        (detached), ``labels`` [P], ``pos_logits`` [P, K], ``quality`` [P] or absent.
        """
        num_images = len(anchors)
        stride = torch.repeat_interleave(torch.tensor(self.strides, device=anchors[0].device),
                                         torch.tensor(level_sizes, device=anchors[0].device)).repeat(num_images)
        matched, offset = [], 0
        for a, t in zip(anchors, targets):
            m = self.assign(a, level_sizes, t["boxes"])
            matched.append(torch.where(m >= 0, m + offset, m))
            offset += t["boxes"].shape[0]
        m = torch.cat(matched)
        self.train_figures = assignment_figures(m, num_images)  # logged by the training loop (RetinaNet's)
        gt_all = torch.cat([t["boxes"] for t in targets])
        labels_all = torch.cat([t["labels"] for t in targets])
        logits = out["cls"].flatten(0, 1)
        pos = torch.nonzero(m >= 0).squeeze(1)
        gt, labels = gt_all[m[pos]], labels_all[m[pos]]
        points, s = box_centres(torch.cat(anchors)[pos]), stride[pos, None].to(gt.dtype)
        raw = out["box"].flatten(0, 1)[pos]
        dist = self.distances(raw)
        pred = distance_to_box(points, dist * s)
        iou = aligned_box_iou(pred.detach(), gt)
        cls_target = torch.zeros_like(logits)
        # GFL: a positive's target on its class is the IoU of its (detached) box; else one-hot.
        cls_target[pos, labels] = iou.to(logits.dtype) if self.quality == "joint" else 1.0
        valid = m >= -1  # IGNORE (-2, max-IoU assigner only) drops out
        result = {"logits": logits[valid], "cls_target": cls_target[valid], "raw": raw, "dist": dist,
                  "target_dist": box_to_distance(points, gt) / s, "pred": pred, "gt": gt, "iou": iou,
                  "labels": labels, "pos_logits": logits[pos]}
        if out["quality"] is not None:
            result["quality"] = out["quality"].flatten()[pos]
        return result

    def compute_loss(self, t: Dict[str, Tensor]) -> Dict[str, Tensor]:
        # Normalisers over several workers: their mean count (detectors.train.runtime.worker_mean).
        num_pos = max(1.0, worker_mean(t["labels"].numel()))
        losses = {"loss_cls": self.cls_loss(t["logits"], t["cls_target"], reduction="sum") / num_pos}
        if self.quality == "joint":
            weight = torch.sigmoid(t["pos_logits"].detach()).max(dim=1).values
        elif self.quality == "centerness":
            weight = centerness_target(t["target_dist"])
        else:
            weight = torch.ones_like(t["iou"])
        # A weighted mean. (mmdet clamps this normaliser at 1, which at its batch of 16
        # images never binds; on a small batch it would shrink the box loss by the
        # tiny initial scores of the joint mode.)
        norm = weight.new_tensor(worker_mean(weight.sum().item())).clamp(min=1e-6)
        losses["loss_box"] = (weight * giou_loss(t["pred"], t["gt"])).sum() / norm
        losses.update(self.box_repr.losses(t["raw"], t["dist"], t["target_dist"], weight, norm))
        if self.quality in ("centerness", "iou"):
            target = weight if self.quality == "centerness" else t["iou"]
            losses["loss_quality"] = F.binary_cross_entropy_with_logits(
                t["quality"], target.to(t["quality"].dtype), reduction="sum") / num_pos
        return losses

    @torch.no_grad()
    def classification_terms(self, images: List[Tensor], targets: List[Dict[str, Tensor]]):
        """Logits [M, K] and targets [M, K] of the non-ignored locations, as the loss sees
        them (soft for ``joint``); for the loss diagnostics; runs in the model's current mode."""
        _, targets, out, anchors, level_sizes = self._run(images, targets)
        t = self.loss_targets(targets, out, anchors, level_sizes)
        return t["logits"], t["cls_target"]

    @torch.no_grad()
    def score_iou_pairs(self, images: List[Tensor], targets: List[Dict[str, Tensor]]) -> Dict[str, Tensor]:
        """Test-time score on the gt class vs IoU of the decoded box with its gt, for every positive.

        The GFL paper's motivating plot (sec. 1, Fig. 2): with a separate quality
        branch the two disagree; the joint score should follow the IoU.
        Returns ``score`` [P], ``iou`` [P], ``label`` [P]. Runs in the model's current mode.
        """
        _, targets, out, anchors, level_sizes = self._run(images, targets)
        t = self.loss_targets(targets, out, anchors, level_sizes)
        score = torch.sigmoid(t["pos_logits"].gather(1, t["labels"][:, None]).squeeze(1))
        if "quality" in t:
            score = score * torch.sigmoid(t["quality"])
        return {"score": score, "iou": t["iou"], "label": t["labels"]}

    def postprocess(self, out, anchors, level_sizes, image_sizes) -> List[Dict[str, Tensor]]:
        """Top-k candidates per level by test-time score above ``score_thresh``, decode, batched NMS."""
        results = []
        for b, (h, w) in enumerate(image_sizes):
            quality = (out["quality"][b].split(level_sizes) if out["quality"] is not None
                       else [None] * len(level_sizes))
            splits = zip(out["cls"][b].split(level_sizes), out["box"][b].split(level_sizes),
                         anchors[b].split(level_sizes), self.strides, quality)
            boxes_all, scores_all, labels_all = [], [], []
            for lg, raw, an, stride, q in splits:
                scores = torch.sigmoid(lg)
                if q is not None:  # centerness / predicted IoU times the class score
                    scores = scores * torch.sigmoid(q)[:, None]
                scores, idx, labels = level_candidates(scores, self.score_thresh, self.topk_candidates)
                dist = self.distances(raw[idx]) * stride
                boxes_all.append(clip_boxes(distance_to_box(box_centres(an[idx]), dist), h, w))
                scores_all.append(scores)
                labels_all.append(labels)
            results.append(merge_levels(boxes_all, scores_all, labels_all, self.nms_iou, self.max_dets))
        return results


# RetinaNet's presets; heads with GroupNorm at both scales (FCOS/ATSS/GFL use GN),
# one square anchor of ``anchor_scale`` strides: GFL's 8, halved for tiny images
# as RetinaNet's ``anchor_base`` is.
DENSE_SCALES = {
    "tiny": dict(SCALES["tiny"], head_norm="gn", anchor_scale=4.0),
    "paper": dict(SCALES["paper"], head_norm="gn", anchor_scale=8.0),
}


def make_assigner(name: str, strides: Sequence[float], anchor_scale: float, atss_topk: int = 9,
                  center_radius: Optional[float] = 1.5, pos_iou: float = 0.5, neg_iou: float = 0.4):
    """The assigner called ``name`` in study files, its settings bound:
    ``fn(anchors [A,4], level_sizes, gt_boxes [G,4]) -> matched [A]``."""
    if name == "atss":
        return functools.partial(_atss, topk=atss_topk)
    if name == "fcos":
        return functools.partial(_fcos, strides=tuple(strides), center_radius=center_radius,
                                 size_ranges=fcos_size_ranges(strides, anchor_scale))
    if name == "max_iou":
        return functools.partial(_max_iou, pos_iou=pos_iou, neg_iou=neg_iou)
    raise ValueError(f"unknown assigner '{name}' (known: {', '.join(ASSIGNERS)})")


def _atss(anchors: Tensor, level_sizes: List[int], gt_boxes: Tensor, topk: int) -> Tensor:
    return atss_assign(anchors, level_sizes, gt_boxes, topk)


def _fcos(anchors, level_sizes, gt_boxes, strides, center_radius, size_ranges) -> Tensor:
    return fcos_assign(box_centres(anchors), level_sizes, strides, gt_boxes, size_ranges, center_radius)


def _max_iou(anchors, level_sizes, gt_boxes, pos_iou, neg_iou) -> Tensor:
    return max_iou_assign(anchors, gt_boxes, pos_iou, neg_iou, allow_low_quality=True)


def _check_losses(p: dict, losses: Dict[str, str]) -> None:
    # Focal and balanced CE modulate / weight by hard 0/1 targets; the joint score's are soft IoUs.
    if p["quality"] == "joint" and losses.get("cls") in ("focal", "balanced_ce"):
        raise ValueError(f"quality 'joint' trains soft IoU targets: use the 'qfl' (or 'ce') loss, "
                         f"not '{losses['cls']}'")


def _active_losses(p: dict) -> Tuple[str, ...]:
    extra = make_box_representation(p["box"], p["reg_max"], p["bin_width"]).loss_names
    return ("loss_cls", "loss_box") + extra + (("loss_quality",) if p["quality"] in ("centerness", "iou") else ())


@register_detector("dense", check=check_common, check_losses=_check_losses, active=_active_losses,
                   losses=("loss_cls", "loss_box", "loss_dfl", "loss_nll", "loss_quality"), roles={
                       "cls": LossRole(CLS_LOSSES, None, doc="per-location sigmoid classification "
                                       "(default: qfl for quality 'joint', else focal)")})
def build_dense(num_classes: int, scale: str = "tiny", cls_loss: Optional[Callable] = None,
                quality: Literal["none", "centerness", "iou", "joint"] = "joint",
                box: Literal["dirac", "gaussian", "general", "general_dfl"] = "general_dfl",
                assigner: Literal["atss", "fcos", "max_iou"] = "atss",
                reg_max: RegMax = 16, bin_width: InStrides = 1.0, anchor_scale: Optional[InStrides] = None,
                atss_topk: TopK = 9, center_radius: Optional[InStrides] = 1.5,
                pos_iou: OpenUnit = 0.5, neg_iou: OpenUnit = 0.4,
                head_width: Optional[Width] = None, head_convs: Optional[NumConvs] = None,
                head_norm: Optional[Literal["scale", "gn"]] = "scale", fpn_width: Optional[Width] = None,
                prior_prob: OpenUnit = 0.01, min_size: Optional[ImageSide] = None,
                max_size: Optional[ImageSide] = None, score_thresh: float = 0.05, nms_iou: float = 0.6,
                max_dets: int = 100, topk_candidates: TopK = 1000) -> DenseDetector:
    """Build a dense detector. Defaults are GFL's (joint score, general distribution + DFL, ATSS).

    ``None`` (and ``head_norm="scale"``) take the scale's preset. ``cls_loss``
    defaults to QFL (beta 2) for ``quality="joint"``, else focal loss (gamma 2,
    alpha 0.25). ``bin_width`` is Delta in stride units (bins 0..reg_max * Delta);
    ``center_radius`` (strides, None = off) and the size ranges (upper bound
    ``anchor_scale`` strides per level) apply to ``assigner="fcos"``;
    ``pos_iou`` / ``neg_iou`` to ``"max_iou"``; ``atss_topk`` to ``"atss"``.
    """
    if scale not in DENSE_SCALES:
        raise ValueError(f"unknown scale '{scale}' (known: {', '.join(DENSE_SCALES)})")
    box_repr = make_box_representation(box, reg_max, bin_width)
    if cls_loss is None:
        cls_loss = CLS_LOSSES.get("qfl" if quality == "joint" else "focal")
    base = cls_loss.func if isinstance(cls_loss, functools.partial) else cls_loss
    if base in (focal_loss, balanced_ce_loss):
        _check_losses({"quality": quality}, {"cls": base.__name__.removesuffix("_loss")})
    cfg = scale_config(DENSE_SCALES, scale, head_norm, anchor_scale=anchor_scale, head_width=head_width,
                       head_convs=head_convs, fpn_width=fpn_width, min_size=min_size, max_size=max_size)
    backbone = pyramid_backbone(scale, cfg)
    strides = backbone.strides
    head = DenseHead(backbone.out_channels, num_classes, cfg["head_width"], cfg["head_convs"],
                     cfg["head_norm"], prior_prob, box_repr, has_quality=quality in ("centerness", "iou"),
                     num_levels=len(strides), box_bias=cfg["anchor_scale"] / 2)
    anchor_gen = StridedAnchorGenerator(sizes=tuple((cfg["anchor_scale"] * s,) for s in strides),
                                        aspect_ratios=((1.0,),) * len(strides), strides=strides)
    return DenseDetector(
        backbone=backbone, head=head, anchor_generator=anchor_gen,
        transform=pyramid_transform(cfg, IMAGENET_MEAN, IMAGENET_STD),
        cls_loss=cls_loss, strides=strides, quality=quality, box_repr=box_repr,
        assigner=make_assigner(assigner, strides, cfg["anchor_scale"], atss_topk, center_radius, pos_iou, neg_iou),
        score_thresh=score_thresh, nms_iou=nms_iou, max_dets=max_dets, topk_candidates=topk_candidates)


def _register_preset(name: str, **defaults) -> None:
    """``name`` = ``dense`` with other defaults; the signature shows them (the platform validates against it)."""
    sig = inspect.signature(build_dense)
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p for p in sig.parameters.values()]

    def builder(**kwargs) -> DenseDetector:
        return build_dense(**{**defaults, **kwargs})

    builder.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    builder.__annotations__ = dict(build_dense.__annotations__)
    builder.__name__ = builder.__qualname__ = f"build_{name}"
    builder.__doc__ = f"The dense detector preset '{name}': {defaults}."
    dense = MODELS.entry("dense")
    register_detector(name, check=check_common, check_losses=_check_losses, active=_active_losses,
                      losses=dense.meta["losses"], roles=dense.meta["roles"])(builder)


_register_preset("gfl", quality="joint", box="general_dfl", assigner="atss")
_register_preset("atss", quality="centerness", box="dirac", assigner="atss")
_register_preset("fcos", quality="centerness", box="dirac", assigner="fcos")
