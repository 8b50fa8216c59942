"""Fixed-size features of regions: RoI pooling, RoIAlign, and an RoI warping layer differentiable in the boxes.

    extract = RoIFeatures("align", output_size=7, strides=(16,))        # one level (C4)
    feats = extract(features, boxes_per_image)                           # [R, C, 7, 7]

- ``pool``: ``torchvision.ops.roi_pool`` (Fast R-CNN sec. 2.1: max over a 7x7 grid of sub-windows);
- ``align``: ``torchvision.ops.roi_align`` (bilinear samples, no quantisation; Mask R-CNN);
- ``warp``: :func:`roi_warp`, bilinear sampling with ``grid_sample`` on a grid built
  from the box coordinates, so the output is differentiable with respect to the
  boxes too. This is the "RoI warping layer" of Dai et al. (Instance-aware Semantic
  Segmentation via Multi-task Network Cascades, CVPR 2016) that the Faster R-CNN
  journal version names for non-approximate joint training: the detection loss
  sends gradient into the proposal boxes, and through them into the RPN's box
  regression. torchvision's ``roi_pool`` / ``roi_align`` give no gradient for the boxes.

With several levels (FPN) each region is read from one level, chosen by FPN eq. 1
(``torchvision.ops.poolers.LevelMapper``: ``k = floor(k0 + log2(sqrt(wh) / s0))``).
"""
from __future__ import annotations

import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align, roi_pool
from torchvision.ops.poolers import LevelMapper

__all__ = ["roi_warp", "RoIFeatures"]


def roi_warp(features: Tensor, boxes: List[Tensor], output_size: int, spatial_scale: float,
             sampling_ratio: int = 2) -> Tensor:
    """Bilinear RoI warping, differentiable in ``features`` and in ``boxes``.

    Each box is divided into ``output_size x output_size`` bins; each bin averages
    ``sampling_ratio^2`` bilinear samples at regularly spaced points (RoIAlign's
    ``aligned=True`` geometry: a box edge at image pixel x lies at feature
    coordinate ``x * spatial_scale``, feature pixel k covers ``[k, k + 1)``).
    Inside the map it equals ``roi_align(..., aligned=True)``; samples beyond the
    border take the border value.

    Args:
        features: float ``[B, C, H, W]``.
        boxes: one float ``[R_b, 4]`` xyxy tensor per image, in image pixels (may require grad).
        output_size: bins per side; spatial_scale: feature pixels per image pixel (1 / stride).
    Returns:
        float ``[sum R_b, C, output_size, output_size]``, images in order.
    """
    n = output_size * sampling_ratio
    # Sample positions as fractions of the box side: bin centres of an n x n grid.
    frac = (torch.arange(n, device=features.device, dtype=features.dtype) + 0.5) / n
    _, c, h, w = features.shape
    out = []
    for b, bx in enumerate(boxes):
        if bx.shape[0] == 0:
            out.append(features.new_zeros((0, c, output_size, output_size)))
            continue
        bx = bx.to(features.dtype) * spatial_scale
        xs = bx[:, 0:1] + frac[None] * (bx[:, 2:3] - bx[:, 0:1])  # [R, n] feature coordinates
        ys = bx[:, 1:2] + frac[None] * (bx[:, 3:4] - bx[:, 1:2])
        # grid_sample with align_corners=False: -1 is the left edge of pixel 0, +1 the right edge of pixel W-1.
        gx = (2.0 * xs / w - 1.0)[:, None, :].expand(-1, n, -1)  # [R, n(y), n(x)]
        gy = (2.0 * ys / h - 1.0)[:, :, None].expand(-1, -1, n)
        grid = torch.stack((gx, gy), dim=-1)  # [R, n, n, 2]
        r = grid.shape[0]
        sampled = F.grid_sample(features[b:b + 1], grid.reshape(1, r * n, n, 2), mode="bilinear",
                                padding_mode="border", align_corners=False)  # [1, C, R*n, n]
        sampled = sampled.reshape(c, r, n, n).permute(1, 0, 2, 3)
        out.append(F.avg_pool2d(sampled, sampling_ratio))
    return torch.cat(out)


class RoIFeatures(nn.Module):
    """Region features from one feature map or a pyramid (no parameters).

    Args:
        op: ``"pool"`` | ``"align"`` | ``"warp"`` (see the module docstring).
        output_size: bins per side (Fast R-CNN: 7).
        strides: stride of each feature level, finest first.
        canonical_scale, canonical_level: FPN eq. 1's ``s0`` and ``k0`` (224, 4).
    """

    def __init__(self, op: str, output_size: int, strides: Sequence[int], canonical_scale: float = 224,
                 canonical_level: int = 4, sampling_ratio: int = 2) -> None:
        super().__init__()
        if op not in ("pool", "align", "warp"):
            raise ValueError(f"unknown RoI op '{op}' (known: pool, align, warp)")
        self.op, self.output_size, self.strides = op, output_size, tuple(strides)
        self.sampling_ratio = sampling_ratio
        levels = [int(round(math.log2(s))) for s in self.strides]
        self.mapper = LevelMapper(levels[0], levels[-1], canonical_scale, canonical_level) if len(levels) > 1 else None

    def _one_level(self, feat: Tensor, boxes: List[Tensor], stride: int) -> Tensor:
        scale = 1.0 / stride
        if self.op == "warp":
            return roi_warp(feat, boxes, self.output_size, scale, self.sampling_ratio)
        boxes = [b.detach().to(feat.dtype) for b in boxes]
        if self.op == "pool":
            return roi_pool(feat, boxes, self.output_size, scale)
        return roi_align(feat, boxes, self.output_size, scale, self.sampling_ratio, aligned=True)

    def forward(self, features: List[Tensor], boxes: List[Tensor]) -> Tensor:
        """``features``: one ``[B, C, H_l, W_l]`` per level; ``boxes``: one ``[R_b, 4]`` per image.
        Returns ``[sum R_b, C, S, S]`` in the order of the images' boxes."""
        if self.mapper is None:
            return self._one_level(features[0], boxes, self.strides[0])
        with torch.no_grad():
            level = self.mapper([b.detach() for b in boxes])  # [R] level index per region
        counts = [b.shape[0] for b in boxes]
        image = torch.repeat_interleave(torch.arange(len(boxes), device=level.device),
                                        torch.as_tensor(counts, device=level.device))
        flat = torch.cat(boxes) if boxes else features[0].new_zeros((0, 4))
        out = features[0].new_zeros((flat.shape[0], features[0].shape[1], self.output_size, self.output_size))
        for k, (feat, stride) in enumerate(zip(features, self.strides)):
            idx = torch.nonzero(level == k).squeeze(1)
            if idx.numel() == 0:
                continue
            per_image = [flat[idx][image[idx] == b] for b in range(len(boxes))]
            order = torch.cat([idx[image[idx] == b] for b in range(len(boxes))])
            out = out.index_put((order,), self._one_level(feat, per_image, stride).to(out.dtype))
        return out
