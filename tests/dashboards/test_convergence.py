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


def _rising_study(aps):
    """A StudyData of one seed per variant, val AP rising in a straight line to each final AP over 3 epochs."""
    import pandas as pd

    from dashboards.data import StudyData

    trials = [{"trial_key": f"{v}/seed=0", "variant": v, "seed": 0, "status": "finished", "config": {}} for v in aps]
    final = pd.DataFrame([{"trial_key": t["trial_key"], "variant": t["variant"], "seed": 0, "AP": aps[t["variant"]]}
                          for t in trials])
    epochs = pd.DataFrame([{"trial_key": t["trial_key"], "variant": t["variant"], "seed": 0, "step": e,
                            "name": "val/AP", "value": aps[t["variant"]] * e / 3, "epoch": e}
                           for t in trials for e in (1, 2, 3)])
    return StudyData("s", {}, trials, final, epochs, list(aps), ["x"], {v: {} for v in aps})


def test_no_winner_when_every_variant_is_set_aside():
    from dashboards.analysis import Analysis, verdict

    an = Analysis(_rising_study({"a": 0.3, "b": 0.6}))
    # b: 0.2, 0.4, 0.6 -> slope 0.2 AP/epoch, exact; a: slope 0.1
    assert an.set_aside() == {"a": "still improving in 1 of 1 seed: seed 0 +0.100 AP/epoch [0.100, 0.100]",
                              "b": "still improving in 1 of 1 seed: seed 0 +0.200 AP/epoch [0.200, 0.200]"}
    h = an.headline()
    assert h["winner"] is None and h["runner_up"] is None and list(h["set_aside"]) == ["b", "a"]  # by mean AP
    assert verdict(h).startswith("Every variant is set aside")


def test_set_aside_variants_are_off_the_winner_line_and_the_budget_table(tmp_path):
    """The fake zoo (fakes.ZOO): gfl has the best AP but its val AP rose in a straight line to the last epoch;
    yolov1 is the fastest but draws one box at (10, 10, 30, 30) on every image. Neither may win nor hold a latency
    budget, and the pages say why; and since gfl, still improving, leads every settled variant, nothing wins:
    retinanet, the best settled, would only be the winner of this epoch budget."""
    import re

    import fakes
    from dashboards import build_study
    from platform.track.store import Store

    store = Store(f"sqlite:///{tmp_path}/r.db")
    fakes.populate_zoo(store, str(tmp_path))
    ctx = build_study(store, fakes.ZOO_STUDY, str(tmp_path / "reports"), resamples=10)
    store.close()
    an = ctx.an
    assert an.ranking() == ["detector=gfl", "detector=retinanet", "detector=ssd", "detector=yolov1"]
    h = an.headline()
    assert (h["winner"], h["runner_up"], h["best_settled"]) == (None, None, "detector=retinanet")
    assert list(h["set_aside"]) == ["detector=gfl", "detector=yolov1"] and h["ahead_improving"] == ["detector=gfl"]

    text = (tmp_path / "reports" / fakes.ZOO_STUDY / "index.html").read_text()
    assert ("<b>No winner</b>: detector=gfl ranks above every settled variant but is still improving" in text
            and "The best settled variant is detector=retinanet, AP" in text and "Winner:" not in text)
    # gfl's val AP per epoch is AP/3, 2 AP/3, AP: slope AP/3 with no residual, the interval the point itself
    slope = an.per_seed("detector=gfl", "AP")[0] / 3
    assert (f"Set aside, not candidates for the winner: <b>detector=gfl</b> (still improving in 3 of 3 seeds: "
            f"seed 0 {slope:+.3f} AP/epoch [{slope:.3f}, {slope:.3f}]") in text
    assert "<b>detector=yolov1</b> (input-independent in 3 of 3 seeds: within 1 px the same top box" in text
    assert "has a 95% t interval above 0" in text and "that AP is not the result of detecting anything" in text

    # Latency means over seeds 0.1 ms apart: yolov1 3.1, ssd 5.1, retinanet 8.1, gfl 10.1. Unmarked, the frontier
    # would be all four; with gfl and yolov1 set aside, ssd holds budgets from 5.1 ms and retinanet from 8.1 ms.
    budget = text.split("Which detector wins at which latency budget")[1].split("<h2>")[0]
    rows = re.findall(r'<tr><td class="l">([^<]+)</td><td>([^<]+)</td>', budget)
    assert rows == [("from 5.1 ms up to 8.1 ms", "detector=ssd"),
                    ("from 8.1 ms up to any larger budget", "detector=retinanet")]
    assert "Set aside, not candidates for any budget: <b>detector=gfl</b> (still improving" in budget

    speed = (tmp_path / "reports" / fakes.ZOO_STUDY / "speed.html").read_text()
    pareto = dict(re.findall(r'<tr><td class="l">(detector=[a-z0-9]+)</td>.*?<td>([^<]*)</td></tr>', speed))
    assert pareto == {"detector=gfl": "set aside", "detector=retinanet": "✓", "detector=ssd": "✓",
                      "detector=yolov1": "set aside"}
    accuracy = (tmp_path / "reports" / fakes.ZOO_STUDY / "accuracy.html").read_text()
    assert "<h2>Convergence</h2>" in accuracy and accuracy.count(">input-independent</td>") == 3
    everything = (tmp_path / "reports" / "index.html").read_text()
    assert ("no winner: detector=gfl ahead but still improving; set aside: detector=gfl, detector=yolov1"
            in everything)


def test_a_stored_input_dependence_is_decided_again_from_its_images_and_spread():
    # stored by the driver as the trial finished; the tolerance (1 px) is applied when the page reads it
    flat = [1, 2, 3], [0.0, 0.0, 0.0]
    assert trial_convergence(*flat, None, {"images": 5, "spread": 0.5})["marks"] == ["input-independent"]
    assert trial_convergence(*flat, None, {"images": 5, "spread": 3.0})["marks"] == []
    assert trial_convergence(*flat, None, {"images": 0, "spread": float("nan")})["marks"] == ["no detections"]
    # the same as computing it from the detections: two images whose top boxes differ by 0.5 px
    dets = [_det(1, [1, 2, 3, 4]), _det(2, [1.5, 2, 3, 4])]
    stored = input_dependence(dets)
    assert trial_convergence(*flat, None, stored) == trial_convergence(*flat, dets)
