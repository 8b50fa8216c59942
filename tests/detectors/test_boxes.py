"""detectors.boxes: conversions, clipping, paired IoU, centres and side distances, the R-CNN box coder."""
import math

import torch

from detectors.boxes import (BoxCoder, aligned_box_iou, box_area, box_centres, box_iou, box_to_distance, clip_boxes,
                             distance_to_box, xywh_to_xyxy, xyxy_to_xywh)


def test_xywh_to_xyxy_known_answer():
    # (x=2, y=3, w=4, h=5) -> x2 = 2 + 4 = 6, y2 = 3 + 5 = 8
    out = xywh_to_xyxy(torch.tensor([[2.0, 3.0, 4.0, 5.0], [0.0, 0.0, 1.5, 0.5]]))
    assert torch.equal(out, torch.tensor([[2.0, 3.0, 6.0, 8.0], [0.0, 0.0, 1.5, 0.5]]))


def test_xyxy_to_xywh_known_answer_and_round_trip():
    # (10, 20, 15, 40) -> w = 15 - 10 = 5, h = 40 - 20 = 20
    boxes = torch.tensor([[10.0, 20.0, 15.0, 40.0]])
    assert torch.equal(xyxy_to_xywh(boxes), torch.tensor([[10.0, 20.0, 5.0, 20.0]]))
    assert torch.equal(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes)


def test_conversions_do_not_modify_input():
    boxes = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    xywh_to_xyxy(boxes)
    xyxy_to_xywh(boxes)
    clip_boxes(boxes, 2, 2)
    assert torch.equal(boxes, torch.tensor([[1.0, 2.0, 3.0, 4.0]]))


def test_clip_boxes():
    # image 20 high x 30 wide: x in [0, 30], y in [0, 20]
    boxes = torch.tensor([[-5.0, -1.0, 35.0, 25.0], [5.0, 5.0, 10.0, 10.0]])
    out = clip_boxes(boxes, height=20, width=30)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 30.0, 20.0], [5.0, 5.0, 10.0, 10.0]]))


def test_area_and_iou_are_torchvision_s():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 5.0, 15.0, 15.0]])
    # area 10 * 10 = 100; overlap 5 * 5 = 25, union 100 + 100 - 25 = 175 -> 1/7
    assert box_area(a).item() == 100.0
    assert math.isclose(box_iou(a, b).item(), 25 / 175, rel_tol=1e-6)


def test_encode_known_delta():
    # ref centre (5, 5), size 10; gt centre (10, 10), size 10
    # dx = (10 - 5) / 10 = 0.5, dy = 0.5, dw = log(10 / 10) = 0, dh = 0
    coder = BoxCoder()
    d = coder.encode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[5.0, 5.0, 15.0, 15.0]]))
    assert torch.allclose(d, torch.tensor([[0.5, 0.5, 0.0, 0.0]]))


def test_encode_weights_and_scale():
    # ref (0,0,10,10) -> gt (0,0,20,40): centres (5,5) -> (10,20)
    # dx = 10 * (10-5)/10 = 5, dy = 10 * (20-5)/10 = 15, dw = 5 * log 2, dh = 5 * log 4
    coder = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    d = coder.encode(torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[0.0, 0.0, 20.0, 40.0]]))
    assert torch.allclose(d, torch.tensor([[5.0, 15.0, 5 * math.log(2), 5 * math.log(4)]]))


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g) * 100
    ref = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    xy2 = torch.rand(50, 2, generator=g) * 100
    gt = torch.cat([xy2, xy2 + 1 + torch.rand(50, 2, generator=g) * 50], dim=1)
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        coder = BoxCoder(weights=weights)
        back = coder.decode(coder.encode(ref, gt), ref)
        assert torch.allclose(back, gt, atol=1e-3), weights


