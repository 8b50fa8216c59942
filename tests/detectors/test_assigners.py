"""detectors.assigners.max_iou_assign on tiny hand-drawn cases (boxes xyxy)."""
import pytest
import torch

from detectors.assigners import BACKGROUND, IGNORE, assignment_figures, max_iou_assign

BG, IG = BACKGROUND, IGNORE


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_one_gt_four_anchors():
    gt = _t([[0, 0, 10, 10]])  # area 100
    anchors = _t(
        [
            [0, 0, 10, 10],  # identical: IoU 100 / 100 = 1.0 -> matched to gt 0
            [0, 0, 10, 4.5],  # inside, area 45: IoU 45 / (100 + 45 - 45) = 0.45 -> 0.4 <= IoU < 0.5: ignore
            [20, 20, 30, 30],  # disjoint: IoU 0 -> background
            [50, 0, 60, 10],  # disjoint: IoU 0 -> background
        ]
    )
    for low_quality in (True, False):
        out = max_iou_assign(anchors, gt, pos_iou=0.5, neg_iou=0.4, allow_low_quality=low_quality)
        assert out.dtype == torch.int64
        assert out.tolist() == [0, IG, BG, BG]


def test_thresholds_inclusive_exclusive():
    gt = _t([[0, 0, 10, 10]])
    anchors = _t(
        [
            [0, 0, 10, 5],  # IoU 50 / 100 = 0.5 == pos_iou -> positive (>=)
            [0, 0, 10, 4],  # IoU 40 / 100 = 0.4 == neg_iou -> not background (< is strict): ignore
            [0, 0, 10, 3.9],  # IoU 39 / 100 = 0.39 -> background
        ]
    )
    out = max_iou_assign(anchors, gt, allow_low_quality=False)
    assert out.tolist() == [0, IG, BG]


def test_low_quality_match_only_when_allowed():
    gt = _t([[0, 0, 10, 10]])
    anchors = _t(
        [
            [5, 0, 15, 10],  # overlap 5 x 10 = 50, union 100 + 100 - 50 = 150: IoU 1/3 < 0.4
            [-5, 0, 5, 10],  # mirror image: also 1/3, a tie for the gt's best anchor
            [30, 30, 40, 40],  # disjoint: 0
        ]
    )
    # without low-quality matches the gt gets no anchor at all
    assert max_iou_assign(anchors, gt, allow_low_quality=False).tolist() == [BG, BG, BG]
    # with them both tied best anchors go to the gt, the disjoint one stays background
    assert max_iou_assign(anchors, gt, allow_low_quality=True).tolist() == [0, 0, BG]


def test_low_quality_promotes_an_ignored_anchor():
    gt = _t([[0, 0, 10, 10]])
    anchors = _t([[0, 0, 10, 4.5], [40, 40, 50, 50]])  # IoU 0.45 (would be ignored), 0
    assert max_iou_assign(anchors, gt, allow_low_quality=False).tolist() == [IG, BG]
    assert max_iou_assign(anchors, gt, allow_low_quality=True).tolist() == [0, BG]


def test_gt_overlapping_no_anchor_gets_none():
    # best IoU 0: every anchor "ties" for best; matching them all would turn
    # the whole image into positives of that gt
    gt = _t([[100, 100, 110, 110]])
    anchors = _t([[0, 0, 10, 10], [20, 20, 30, 30]])
    assert max_iou_assign(anchors, gt, allow_low_quality=True).tolist() == [BG, BG]


def test_two_gts_compete_for_one_anchor_higher_iou_wins():
    anchor = _t([[0, 0, 10, 10]])  # area 100
    low = [0, 0, 10, 6]  # inside the anchor, area 60: IoU 60 / 100 = 0.6
    high = [0, 0, 10, 8]  # area 80: IoU 0.8
    for low_quality in (True, False):
        # the winner is the higher IoU, whichever index it has
        assert max_iou_assign(anchor, _t([low, high]), allow_low_quality=low_quality).tolist() == [1]
        assert max_iou_assign(anchor, _t([high, low]), allow_low_quality=low_quality).tolist() == [0]


def test_low_quality_anchor_goes_to_the_gt_it_is_best_for():
    # gt A = (0,0,10,10), gt B = (0,0,10,12); anchors X = (0,0,10,11), Y = (0,0,10,12)
    # IoU(A, X) = 100/110 = 0.909, IoU(A, Y) = 100/120 = 0.833   -> A's best anchor is X
    # IoU(B, X) = 110/120 = 0.917, IoU(B, Y) = 120/120 = 1.0     -> B's best anchor is Y
    # By argmax both anchors go to B (0.917 > 0.909) and A has none (what torchvision's
    # Matcher returns); the low-quality rule gives X to A since X is A's best anchor.
    gts = _t([[0, 0, 10, 10], [0, 0, 10, 12]])
    anchors = _t([[0, 0, 10, 11], [0, 0, 10, 12]])
    assert max_iou_assign(anchors, gts, allow_low_quality=False).tolist() == [1, 1]
    assert max_iou_assign(anchors, gts, allow_low_quality=True).tolist() == [0, 1]
    # "own_best" (torchvision's Matcher, py-faster-rcnn) leaves X with the gt it overlaps most.
    assert max_iou_assign(anchors, gts, low_quality_target="own_best").tolist() == [1, 1]


