"""What R-CNN, Fast R-CNN and Faster R-CNN share: scale presets, backbones, the transform, stage clocks.

Backbones (one conv body, two ways to read it):

- ``single_level_backbone``: the body's C4 (stride 16), the one feature map of
  Fast R-CNN (VGG-16 conv5_3, stride 16) and of Faster R-CNN without FPN;
- ``fpn_backbone``: an FPN over C2-C5 giving P2-P6 (P6 by max pooling P5),
  the FPN paper's Faster R-CNN setting (Lin et al., arXiv 1612.03144, sec. 4).

Both return an ``OrderedDict`` of named maps and expose ``out_channels`` and
``strides``. ``tiny`` is ``detectors.models.backbones.TinyBody`` (the dense
detectors' body, trained from scratch); ``paper`` is ResNet-50 (random init:
nothing can be downloaded here).

Stage clocks: in eval mode a two-stage detector records the wall time of its
stages, as the Faster R-CNN paper's Table 5 splits it: ``proposals`` (selective
search, or the RPN), ``features`` (the whole-image conv layers, shared by all
regions) and ``regions`` (everything per region: R-CNN's warped crops and
their CNN, RoI pooling and the box head, classifiers, NMS).
"""
from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import Dict, Iterator, List, Sequence, Tuple

import torch
from torch import Tensor, nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from detectors.models.backbones import TINY_WIDTHS, TinyBody
from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD

# The RPN's proposal settings at paper scale (600 x 1000 px images); ``pre_*``: proposals kept
# before NMS (per level with FPN), ``post_*``: after it (in total), per image, training and test;
# ``min_size``: the smallest proposal side kept, px of the resized image.
# - C4 (no FPN): py-faster-rcnn's lib/fast_rcnn/config.py: RPN_PRE_NMS_TOP_N 12000 training /
#   6000 test, RPN_POST_NMS_TOP_N 2000 / 300 (the paper's "2000 RPN proposals" for training and 300
#   at test), RPN_MIN_SIZE 16 px.
# - FPN: Detectron's FPN settings: 2000 per level before NMS in training, 1000 at test, and 2000 /
#   1000 in total after it; RPN_MIN_SIZE 0.
# py-faster-rcnn counts RPN_MIN_SIZE in the original image's pixels; here it is px of the resized
# image (16 at 600 px), so it scales with the preset's image size like everything else.
RPN_PAPER = {
    False: dict(pre_train=12000, post_train=2000, pre_test=6000, post_test=300, min_size=16.0),
    True: dict(pre_train=2000, post_train=2000, pre_test=1000, post_test=1000, min_size=0.0),
}
MIN_PROPOSAL_SIDE = 1e-3  # torchvision's RPN min_size: drops boxes clipped to nothing (zero area), at any preset


def _scaled_rpn(paper: dict, side: float, area: float) -> dict:
    """The paper's RPN settings for images ``side`` times the paper's side and ``area`` times its
    area: counts by area (as many regions per pixel; never below 1), ``min_size`` by side."""
    counts = {k: max(1, round(v * area)) for k, v in paper.items() if k != "min_size"}
    return {**counts, "min_size": max(MIN_PROPOSAL_SIDE, paper["min_size"] * side)}


# Tiny images against the paper's: 128 x 128 vs 600 x 1000 (the paper's "typical 1000 x 600
# image", sec. 3.3): side 128 / 600 = 0.213 (the shorter sides, each preset's min_size), area
# 16384 / 600000 = 0.0273. So the tiny RPN keeps, C4: 12000 -> 328, 2000 -> 55, 6000 -> 164,
# 300 -> 8 proposals, min size 16 -> 3.41 px; FPN: 2000 -> 55 per level / 55 in total, 1000 -> 27
# / 27. Selective search keeps about that ratio by itself: ~2000 regions on a 500 x 375 VOC image,
# 22-82 (mean 44) on tiny synthetic images (10 images of the default set).
TINY_SIDE, TINY_AREA = 128 / 600, 128 * 128 / (600 * 1000)

