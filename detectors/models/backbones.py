"""Backbones with a feature pyramid (P3-P7) for the dense detectors.

Two scales from one code path:

- ``tiny``: a narrow, BatchNorm'd conv net (strides 8/16/32 for C3-C5) sized so a
  RetinaNet trains on 2 CPU cores in minutes. Its pretrained weights come from the
  platform's own pretraining stage (``detectors.train.pretrain``).
- ``paper``: ResNet-50 (torchvision) with a 256-channel FPN, the RetinaNet paper's
  setting (arXiv 1708.02002, sec. 4); pretrained weights from the user's file.
Both start from random weights unless the trial names weights (``detectors.models.pretrained``).

Both return an ``OrderedDict`` of feature maps ``p3..p7`` and expose
``out_channels`` and ``strides``, the contract the heads rely on.
``single_level_backbone`` is the pyramid's ablation: one map, C4 (stride 16),
the single-scale baseline of the FPN paper (Lin et al., arXiv 1612.03144, Table 1).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import torch
from torch import nn
from torchvision.models import resnet50
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from detectors.models.anchors import SIZE_DIVISIBLE

PYRAMID_STRIDES = (8, 16, 32, 64, 128)  # P3..P7
# The tiny body's stage widths: one body for every tiny detector, so one pretrained body serves them all.
TINY_WIDTHS = [16, 32, 48, 64, 96]


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyBody(nn.Module):
    """Five stride-2 stages; ``layer3..layer5`` give C3 (stride 8) to C5 (stride 32).

    Each stage is a strided conv followed by one stride-1 conv: the smallest body
    that still has a receptive field covering the largest generated objects.
    """

    def __init__(self, widths: List[int]) -> None:
        super().__init__()
        w1, w2, w3, w4, w5 = widths
        self.layer1 = _conv_bn(3, w1, 2)
        self.layer2 = nn.Sequential(_conv_bn(w1, w2, 2), _conv_bn(w2, w2, 1))
        self.layer3 = nn.Sequential(_conv_bn(w2, w3, 2), _conv_bn(w3, w3, 1))
        self.layer4 = nn.Sequential(_conv_bn(w3, w4, 2), _conv_bn(w4, w4, 1))
        self.layer5 = nn.Sequential(_conv_bn(w4, w5, 2), _conv_bn(w5, w5, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - IntermediateLayerGetter walks children
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5):
            x = layer(x)
        return x


class PyramidBackbone(nn.Module):
    """Wraps torchvision's ``BackboneWithFPN`` and names the levels p3..p7."""

    def __init__(self, body_with_fpn: BackboneWithFPN) -> None:
        super().__init__()
        self.body = body_with_fpn
        self.out_channels = body_with_fpn.out_channels
        self.strides = PYRAMID_STRIDES

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        feats = list(self.body(x).values())
        return OrderedDict((f"p{i + 3}", f) for i, f in enumerate(feats))


def tiny_fpn_backbone(widths: List[int], fpn_width: int) -> PyramidBackbone:
    body = TinyBody(widths)
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer3": "c3", "layer4": "c4", "layer5": "c5"},
        in_channels_list=list(widths[2:]),
        out_channels=fpn_width,
        # P6 from P5 (torchvision's choice; the paper takes C5): keeps P6/P7 narrow.
        extra_blocks=LastLevelP6P7(fpn_width, fpn_width),
    )
    return PyramidBackbone(fpn)


def resnet50_fpn_backbone(fpn_width: int = 256) -> PyramidBackbone:
    body = resnet50(weights=None)
    fpn = BackboneWithFPN(
        body,
        return_layers={"layer2": "c3", "layer3": "c4", "layer4": "c5"},
        in_channels_list=[512, 1024, 2048],
        out_channels=fpn_width,
        extra_blocks=LastLevelP6P7(fpn_width, fpn_width),
    )
    return PyramidBackbone(fpn)


def scale_config(presets: Dict[str, dict], scale: str, head_norm: Optional[str] = "scale", **overrides) -> dict:
    """A scale preset with the builder's explicit arguments on top (``None`` keeps the
    preset's value; ``head_norm="scale"`` keeps the preset's norm, ``None`` means none)."""
    if scale not in presets:
        raise ValueError(f"unknown scale '{scale}' (known: {', '.join(presets)})")
    cfg = dict(presets[scale])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if head_norm != "scale":
        cfg["head_norm"] = head_norm
    return cfg


class SingleLevelBackbone(nn.Module):
    """C4 only, through what FPN does to each level (1x1 lateral conv to ``width``, 3x3 output
    conv) without the top-down path or the other levels: ``{"c4": [N, width, H/16, W/16]}``."""

    def __init__(self, body: nn.Module, layer: str, channels: int, width: int) -> None:
        super().__init__()
        self.body = IntermediateLayerGetter(body, {layer: "c4"})
        self.lateral = nn.Conv2d(channels, width, 1)
        self.output = nn.Conv2d(width, width, 3, padding=1)
        self.out_channels = width
        self.strides = (16,)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return OrderedDict(c4=self.output(self.lateral(self.body(x)["c4"])))


def single_level_backbone(scale: str, cfg: dict) -> SingleLevelBackbone:
    """ResNet-50's C4 (layer3) for ``paper``, the tiny body's C4 (layer4) otherwise."""
    if scale == "paper":
        return SingleLevelBackbone(resnet50(weights=None), "layer3", 1024, cfg["fpn_width"])
    return SingleLevelBackbone(TinyBody(cfg["widths"]), "layer4", cfg["widths"][3], cfg["fpn_width"])


def pyramid_transform(cfg: dict, mean: List[float], std: List[float]) -> GeneralizedRCNNTransform:
    """Resize to ``cfg["min_size"]``/``cfg["max_size"]``, normalise, and pad the batch to a
    multiple of 32 (torchvision's, Detectron2's): an 800 x 1333 image becomes 800 x 1344.

    The anchors need no more: ``StridedAnchorGenerator`` puts level l's centres at
    k * nominal stride on its ceil(side / stride) cells, whatever the padded size.
    """
    return GeneralizedRCNNTransform(cfg["min_size"], cfg["max_size"], mean, std, size_divisible=SIZE_DIVISIBLE)


def pyramid_backbone(scale: str, cfg: dict) -> PyramidBackbone:
    """ResNet-50-FPN for ``paper``, the tiny body otherwise; both P3-P7."""
    if scale == "paper":
        return resnet50_fpn_backbone(cfg["fpn_width"])
    return tiny_fpn_backbone(cfg["widths"], cfg["fpn_width"])
