"""The head of the configurable dense detector and its box-output decoding.

One location, one prediction (FCOS, ATSS and GFL all use a single point or
square anchor per location): a classification tower and a box tower of
``num_convs`` x conv3x3(width) (+ GroupNorm for GFL's paper setting, sec. 4),
shared across levels, as RetinaNet's subnets. On top:

- ``cls``: ``K`` logits (the GFL joint classification-IoU score when trained with QFL);
- ``box``: the raw outputs of the injected box representation
  (``detectors.models.box_repr``: its ``channels`` per location);
- ``quality``: one logit on the box tower (FCOS centerness, or the IoU-aware
  branch's predicted IoU), when the detector has such a branch.

A learnable scalar per level multiplies the box outputs (FCOS sec. 3.3, kept
by GFL), since the levels share the head but not the object sizes.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from detectors.models.retinanet import RetinaHead, conv_subnet


def centerness_target(dist: Tensor) -> Tensor:
    """FCOS centerness ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` (FCOS eq. 3).

    ``dist``: ``[N, 4]`` side distances; negative ones (a location outside its
    gt, possible with the max-IoU assigner) count as 0, giving centerness 0.
    """
    d = dist.clamp(min=0)
    lr, tb = d[:, [0, 2]], d[:, [1, 3]]
    ratio_x = lr.min(1).values / lr.max(1).values.clamp(min=1e-6)
    ratio_y = tb.min(1).values / tb.max(1).values.clamp(min=1e-6)
    return (ratio_x * ratio_y).sqrt()


class LevelGain(nn.Module):
    """A learnable gain on one pyramid level's box outputs (FCOS sec. 3.3: levels share the head, not object sizes)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gain


class DenseHead(nn.Module):
    """Classification and box towers shared across levels; see the module docstring.

    Args:
        box_repr: the box representation (``detectors.models.box_repr``): its
            ``channels`` per location and the initial bias of its outputs.
        box_bias: the side (stride units) of the untrained prediction; half the
            anchor size makes it the anchor box.
    Returns (forward): dict with ``cls`` [B, A, K], ``box`` [B, A, C] and
        ``quality`` [B, A] or None; A = sum of H*W over levels, ordered level,
        then row-major location, as torchvision's ``AnchorGenerator`` with one
        anchor per location.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, num_convs: int,
                 norm: Optional[str], prior_prob: float, box_repr, has_quality: bool, num_levels: int,
                 box_bias: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_dim = box_repr.channels
        self.cls_tower = conv_subnet(in_channels, width, num_convs, norm)
        self.box_tower = conv_subnet(in_channels, width, num_convs, norm)
        tower_out = width if num_convs else in_channels  # no convs: the outputs sit on the features
        self.cls_out = nn.Conv2d(tower_out, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(tower_out, self.box_dim, 3, padding=1)
        # The quality branch sits on the box tower (FCOS's improved variant, ATSS, IoU-aware).
        self.quality_out = nn.Conv2d(tower_out, 1, 3, padding=1) if has_quality else None
        self.level_gains = nn.ModuleList(LevelGain(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:  # convs followed by GroupNorm have none
                    nn.init.zeros_(m.bias)
        # Prior init (focal loss paper sec. 4.1), as RetinaNet.
        nn.init.constant_(self.cls_out.bias, -math.log((1.0 - prior_prob) / prior_prob))
        box_repr.init_bias(self.box_out.bias, box_bias)

    def forward(self, feats: List[Tensor]) -> Dict[str, Optional[Tensor]]:
        cls, box, quality = [], [], []
        for f, gain in zip(feats, self.level_gains):
            c, b = self.cls_tower(f), self.box_tower(f)
            cls.append(RetinaHead._flatten(self.cls_out(c), self.num_classes))
            box.append(RetinaHead._flatten(gain(self.box_out(b)), self.box_dim))
            if self.quality_out is not None:
                quality.append(RetinaHead._flatten(self.quality_out(b), 1))
        return {"cls": torch.cat(cls, 1), "box": torch.cat(box, 1),
                "quality": torch.cat(quality, 1).squeeze(-1) if quality else None}
