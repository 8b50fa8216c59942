"""Pyramid anchors sit on the nominal strides (8..128) for any image shape.

The transform pads to a multiple of 32 (torchvision's); stride-2 convs give a level
ceil(padded side / stride) cells, and ``StridedAnchorGenerator`` puts their centres at
k * stride (torchvision's offset 0). torchvision's ``AnchorGenerator`` would infer the
stride as padded size // grid size instead: on a 192 px side P7 has ceil(192 / 128) = 2
cells at an inferred stride 192 // 2 = 96 (centres 0, 96); on an 800 px side 7 cells,
stride 800 // 7 = 114, last centre 684 instead of 768. (Padding to 128 used to avoid that:
an 800 x 1333 image became 896 x 1408, 17% more pixels than 800 x 1344.)
"""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from detectors.models import MODELS
from detectors.models.anchors import StridedAnchorGenerator
from detectors.models.backbones import PYRAMID_STRIDES


def _parts(model):
    """(transform, backbone, anchor generator) of a one-stage detector or a Faster R-CNN."""
    generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
    return model.transform, model.backbone, generator


def _level_centres(model, h, w):
    """Padded size and, per level, the (grid, sorted unique centre ys, sorted unique centre xs)."""
    model.eval()
    transform, backbone, generator = _parts(model)
    with torch.no_grad():
        image_list, _ = transform([torch.zeros(3, h, w)])
        feats = list(backbone(image_list.tensors).values())
        anchors = generator(image_list, feats)[0]
    per_loc = generator.num_anchors_per_location()[0]
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
# 128x192 at tiny's 128/512: already multiples of 32; P7 grid 1 x ceil(192 / 128) = 1x2, centres x 0, 128.
# 800x608 (25 * 32, 19 * 32) with min 608 / max 800: P7 ceil(800 / 128) x ceil(608 / 128) = 7x5, last y 768, x 512.
# 800x1333 with min 800 / max 1333 (COCO at paper scale): 1333 -> 42 * 32 = 1344; P7 7 x ceil(1344 / 128) = 7x11.
# 608x1024 with min 608 / max 1024: P7 ceil(608 / 128) x 1024 / 128 = 5x8.
CASES = [
    ("retinanet", {}, (128, 192), (128, 192), (1, 2)),
    ("gfl", {}, (128, 192), (128, 192), (1, 2)),
    ("retinanet", dict(min_size=608, max_size=800), (800, 608), (800, 608), (7, 5)),
    ("fcos", dict(min_size=608, max_size=800), (800, 608), (800, 608), (7, 5)),
    ("retinanet", dict(min_size=800, max_size=1333), (800, 1333), (800, 1344), (7, 11)),
    ("atss", dict(min_size=800, max_size=1333), (800, 1333), (800, 1344), (7, 11)),
    ("gfl", dict(min_size=608, max_size=1024), (608, 1024), (608, 1024), (5, 8)),
]


@pytest.mark.parametrize("name, overrides, size, padded, p7_grid", CASES)
def test_anchor_centres_are_multiples_of_the_nominal_stride(name, overrides, size, padded, p7_grid):
    model = MODELS.build(name, num_classes=3, **overrides)
    got_padded, levels = _level_centres(model, *size)
    assert len(levels) == len(PYRAMID_STRIDES) == 5
    for stride, ((gh, gw), ys, xs) in zip(PYRAMID_STRIDES, levels):
        assert (gh, gw) == (math.ceil(padded[0] / stride), math.ceil(padded[1] / stride))  # stride-2 convs round up
        assert torch.equal(ys, torch.arange(gh, dtype=ys.dtype) * stride)
        assert torch.equal(xs, torch.arange(gw, dtype=xs.dtype) * stride)
    assert got_padded == padded and levels[-1][0] == p7_grid


# Every detector with anchors or points, at tiny scale, on odd padded sizes: each level's map has
# ceil(side / stride) cells (the generator checks it) and anchors = sum of cells x anchors per location.
# RetinaNet without FPN: one stride-16 map, 45 anchors; Faster R-CNN: P2-P6 (strides 4..64), 3 per location,
# or one C3 map (tiny's single level, stride 8) with 9.
DETECTORS = [("retinanet", {}, (8, 16, 32, 64, 128)), ("retinanet", dict(fpn=False), (16,)),
             ("fcos", {}, (8, 16, 32, 64, 128)), ("atss", {}, (8, 16, 32, 64, 128)),
             ("gfl", {}, (8, 16, 32, 64, 128)), ("faster_rcnn", dict(fpn=True), (4, 8, 16, 32, 64)),
             ("faster_rcnn", {}, (8,))]