# ``anchor_sizes``: the single-level RPN's 3 scales (the paper's 128, 256, 512 at 600 px;
# tiny images hold 10-56 px objects, so 12, 24, 48). ``anchor_base``: with FPN, each
# level's anchors are anchor_base * stride (32 px on P2 to 512 px on P6 at paper scale, the
# FPN paper's; 8 to 128 px at tiny), times (1, 2^(1/3), 2^(2/3)) with 3 scales per level.
# ``canonical_scale``: FPN eq. 1's 224 (an ImageNet-sized RoI goes to P4),
# scaled to tiny images. ``rep``: width of the box head's two FC layers. ``single_level``: the
# one map without FPN: the paper's C4 (stride 16); tiny images hold 10-56 px objects, which
# cover 1-3 cells at stride 16 (a 4-epoch probe: Fast R-CNN 0.08 AP50 there), so tiny reads C3
# (stride 8), the paper's objects-to-stride ratio. ``rpn`` / ``rpn_fpn``: the RPN's proposal
# settings without / with FPN (``RPN_PAPER``, scaled).
SCALES = {
    "tiny": dict(widths=TINY_WIDTHS, single_level="c3", fpn_width=32, min_size=128, max_size=512, rep=256,
                 roi_size=7, anchor_sizes=(12.0, 24.0, 48.0), anchor_base=2.0, canonical_scale=32, crop_size=32,
                 rpn=_scaled_rpn(RPN_PAPER[False], TINY_SIDE, TINY_AREA),
                 rpn_fpn=_scaled_rpn(RPN_PAPER[True], TINY_SIDE, TINY_AREA)),
    "paper": dict(widths=None, single_level="c4", fpn_width=256, min_size=600, max_size=1000, rep=1024,
                  roi_size=7, anchor_sizes=(128.0, 256.0, 512.0), anchor_base=8.0, canonical_scale=224, crop_size=224,
                  rpn=_scaled_rpn(RPN_PAPER[False], 1.0, 1.0), rpn_fpn=_scaled_rpn(RPN_PAPER[True], 1.0, 1.0)),
}
FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6


def scale_preset(scale: str) -> dict:
    if scale not in SCALES:
        raise ValueError(f"unknown scale '{scale}' (known: {', '.join(SCALES)})")
    return dict(SCALES[scale])


class NamedFeatures(nn.Module):
    """A feature extractor returning ``OrderedDict(name -> [B, C, H, W])`` with ``out_channels``
    (one width for every map) and ``strides`` (one per map, in order)."""

    def __init__(self, body: nn.Module, names: Sequence[str], out_channels: int, strides: Sequence[int]) -> None:
        super().__init__()
        self.body = body
        self.names, self.out_channels, self.strides = list(names), out_channels, tuple(strides)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        return OrderedDict(zip(self.names, self.body(x).values()))


def _body(scale: str, cfg: dict) -> Tuple[nn.Module, Dict[str, str], List[int]]:
    """The conv body, the names of its C2..C5 stages and their widths."""
    if scale == "paper":
        return resnet50(weights=None), {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"}, [
            256, 512, 1024, 2048]
    return TinyBody(cfg["widths"]), {"layer2": "c2", "layer3": "c3", "layer4": "c4", "layer5": "c5"}, list(
        cfg["widths"][1:])


def single_level_backbone(scale: str, cfg: dict) -> NamedFeatures:
    """One stage's map, ``cfg["single_level"]`` (``c3``, stride 8, or ``c4``, stride 16): the body
    stops there, later stages are not built."""
    body, names, widths = _body(scale, cfg)
    level = cfg["single_level"]
    layer = next(k for k, v in names.items() if v == level)
    index = int(level[1]) - 2  # c2 -> 0
    return NamedFeatures(IntermediateLayerGetter(body, {layer: level}), [level], widths[index], (2 ** (index + 2),))


def fpn_backbone(scale: str, cfg: dict) -> NamedFeatures:
    """P2-P6: an FPN over C2-C5, P6 by stride-2 max pooling of P5 (torchvision's ``LastLevelMaxPool``)."""
    body, names, widths = _body(scale, cfg)
    fpn = BackboneWithFPN(body, return_layers=names, in_channels_list=widths, out_channels=cfg["fpn_width"])
    return NamedFeatures(fpn, ["p2", "p3", "p4", "p5", "p6"], cfg["fpn_width"], FPN_STRIDES)


def make_transform(cfg: dict, size_divisible: int) -> GeneralizedRCNNTransform:
    """Resize to ``min_size`` / ``max_size``, normalise, pad the batch to a multiple of
    ``size_divisible`` (each builder's: the anchors sit on their nominal strides at any
    padding, see ``detectors.models.anchors``)."""
    return GeneralizedRCNNTransform(cfg["min_size"], cfg["max_size"], IMAGENET_MEAN, IMAGENET_STD,
                                    size_divisible=size_divisible)


def resize_boxes_to(boxes: List[Tensor], original: List[Tuple[int, int]], resized: List[Tuple[int, int]]
                    ) -> List[Tensor]:
    """Boxes in each original image's pixels -> the transformed (resized) image's pixels."""
    out = []
    for b, (h0, w0), (h1, w1) in zip(boxes, original, resized):
        scale = torch.tensor([w1 / w0, h1 / h0, w1 / w0, h1 / h0], dtype=b.dtype, device=b.device)
        out.append(b * scale)
    return out


class StageClock:
    """Wall time per named stage of one forward pass, in milliseconds (CUDA synchronised)."""

    def __init__(self) -> None:
        self.times: Dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, device: torch.device) -> Iterator[None]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            self.times[name] = self.times.get(name, 0.0) + (time.perf_counter() - t0) * 1000.0


def maybe_no_grad(module: nn.Module):
    """``torch.no_grad()`` when none of ``module``'s parameters trains (a frozen phase): the
    same values, without keeping activations for a backward pass that never reaches it."""
    trains = any(p.requires_grad for p in module.parameters())
    return contextlib.nullcontext() if trains and torch.is_grad_enabled() else torch.no_grad()