def test_decode_matches_torchvision():
    from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

    g = torch.Generator().manual_seed(1)
    ref = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 50.0, 30.0]])
    deltas = torch.randn(2, 4, generator=g)
    ours = BoxCoder(weights=(2.0, 2.0, 1.0, 1.0)).decode(deltas, ref)
    theirs = TVBoxCoder(weights=(2.0, 2.0, 1.0, 1.0)).decode_single(deltas, ref)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_decode_clamps_huge_dw():
    # dw = dh = 100 would give exp(100) ~ 2.7e43, inf in float32 (max 3.4e38);
    # clamped to log(1000/16): size 16 * 1000/16 = 1000 about the centre (8, 8)
    coder = BoxCoder()
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    assert torch.isfinite(out).all()
    assert torch.allclose(out, torch.tensor([[8 - 500.0, 8 - 500.0, 8 + 500.0, 8 + 500.0]]), atol=1e-3)


def test_empty_inputs():
    coder = BoxCoder()
    empty = torch.zeros(0, 4)
    assert coder.encode(empty, empty).shape == (0, 4)
    assert coder.decode(empty, empty).shape == (0, 4)
    assert xywh_to_xyxy(empty).shape == (0, 4)
    assert xyxy_to_xywh(empty).shape == (0, 4)
    assert clip_boxes(empty, 10, 10).shape == (0, 4)


def test_aligned_box_iou_known_answer_and_box_iou_diagonal():
    # (0,0,2,2) vs (1,1,3,3): intersection 1, union 4 + 4 - 1 = 7 -> 1/7; a box with itself -> 1;
    # disjoint boxes -> 0; two zero-area boxes -> 0 (eps), not NaN.
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [1.0, 1.0, 1.0, 1.0]])
    assert torch.allclose(aligned_box_iou(a, b), torch.tensor([1 / 7, 1.0, 0.0, 0.0]), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    p, q = torch.rand(6, 2, generator=g) * 50, torch.rand(6, 2, generator=g) * 50
    boxes1 = torch.cat([p, p + 1 + torch.rand(6, 2, generator=g) * 30], 1)
    boxes2 = torch.cat([q, q + 1 + torch.rand(6, 2, generator=g) * 30], 1)
    assert torch.allclose(aligned_box_iou(boxes1, boxes2), box_iou(boxes1, boxes2).diagonal(), atol=1e-6)


def test_centres_and_side_distances_known_answers():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    # centre ((10 + 30) / 2, (20 + 60) / 2) = (20, 40)
    assert box_centres(boxes).tolist() == [[20.0, 40.0]]
    # from (15, 25): l = 15 - 10 = 5, t = 25 - 20 = 5, r = 30 - 15 = 15, b = 60 - 25 = 35
    point = torch.tensor([[15.0, 25.0]])
    assert box_to_distance(point, boxes).tolist() == [[5.0, 5.0, 15.0, 35.0]]
    assert distance_to_box(point, torch.tensor([[5.0, 5.0, 15.0, 35.0]])).tolist() == boxes.tolist()
    # a point left of the box: l = 4 - 10 = -6 (negative side = outside)
    assert box_to_distance(torch.tensor([[4.0, 30.0]]), boxes)[0, 0].item() == -6.0


def test_side_distances_broadcast_to_every_point_box_pair():
    points = torch.tensor([[0.0, 0.0], [5.0, 5.0], [20.0, 5.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [4.0, 2.0, 24.0, 8.0]])
    pairs = box_to_distance(points[:, None], boxes[None])
    assert pairs.shape == (3, 2, 4)
    for i in range(3):
        for j in range(2):
            assert torch.equal(pairs[i, j], box_to_distance(points[i:i + 1], boxes[j:j + 1])[0])
    # (5, 5) is inside both boxes: sides (5, 5, 5, 5) and (1, 3, 19, 3)
    assert pairs[1].tolist() == [[5.0, 5.0, 5.0, 5.0], [1.0, 3.0, 19.0, 3.0]]
    assert box_centres(boxes[None]).shape == (1, 2, 2)