def test_low_quality_match_below_the_threshold_keeps_its_own_best_gt():
    # RPN thresholds 0.7 / 0.3. gt A = (0,0,10,10), gt B = (6,0,16,10), both area 100.
    # X = (4,0,14,10): IoU(X, A) = 6*10 / (200 - 60) = 60/140 = 0.429, IoU(X, B) = 8*10 / 120 = 0.667
    # Y = (6,0,16,10) = B: IoU(Y, B) = 1.0, IoU(Y, A) = 4*10 / 160 = 0.25
    # Z = (20,20,30,30): disjoint from both, 0.
    # A's best anchor is X (0.429 > 0.25), B's is Y. X's own best IoU 0.667 is below 0.7: without
    # low-quality matches it is ignored (between 0.3 and 0.7). As A's best anchor it is positive;
    # "best_for" makes it regress to A (IoU 0.429), "own_best" to B (0.667), leaving A no anchor.
    gts = _t([[0, 0, 10, 10], [6, 0, 16, 10]])
    anchors = _t([[4, 0, 14, 10], [6, 0, 16, 10], [20, 20, 30, 30]])
    rpn = dict(pos_iou=0.7, neg_iou=0.3)
    assert max_iou_assign(anchors, gts, **rpn, allow_low_quality=False).tolist() == [IG, 1, BG]
    assert max_iou_assign(anchors, gts, **rpn, low_quality_target="best_for").tolist() == [0, 1, BG]
    assert max_iou_assign(anchors, gts, **rpn, low_quality_target="own_best").tolist() == [1, 1, BG]
    with pytest.raises(ValueError, match="unknown low_quality_target 'mine'"):
        max_iou_assign(anchors, gts, low_quality_target="mine")


def test_rpn_thresholds():
    # Faster R-CNN RPN: >= 0.7 positive, < 0.3 negative
    gt = _t([[0, 0, 10, 10]])
    anchors = _t([[0, 0, 10, 8], [0, 0, 10, 5], [0, 0, 10, 2]])  # IoU 0.8, 0.5, 0.2
    out = max_iou_assign(anchors, gt, pos_iou=0.7, neg_iou=0.3, allow_low_quality=False)
    assert out.tolist() == [0, IG, BG]


def test_empty_gt_all_background():
    anchors = _t([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2]])
    out = max_iou_assign(anchors, torch.zeros(0, 4))
    assert out.dtype == torch.int64
    assert out.tolist() == [BG, BG, BG]


def test_empty_anchors():
    out = max_iou_assign(torch.zeros(0, 4), _t([[0, 0, 10, 10]]))
    assert out.shape == (0,) and out.dtype == torch.int64


def test_no_grad_and_bad_thresholds():
    anchors = _t([[0, 0, 10, 10]]).requires_grad_(True)
    gt = _t([[0, 0, 10, 10]]).requires_grad_(True)
    assert not max_iou_assign(anchors, gt).requires_grad
    with pytest.raises(ValueError):
        max_iou_assign(anchors, gt, pos_iou=0.4, neg_iou=0.5)


def test_assignment_figures_count_foreground_among_the_anchors_that_count():
    # A 4 x 4 grid of 8 px anchors tiling a 32 px image (stride 8), two images.
    grid = _t([[x, y, x + 8, y + 8] for y in range(0, 32, 8) for x in range(0, 32, 8)])  # 16 anchors
    # Image 1: the gt is exactly the anchor at row 1, column 1 (IoU 1): 1 positive; every other anchor
    # at most touches it (intersection 0): 15 background.
    one = max_iou_assign(grid, _t([[8, 8, 16, 16]]))
    # Image 2: gt [8, 8, 16, 26], area 8 * 18 = 144; anchors [8, 8, 16, 16] and [8, 16, 16, 24] overlap it by
    # 64: IoU 64 / 144 = 0.444 -> ignored (no low-quality matches here); [8, 24, 16, 32] by 8 * 2 = 16:
    # IoU 16 / (64 + 144 - 16) = 0.083 -> background; the 13 others 0. So 0 positives, 2 ignored, 14 background.
    two = max_iou_assign(grid, _t([[8, 8, 16, 26]]), allow_low_quality=False)
    assert ((one >= 0).sum(), (two == IG).sum()) == (1, 2)
    figures = assignment_figures(torch.stack([one, two]), num_images=2)
    # positives 1, negatives 15 + 14 = 29 (the 2 ignored count for neither): 1 / 30; 32 anchors / 2 images = 16
    assert figures["fg_fraction"] == pytest.approx(1 / 30)
    assert figures["anchors_per_image"] == 16.0
    # Nothing that counts (every anchor ignored, or no anchors): 0, not a division by zero.
    assert assignment_figures(torch.full((1, 4), IG), 1) == {"fg_fraction": 0.0, "anchors_per_image": 4.0}
    assert assignment_figures(torch.zeros(0, 0, dtype=torch.int64), 0)["fg_fraction"] == 0.0
