"""Anchors on each level's nominal stride, whatever the padded image size.

torchvision's ``AnchorGenerator`` infers a level's stride as padded side // grid side.
Stride-2 convs round a map up (a side S gives ceil(S / stride) cells), so unless the
padded side is a multiple of the coarsest stride the inferred stride is wrong: on an
800 px side P7 (stride 128) has ceil(800 / 128) = 7 cells and torchvision puts them
800 // 7 = 114 px apart (last centre 684, not 768). ``StridedAnchorGenerator`` takes the
strides the backbone declares instead, so the transform pads to 32 as torchvision's
and Detectron2's do (an 800 x 1333 image: 800 x 1344), not to 128 (896 x 1408, 17% more
pixels).
"""
from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

# What the transforms of the detectors with anchors or points pad a batch to (torchvision's default).
SIZE_DIVISIBLE = 32

__all__ = ["SIZE_DIVISIBLE", "StridedAnchorGenerator"]


class StridedAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` with one declared stride per feature map.

    Level l's anchors are centred at (k * strides[l], j * strides[l]) for every cell
    (j, k) of its map (torchvision's convention: offset 0, the cell's top-left corner),
    its ``cell_anchors`` around each centre, level by level, row-major, anchors of a
    location together: the order torchvision's heads flatten to.
    Returns one float ``[sum_l H_l * W_l * A_l, 4]`` xyxy tensor per image.

    A map must have ceil(padded side / stride) cells per side, as stride-2 convs give:
    a declared stride that does not match the backbone is an error, not shifted anchors.
    """

    def __init__(self, sizes: Tuple[Tuple[float, ...], ...], aspect_ratios: Tuple[Tuple[float, ...], ...],
                 strides: Sequence[int]) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(self.sizes):
            raise ValueError(f"{len(strides)} strides for {len(self.sizes)} levels of anchor sizes")
        self.strides = tuple(int(s) for s in strides)

    def forward(self, image_list: ImageList, feature_maps: List[Tensor]) -> List[Tensor]:
        padded = image_list.tensors.shape[-2:]
        grid_sizes = [f.shape[-2:] for f in feature_maps]
        for level, (grid, stride) in enumerate(zip(grid_sizes, self.strides)):
            expected = tuple(math.ceil(side / stride) for side in padded)
            if tuple(grid) != expected:
                raise ValueError(f"anchor level {level} (stride {stride}): a {tuple(grid)} map for a "
                                 f"{tuple(padded)} image, expected {expected} (ceil(side / stride))")
        device = feature_maps[0].device
        # int64 strides as torchvision's, so on sides that divide exactly the anchors are bit-identical to its
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        self.set_cell_anchors(feature_maps[0].dtype, device)
        per_level = self.grid_anchors(grid_sizes, strides)
        return [torch.cat(per_level) for _ in image_list.image_sizes]
