"""ATSS and FCOS assignment (detectors.assigners) on tiny hand-drawn cases (boxes xyxy)."""
import math

import pytest
import torch

from detectors.assigners import BACKGROUND, atss_assign, fcos_assign, fcos_size_ranges

BG = BACKGROUND


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


# Five 20 x 20 anchors along one row, centres x = 0, 10, 20, 30, 40 at y = 10.
ROW = _t([[-10, 0, 10, 20], [0, 0, 20, 20], [10, 0, 30, 20], [20, 0, 40, 20], [30, 0, 50, 20]])
G0 = [0, 0, 30, 20]  # area 600, centre (15, 10)
G1 = [10, 0, 30, 20]  # identical to anchor 2, centre (20, 10)


def test_hand_drawn_threshold_is_mean_plus_std_of_candidates():
    # IoU with G0: x0 [-10,0,10,20] 200/(600+400-200) = 1/4; x10: 400/600 = 2/3; x20: 2/3;
    # x30: 200/800 = 1/4; x40: touches, 0. topk 5 -> all five are candidates.
    # mean = (1/4 + 2/3 + 2/3 + 1/4 + 0) / 5 = 11/30 = 0.3667
    # deviations (-7, 18, 18, -7, -22) / 60 -> unbiased var = (49+324+324+49+484) / 3600 / 4 = 0.08542
    # std = 0.2923 -> threshold 0.6589: only the two 2/3 anchors pass; both centres lie inside G0.
    out = atss_assign(ROW, [5], _t([G0]), topk=5)
    assert out.dtype == torch.int64
    assert out.tolist() == [BG, 0, 0, BG, BG]
    # topk larger than the level: capped at the level's 5 anchors, same answer.
    assert atss_assign(ROW, [5], _t([G0]), topk=9).tolist() == [BG, 0, 0, BG, BG]


def test_anchor_positive_for_two_gts_takes_the_higher_iou():
    # G1's candidates: IoUs (0, 200/600, 1, 200/600, 0) = (0, 1/3, 1, 1/3, 0), mean 1/3;
    # deviations (-1/3, 0, 2/3, 0, -1/3): unbiased var (1/9 + 4/9 + 1/9) / 4 = 1/6, std 0.408
    # -> threshold 0.742: only anchor 2 (IoU 1). Anchor 2 is positive for G0 too (IoU 2/3) and goes to G1 (IoU 1).
    assert atss_assign(ROW, [5], _t([G0, G1]), topk=5).tolist() == [BG, 0, 1, BG, BG]
    # Decided by IoU, not by gt order.
    assert atss_assign(ROW, [5], _t([G1, G0]), topk=5).tolist() == [BG, 1, 0, BG, BG]


def test_candidate_centre_must_lie_inside_the_gt():
    gt = _t([[0, 0, 20, 10]])  # area 200
    anchors = _t([
        [-30, 0, 50, 10],  # area 800, holds the gt: IoU 200/800 = 1/4, centre (10, 5) inside
        [0, 6, 20, 16],  # overlap 20 x 4 = 80, union 200 + 200 - 80 = 320: IoU 1/4, centre (10, 11) below the gt
    ])
    # Equal IoUs: std 0, threshold = mean = 1/4, both pass the IoU test; the centre rule decides.
    assert atss_assign(anchors, [2], gt).tolist() == [0, BG]


def test_topk_is_taken_per_level():
    gt = _t([[0, 0, 20, 20]])
    anchors = _t([
        [0, 0, 20, 20], [1, 0, 21, 20],  # level 0: IoU 1 (distance 0) and 380/420 = 0.905 (distance 1)
        [0, 0, 20, 20],  # level 1: IoU 1
        [100, 100, 120, 120], [100, 100, 120, 120], [100, 100, 120, 120],  # levels 2-4: far, IoU 0
    ])
    # topk 1 per level: candidates are anchors 0, 2, 3, 4, 5 with IoUs (1, 1, 0, 0, 0):
    # mean 0.4, unbiased var (2 * 0.36 + 3 * 0.16) / 4 = 0.3, std 0.548 -> threshold 0.948.
    # Anchor 1 (IoU 0.905) is nearer than anchors 3-5 but is level 0's second: not a candidate.
    assert atss_assign(anchors, [2, 1, 1, 1, 1], gt, topk=1).tolist() == [0, BG, 0, BG, BG, BG]


def test_empty_inputs_and_bad_level_sizes():
    assert atss_assign(ROW, [5], torch.zeros(0, 4)).tolist() == [BG] * 5
    assert atss_assign(torch.zeros(0, 4), [0], _t([G0])).shape == (0,)
    with pytest.raises(ValueError, match="sums to 4"):
        atss_assign(ROW, [2, 2], _t([G0]))


def test_fcos_size_ranges_are_the_papers():
    assert fcos_size_ranges((8, 16, 32, 64, 128)) == [
        (0.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf)]


def test_fcos_point_in_box_and_level_range():
    g0, g1 = [0, 0, 24, 24], [16, 16, 32, 32]
    points = _t([
        [4, 4], [12, 12], [20, 20], [40, 40],  # level 0 (stride 8), max(l,t,r,b) in (0, 16]
        [4, 4], [20, 20],  # level 1 (stride 16), in (16, inf)
    ])
    out = fcos_assign(points, [4, 2], [8, 16], _t([g0, g1]), size_ranges=[(0, 16), (16, math.inf)],
                      center_radius=None)
    # L0 (4,4): g0 sides (4,4,20,20), max 20 > 16: too big for this level -> BG.
    # L0 (12,12): g0 max 12 -> g0.  L0 (20,20): g0 max 20 too big; g1 sides (4,4,12,12) max 12 -> g1.
    # L0 (40,40): in no box -> BG.  L1 (4,4): g0 max 20 -> g0.
    # L1 (20,20): g0 max 20 in range; g1 max 12 is not -> g0.
    assert out.tolist() == [BG, 0, 1, BG, 0, 0]


def test_fcos_ambiguous_point_takes_the_smaller_box_and_centre_sampling():
    big, small = [0, 0, 40, 40], [10, 10, 30, 30]  # areas 1600 and 400
    points = _t([[20, 20], [4, 4], [28, 12], [33, 20]])
    out = fcos_assign(points, [4], [8], _t([big, small]), size_ranges=[(0, math.inf)], center_radius=None)
    # (20,20) in both -> the smaller; (4,4) in big only; (28,12) in both; (33,20) in big only.
    assert out.tolist() == [1, 0, 1, 0]
    # Centre sampling, radius 1.5 strides = 12 px around each centre (20, 20):
    # (4,4) is 16 px off -> BG; (33,20) 13 px off -> BG; the others stay.
    out = fcos_assign(points, [4], [8], _t([big, small]), size_ranges=[(0, math.inf)], center_radius=1.5)
    assert out.tolist() == [1, BG, 1, BG]
    assert fcos_assign(points, [4], [8], torch.zeros(0, 4)).tolist() == [BG] * 4
