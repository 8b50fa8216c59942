"""The head of the configurable dense detector and its box-output decoding.

One location, one prediction (FCOS, ATSS and GFL all use a single point or
square anchor per location): a classification tower and a box tower of
``num_convs`` x conv3x3(width) (+ GroupNorm for GFL's paper setting, sec. 4),
shared across levels, as RetinaNet's subnets. On top:

- ``cls``: ``K`` logits (the GFL joint classification-IoU score when trained with QFL);
- ``box``: the four side distances ``l, t, r, b`` from the location in stride
  units, in one of four representations (GFL Table 2a):
  ``dirac`` 4 values, ``gaussian`` 4 means + 4 log-variances,
  ``general`` / ``general_dfl`` 4 x (n + 1) bin logits;
- ``quality``: one logit on the box tower (FCOS centerness, or the IoU-aware
  branch's predicted IoU), when the detector has such a branch.

A learnable scalar per level multiplies the box outputs (FCOS sec. 3.3, kept
by GFL), since the levels share the head but not the object sizes.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectors.losses.gfl import integral
from detectors.models.retinanet import RetinaHead, conv_subnet

BOX_REPRESENTATIONS = ("dirac", "gaussian", "general", "general_dfl")

# Bound on the Gaussian log-variance: exp(-a) in the NLL overflows float32 below
# about -88, and an untrained head can get there; e^10 covers any sensible spread.
LOG_VAR_BOUND = 10.0


def box_channels(box: str, reg_max: int) -> int:
    """Channels per location of the box output for a representation."""
    if box not in BOX_REPRESENTATIONS:
        raise ValueError(f"unknown box representation '{box}' (known: {', '.join(BOX_REPRESENTATIONS)})")
    return {"dirac": 4, "gaussian": 8}.get(box, 4 * (reg_max + 1))


def side_distances(raw: Tensor, box: str, reg_max: int, bin_width: float) -> Tensor:
    """Raw box outputs ``[M, C]`` -> side distances ``[M, 4]`` (l, t, r, b) in stride units.

    Dirac and the Gaussian mean regress the distance directly (ReLU keeps it
    non-negative, as FCOS with normalised targets); the general distribution
    takes its expectation over bins ``0, Delta, ..., n Delta`` (GFL eq. 4).
    """
    if box in ("dirac", "gaussian"):
        return F.relu(raw[:, :4])
    return integral(raw.reshape(-1, 4, reg_max + 1), bin_width)


def gaussian_log_var(raw: Tensor) -> Tensor:
    """The Gaussian representation's log-variances ``[M, 4]``, bounded (see ``LOG_VAR_BOUND``)."""
    return raw[:, 4:8].clamp(-LOG_VAR_BOUND, LOG_VAR_BOUND)


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


class Scale(nn.Module):
    """A learnable scalar (one per pyramid level)."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class DenseHead(nn.Module):
    """Classification and box towers shared across levels; see the module docstring.

    Args:
        box_bias: initial bias of the four side outputs of ``dirac`` /
            ``gaussian`` (stride units). Half the anchor size makes the
            untrained prediction the anchor box: at zero-size boxes GIoU has
            no gradient to grow them (intersection and union do not change).
    Returns (forward): dict with ``cls`` [B, A, K], ``box`` [B, A, C] and
        ``quality`` [B, A] or None; A = sum of H*W over levels, ordered level,
        then row-major location, as torchvision's ``AnchorGenerator`` with one
        anchor per location.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int, num_convs: int,
                 norm: Optional[str], prior_prob: float, box: str, reg_max: int,
                 has_quality: bool, num_levels: int, box_bias: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.box = num_classes, box
        self.box_dim = box_channels(box, reg_max)
        self.cls_tower = conv_subnet(in_channels, width, num_convs, norm)
        self.box_tower = conv_subnet(in_channels, width, num_convs, norm)
        self.cls_out = nn.Conv2d(width, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(width, self.box_dim, 3, padding=1)
        # The quality branch sits on the box tower (FCOS's improved variant, ATSS, IoU-aware).
        self.quality_out = nn.Conv2d(width, 1, 3, padding=1) if has_quality else None
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        # Prior init (focal loss paper sec. 4.1), as RetinaNet.
        nn.init.constant_(self.cls_out.bias, -math.log((1.0 - prior_prob) / prior_prob))
        if box in ("dirac", "gaussian"):
            with torch.no_grad():
                self.box_out.bias[:4] = box_bias

    def forward(self, feats: List[Tensor]) -> Dict[str, Optional[Tensor]]:
        cls, box, quality = [], [], []
        for f, scale in zip(feats, self.scales):
            c, b = self.cls_tower(f), self.box_tower(f)
            cls.append(RetinaHead._flatten(self.cls_out(c), self.num_classes))
            box.append(RetinaHead._flatten(scale(self.box_out(b)), self.box_dim))
            if self.quality_out is not None:
                quality.append(RetinaHead._flatten(self.quality_out(b), 1))
        return {"cls": torch.cat(cls, 1), "box": torch.cat(box, 1),
                "quality": torch.cat(quality, 1).squeeze(-1) if quality else None}
