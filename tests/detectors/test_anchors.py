"""Pyramid anchors sit on the nominal strides (8..128) for any image shape.

torchvision's ``AnchorGenerator`` infers a level's stride as padded size // grid size
and puts centres at k * stride (offset 0). The transform pads to a multiple of 128,
so for every level grid * nominal stride == padded size and the centres are exactly
k * stride. Before the padding, a 192 px side gave P7 a grid of ceil(192 / 128) = 2
and an inferred stride 192 // 2 = 96 (centres 0, 96); an 800 px side gave P7 7 cells,
stride 800 // 7 = 114, last centre 684 instead of 768.
"""
import pytest
import torch

from detectors.models import MODELS
from detectors.models.backbones import PYRAMID_STRIDES


def _level_centres(model, h, w):
    """Padded size and, per level, the (grid, sorted unique centre ys, sorted unique centre xs)."""
    model.eval()
    with torch.no_grad():
        image_list, _ = model.transform([torch.zeros(3, h, w)])
        feats = list(model.backbone(image_list.tensors).values())
        anchors = model.anchor_generator(image_list, feats)[0]
    per_loc = model.anchor_generator.num_anchors_per_location()[0]
    levels, start = [], 0
    for f in feats:
        gh, gw = f.shape[-2:]
        a = anchors[start:start + gh * gw * per_loc]
        start += gh * gw * per_loc
        levels.append(((gh, gw), ((a[:, 1] + a[:, 3]) / 2).unique(), ((a[:, 0] + a[:, 2]) / 2).unique()))
    assert start == anchors.shape[0]
    return tuple(image_list.tensors.shape[-2:]), levels


# (model, builder overrides, input h x w, padded h x w, P7 grid).
# min/max sizes are chosen so the input is not resized (scale factor exactly 1):
# 128x192 at tiny's 128/512; 800x608 with min 608 / max 800.
# 128x192 -> 128x256: P7 grid 1x2, centres x 0, 128.
# 800x608 -> 896x640 (7 * 128, 5 * 128): P7 grid 7x5, last centres y 768, x 512.
CASES = [
    ("retinanet", {}, (128, 192), (128, 256), (1, 2)),
    ("gfl", {}, (128, 192), (128, 256), (1, 2)),
    ("retinanet", dict(min_size=608, max_size=800), (800, 608), (896, 640), (7, 5)),
    ("fcos", dict(min_size=608, max_size=800), (800, 608), (896, 640), (7, 5)),
]


@pytest.mark.parametrize("name, overrides, size, padded, p7_grid", CASES)
def test_anchor_centres_are_multiples_of_the_nominal_stride(name, overrides, size, padded, p7_grid):
    model = MODELS.build(name, num_classes=3, **overrides)
    got_padded, levels = _level_centres(model, *size)
    assert len(levels) == len(PYRAMID_STRIDES) == 5
    for stride, ((gh, gw), ys, xs) in zip(PYRAMID_STRIDES, levels):
        assert torch.equal(ys, torch.arange(gh, dtype=ys.dtype) * stride)
        assert torch.equal(xs, torch.arange(gw, dtype=xs.dtype) * stride)
        assert (gh * stride, gw * stride) == padded  # every level divides the padded size exactly
    assert got_padded == padded and levels[-1][0] == p7_grid


def test_paper_scale_p7_centres_on_800x608():
    # The paper preset resizes 800x608 by 600 / 608 to 789x600 (min side 600), padded to
    # 896x640; ResNet-50's stride-2 layers also round up, so P7 is 7x5 with stride 128.
    model = MODELS.build("retinanet", num_classes=3, scale="paper")
    padded, levels = _level_centres(model, 800, 608)
    assert padded == (896, 640)
    (gh, gw), ys, xs = levels[-1]
    assert (gh, gw) == (7, 5)
    assert ys.tolist() == [0.0, 128.0, 256.0, 384.0, 512.0, 640.0, 768.0]
    assert xs.tolist() == [0.0, 128.0, 256.0, 384.0, 512.0]


def test_square_128_images_are_not_padded():
    # 128 is already a multiple of 128: the synthetic set's batches are unchanged.
    model = MODELS.build("retinanet", num_classes=3)
    padded, levels = _level_centres(model, 128, 128)
    assert padded == (128, 128)
    assert [grid for grid, _, _ in levels] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.mark.parametrize("scale, base", [("tiny", 2.0), ("paper", 8.0)])
def test_faster_rcnn_fpn_has_one_anchor_size_per_level(scale, base):
    # FPN paper sec. 4.1: one scale per level, 3 ratios. Sizes anchor_base * stride on P2-P6 (strides
    # 4..64): tiny 8, 16, 32, 64, 128 px; paper 32, 64, 128, 256, 512 px (areas 32^2 to 512^2).
    model = MODELS.build("faster_rcnn", num_classes=3, scale=scale, fpn=True)
    generator = model.rpn.anchor_generator
    strides = (4, 8, 16, 32, 64)
    assert generator.sizes == tuple((base * s,) for s in strides)
    assert generator.num_anchors_per_location() == [3] * 5
    # The square anchor at each level's first location (centre 0, 0) spans +- size / 2.
    for cell, s in zip(generator.cell_anchors, strides):
        assert cell[1].tolist() == [-base * s / 2, -base * s / 2, base * s / 2, base * s / 2]
    # A 128 x 128 tiny image: grids 32, 16, 8, 4, 2 -> 1024 + 256 + 64 + 16 + 4 = 1364 locations,
    # 3 anchors each = 4092 (9 each with 3 scales per level: 12276).
    if scale == "tiny":
        model.eval()
        with torch.no_grad():
            image_list, _ = model.transform([torch.zeros(3, 128, 128)])
            feats = list(model.backbone(image_list.tensors).values())
        assert generator(image_list, feats)[0].shape[0] == 1364 * 3
        three = MODELS.build("faster_rcnn", num_classes=3, fpn=True, fpn_anchor_scales=3).rpn.anchor_generator
        assert three.num_anchors_per_location() == [9] * 5
        assert three(image_list, feats)[0].shape[0] == 1364 * 9
        assert three.sizes[0] == pytest.approx((8.0, 8 * 2 ** (1 / 3), 8 * 2 ** (2 / 3)))  # 8, 10.08, 12.70
