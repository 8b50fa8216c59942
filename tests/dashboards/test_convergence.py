"""Whether a trial was still improving, or draws the same box on every image: hand-computed cases."""
import math

import pytest

from dashboards.convergence import (ap_slope, input_dependence, last_epochs, top_boxes, trial_convergence,
                                    variant_marks)


def test_epochs_fitted():
    # max(3, n // 2): 8 evaluated -> the last 4; 5 -> 3; 3 -> 3; fewer than 3 -> none
    assert [last_epochs(n) for n in (0, 2, 3, 5, 8, 11)] == [0, 0, 3, 3, 4, 5]


def test_a_straight_rising_curve_is_still_improving():
    # 0.1, 0.2, 0.3, 0.4 over epochs 1-4: k = 3 (epochs 2-4), slope 0.1 AP/epoch, no residual -> stderr 0,
    # the interval is the point 0.1 and its lower end is above 0
    s = ap_slope([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    assert s["state"] == "improving" and s["k"] == 3 and s["evaluated"] == 4 and s["epochs"] == (2, 4)
    assert s["slope"] == pytest.approx(0.1)
    assert (s["lo"], s["hi"]) == pytest.approx((0.1, 0.1), abs=1e-12)


def test_a_flat_noisy_curve_is_not():
    # 8 epochs, the last 4 (epochs 5-8) fitted: 0.41, 0.39, 0.40, 0.41. x - 6.5 = -1.5, -0.5, 0.5, 1.5
    # (Sxx 5), y - 0.4025 = 0.0075, -0.0125, -0.0025, 0.0075: Sxy = 0.005, slope 0.001. Residuals 0.009,
    # -0.012, -0.003, 0.006: SSR 0.00027, s^2 = SSR / 2 = 0.000135, stderr = sqrt(0.000135 / 5) = 0.0051962;
    # t(0.975, 2) = 4.302653 -> half 0.022357: [-0.021357, 0.023357] holds 0
    s = ap_slope(range(1, 9), [0.1, 0.2, 0.3, 0.4, 0.41, 0.39, 0.40, 0.41])
    assert s["state"] == "not improving" and s["k"] == 4
    assert s["slope"] == pytest.approx(0.001)
    assert (s["lo"], s["hi"]) == pytest.approx((-0.021357, 0.023357), abs=1e-6)


def test_a_curve_that_only_rose_early_is_not_improving():
    # epochs 1-6: 0.1, 0.3, 0.5, 0.5, 0.5, 0.5: the last 3 are flat -> slope 0, stderr 0, lo = 0 is not > 0
    s = ap_slope(range(1, 7), [0.1, 0.3, 0.5, 0.5, 0.5, 0.5])
    assert s["state"] == "not improving" and s["slope"] == pytest.approx(0.0, abs=1e-12)
    assert (s["lo"], s["hi"]) == (0.0, 0.0)   # an exact fit, not an unknown one
    # AP 0 at every epoch (a detector that learnt nothing): the same, flat and exact
    assert ap_slope([1, 2, 3], [0.0, 0.0, 0.0])["hi"] == 0.0


def test_too_few_evaluated_epochs_are_unknown():
    # eval_every_epoch false: one val AP, at the last epoch; a NaN AP does not count
    assert ap_slope([8], [0.4])["state"] == "unknown"
    s = ap_slope([1, 2, 3], [0.1, math.nan, 0.3])
    assert s["state"] == "unknown" and s["evaluated"] == 2 and math.isnan(s["slope"])


def _det(image_id, box, score=0.9):
    return {"image_id": image_id, "category_id": 1, "bbox": box, "score": score}


def test_top_box_per_image():
    dets = [_det(1, [0, 0, 5, 5], 0.3), _det(1, [10, 10, 5, 5], 0.8), _det(2, [1, 1, 4, 4], 0.5)]
    assert top_boxes(dets) == {1: [10.0, 10.0, 5.0, 5.0], 2: [1.0, 1.0, 4.0, 4.0]}


def test_identical_top_boxes_are_input_independent():
    # three images, the top box [20, 20, 40, 40] within 1 px (ranges 0.5, 1.0, 0, 0.8); lower-scored boxes differ
    dets = [_det(1, [20.0, 20.0, 40.0, 40.0]), _det(2, [20.5, 21.0, 40.0, 40.8]), _det(3, [20.2, 20.4, 40.0, 40.3]),
            _det(2, [90, 90, 5, 5], 0.2)]
    r = input_dependence(dets)
    assert r["state"] == "input-independent" and r["images"] == 3 and r["spread"] == pytest.approx(1.0)


def test_one_moved_box_depends_on_the_input():
    # image 3's top box is 1.5 px to the right: x ranges over 1.5 > 1 px
    dets = [_det(1, [20.0, 20.0, 40.0, 40.0]), _det(2, [20.0, 20.0, 40.0, 40.0]), _det(3, [21.5, 20.0, 40.0, 40.0])]
    r = input_dependence(dets)
    assert r["state"] == "depends" and r["spread"] == pytest.approx(1.5)


def test_no_detections_is_empty_not_input_independent():
    assert input_dependence([])["state"] == "no detections"
    assert input_dependence(None)["state"] == "unknown"            # none stored: nothing to say
    assert input_dependence([_det(4, [1, 2, 3, 4])])["state"] == "unknown"   # one image: nothing to compare


def test_trial_marks():
    same = [_det(i, [20, 20, 40, 40]) for i in (1, 2)]
    moved = same + [_det(3, [30, 20, 40, 40])]
    assert trial_convergence([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4], moved)["marks"] == ["still improving"]
    assert trial_convergence([1, 2, 3], [0.0, 0.0, 0.0], same)["marks"] == ["input-independent"]
    assert trial_convergence([1, 2, 3], [0.0, 0.0, 0.0], [])["marks"] == ["no detections"]
    assert trial_convergence([3], [0.3], None)["marks"] == []


def _seed(seed, slope_state, marks, slope=0.012, lo=0.004, hi=0.020):
    return {"seed": seed, "marks": marks, "input": {"state": "depends", "images": 30},
            "slope": {"state": slope_state, "slope": slope, "lo": lo, "hi": hi}}


def test_a_variant_is_marked_by_the_majority_of_its_seeds():
    two_of_three = [_seed(0, "improving", ["still improving"]), _seed(1, "not improving", []),
                    _seed(2, "improving", ["still improving"], 0.015, 0.009, 0.021)]
    m = variant_marks(two_of_three)
    assert m["marks"] == ["still improving"] and not m["unknown_slope"]
    assert m["text"] == ("still improving in 2 of 3 seeds: seed 0 +0.012 AP/epoch [0.004, 0.020], "
                         "seed 2 +0.015 AP/epoch [0.009, 0.021]")
    # 1 of 3 is no majority; 1 of 2 neither (half is not more than half)
    assert variant_marks(two_of_three[:2] + [_seed(2, "not improving", [])])["marks"] == []
    assert variant_marks(two_of_three[:2])["marks"] == []
    unknown = variant_marks([_seed(s, "unknown", []) for s in (0, 1, 2)])
    assert unknown["marks"] == [] and unknown["unknown_slope"] and unknown["text"] == ""