@pytest.mark.parametrize("name, overrides, strides", DETECTORS)
@pytest.mark.parametrize("size", [(800, 1344), (608, 1024), (128, 128)])
def test_every_level_has_ceil_side_over_stride_cells(name, overrides, strides, size):
    model = MODELS.build(name, num_classes=3, min_size=min(size), max_size=max(size), **overrides)
    padded, levels = _level_centres(model, *size)
    assert padded == size  # all three are multiples of 32 already, and not resized
    assert [grid for grid, _, _ in levels] == [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in strides]
    for s, ((gh, gw), ys, xs) in zip(strides, levels):
        assert ys.tolist() == [k * s for k in range(gh)] and xs.tolist() == [k * s for k in range(gw)]


def test_paper_scale_pads_800x1333_to_800x1344_with_p7_7x11():
    # COCO's 800 x 1333 at the paper's 800 / 1333: not resized (800 / 800 = 1, 1333 / 1333 = 1), padded to
    # 800 x 42 * 32 = 800 x 1344 (before: 896 x 1408). ResNet-50's stride-2 layers round up: C5 25 x 42,
    # P6 13 x 21, P7 7 x 11, centres y 0..768, x 0..1280 in steps of 128. Shapes on the meta device.
    with torch.device("meta"):
        model = MODELS.build("retinanet", num_classes=3, scale="paper", min_size=800, max_size=1333).eval()
        image_list, _ = model.transform([torch.zeros(3, 800, 1333)])
        feats = list(model.backbone(image_list.tensors).values())
    assert tuple(image_list.tensors.shape[-2:]) == (800, 1344)
    assert [tuple(f.shape[-2:]) for f in feats] == [(100, 168), (50, 84), (25, 42), (13, 21), (7, 11)]
    grid = [torch.zeros(1, 1, *f.shape[-2:]) for f in feats]
    anchors = model.anchor_generator.to("cpu")(ImageList(torch.zeros(1, 3, 800, 1344), [(800, 1333)]), grid)[0]
    p7 = anchors[-7 * 11 * 9:]
    assert ((p7[:, 0] + p7[:, 2]) / 2).unique().tolist() == [k * 128.0 for k in range(11)]
    assert ((p7[:, 1] + p7[:, 3]) / 2).unique().tolist() == [k * 128.0 for k in range(7)]


def test_same_anchors_as_torchvision_where_the_side_divides():
    # 896 x 1408 (7 and 11 times 128): torchvision's inferred strides are the nominal ones, so its
    # anchors and ours are the same tensor; on 800 x 1344 its P7 stride is 800 // 7 = 114 in y.
    sizes, ratios = tuple((4.0 * s,) for s in PYRAMID_STRIDES), ((0.5, 1.0, 2.0),) * 5
    ours, theirs = StridedAnchorGenerator(sizes, ratios, PYRAMID_STRIDES), AnchorGenerator(sizes, ratios)
    for (h, w), same in [((896, 1408), True), ((800, 1344), False)]:
        images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
        grid = [torch.zeros(1, 1, math.ceil(h / s), math.ceil(w / s)) for s in PYRAMID_STRIDES]
        assert torch.equal(ours(images, grid)[0], theirs(images, grid)[0]) == same
    last = theirs(images, grid)[0][-1]  # P7's last location, 2:1 anchor: centre y 6 * 114 = 684 (ours 768)
    assert ((last[1] + last[3]) / 2).item() == 684.0


def test_a_map_that_does_not_match_its_declared_stride_is_an_error():
    # A 128 px side at stride 16 has 8 cells; a 16-cell map is a stride-8 map declared 16.
    generator = StridedAnchorGenerator(((64.0,),), ((1.0,),), (16,))
    with pytest.raises(ValueError, match=r"stride 16\): a \(16, 16\) map for a \(128, 128\) image, expected \(8, 8\)"):
        generator(ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)]), [torch.zeros(1, 1, 16, 16)])
    with pytest.raises(ValueError, match="2 strides for 1 levels"):
        StridedAnchorGenerator(((64.0,),), ((1.0,),), (8, 16))


def test_square_128_images_are_not_padded():
    # 128 is already a multiple of 32: the synthetic set's batches are unchanged.
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
