"""Per-image AP from the bootstrap's records and the probability of improvement with val images as tasks."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from dashboards import stats
from dashboards.analysis import Analysis
from dashboards.data import StudyData
from detectors.evaluation.cocotools import coco_ground_truth

BOX = [10.0, 10.0, 20.0, 20.0]


def _ground_truth():
    """Image 1: a square; image 2: a square; image 3: nothing; image 4: a square and a circle."""
    anns = [(1, 1), (2, 1), (4, 1), (4, 2)]  # (image, category)
    return {"images": [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.png"} for i in (1, 2, 3, 4)],
            "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": BOX, "area": 400.0,
                             "iscrowd": 0} for k, (i, c) in enumerate(anns)],
            "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}]}


def _detections(images=(1, 4)):
    """The squares of ``images`` found exactly (IoU 1), plus a false square on image 3 (no ground truth)."""
    dets = [{"image_id": i, "category_id": 1, "bbox": BOX, "score": s} for i, s in zip(images, (0.9, 0.8))]
    return dets + [{"image_id": 3, "category_id": 1, "bbox": [40.0, 40.0, 10.0, 10.0], "score": 0.3}]


def test_per_image_ap_known_answer():
    gt = coco_ground_truth(_ground_truth())
    records = stats.seed_records(gt, {"x": [_detections()]})["x"][0]
    # image 1: its one square found exactly: precision 1 at all 101 recall thresholds and 10 IoUs -> 1.0 (COCOeval
    # divides by tp + fp + eps, so 1 - 2e-16).
    # image 2: its square missed (no detection): precision 0 everywhere -> 0.0.
    # image 3: no ground truth of any category, so no AP (the false square there has nothing to miss) -> NaN.
    # image 4: square found (1.0), circle missed (0.0): mean over the 2 categories with ground truth -> 0.5.
    ap = records.per_image_ap()
    assert ap[[0, 1, 3]] == pytest.approx([1.0, 0.0, 0.5], abs=1e-12) and math.isnan(ap[2])
    # The four together, for contrast (what the bootstrap resamples): squares, 3 ground truths, detections by
    # score img 1 TP, img 4 TP, img 3 FP -> recall 1/3, 2/3, 2/3 at precision 1, 1, 2/3: precision 1 up to the
    # recall thresholds 0.00..0.66 (67 of 101), 0 above -> 67 / 101; circles 0 -> AP (67 / 101 + 0) / 2.
    assert records.ap(np.arange(4)) == pytest.approx(67 / 101 / 2)
    assert stats.resampled_ap(gt, _detections(), [1, 2, 3, 4]) == pytest.approx(67 / 101 / 2)


class _Store:
    """What ``StudyData`` asks of a store for the bootstrap: trial data and the stored ground truth."""

    def __init__(self, data, gt):
        self.data, self.gt = data, gt

    def trial_data(self, study, key):
        return self.data.get(key, {})

    def ground_truth(self, digest):
        return self.gt if digest == "gt0" else None


def _fake_study(dets_by_variant, with_records=True):
    """One finished trial per (variant, seed); ``dets_by_variant``: variant -> one detection list per seed.
    The final AP is the COCOeval AP of the trial's detections; ``with_records`` False stores no detections."""
    gt_dict = _ground_truth()
    gt = coco_ground_truth(gt_dict)
    trials, final, dets = [], [], {}
    for v, per_seed in dets_by_variant.items():
        for seed, d in enumerate(per_seed):
            key = f"{v}/seed={seed}"
            trials.append({"trial_key": key, "variant": v, "seed": seed, "status": "finished",
                           "config_hash": key, "finished_at": "2026-01-05", "config": {}})
            final.append({"trial_key": key, "variant": v, "seed": seed,
                          "AP": stats.resampled_ap(gt, d, [1, 2, 3, 4])})
            dets[key] = d
    data = {"detections": dets, "val_ground_truth": {k: "gt0" for k in dets}} if with_records else {}
    return StudyData("s", {}, trials, pd.DataFrame(final), pd.DataFrame(), list(dets_by_variant), ["v"],
                     {v: {} for v in dets_by_variant}, _store=_Store(data, gt_dict))


def test_improvement_over_images():
    found, missed = _detections((1, 2)), _detections(())  # squares of images 1, 2 / none found
    an = Analysis(_fake_study({"x": [found, found], "y": [missed, missed, missed], "z": [found, found]}),
                  resamples=5)
    per = an.per_image_ap()
    assert per["x"].shape == (2, 4) and per["y"].shape == (3, 4)
    # x finds the squares of images 1 and 2 (1.0 each), none on image 4 (square and circle missed: 0.0), image 3
    # has no ground truth (NaN); y finds nothing: 0, 0, NaN, 0.
    assert per["x"][0] == pytest.approx([1.0, 1.0, math.nan, 0.0], abs=1e-12, nan_ok=True)
    assert per["y"][2] == pytest.approx([0.0, 0.0, math.nan, 0.0], nan_ok=True)
    # Tasks: images 1, 2 and 4 (image 3 has no ground truth). On images 1 and 2 all 2 x 3 seed pairs have
    # x above y (1 each); on image 4 all tie at 0 (0.5): (1 + 1 + 0.5) / 3. Every resample of the seeds within an
    # image gives the same shares (each image's seeds score alike), so the interval is the point.
    pi = an.improvement("x", "y")
    assert (pi["over"], pi["tasks"], pi["no_gt"]) == ("images", 3, 1)
    assert (pi["p"], pi["lo"], pi["hi"]) == pytest.approx((2.5 / 3, 2.5 / 3, 2.5 / 3))
    # the same detections on every seed: every pair ties on every image -> 0.5, interval [0.5, 0.5]
    tie = an.improvement("x", "z")
    assert (tie["p"], tie["lo"], tie["hi"], tie["tasks"]) == (0.5, 0.5, 0.5, 3)


def test_improvement_is_one_when_every_seed_wins_on_every_image():
    # x finds every square (images 1, 2, 4), y none: x above y on images 1 and 2 (1.0 vs 0.0) and 4 (0.5 vs 0.0),
    # in all 3 x 2 seed pairs -> 1 on each of the 3 images; every resample keeps it -> [1, 1].
    every = [{"image_id": i, "category_id": 1, "bbox": BOX, "score": 0.9} for i in (1, 2, 4)]
    an = Analysis(_fake_study({"x": [every] * 3, "y": [_detections(())] * 2}), resamples=5)
    pi = an.improvement("x", "y")
    assert (pi["p"], pi["lo"], pi["hi"], pi["tasks"], pi["over"]) == (1.0, 1.0, 1.0, 3, "images")


def test_improvement_without_records_is_one_task_over_the_seeds():
    found, missed = _detections((1, 2)), _detections(())
    an = Analysis(_fake_study({"x": [found, found], "y": [missed, missed]}, with_records=False))
    pi = an.improvement("x", "y")
    # no stored detections: the seeds' final AP (x (67 / 101) / 2 > y 0 on all 4 pairs) on one task, the val set
    assert (pi["over"], pi["tasks"], pi["p"], pi["lo"], pi["hi"]) == ("the val set", 1, 1.0, 1.0, 1.0)
    assert an.per_image_ap() is None and an.boot_note == "no stored detections for 4 of 4 trials"


def test_u_share_is_scipy_mann_whitney_u_over_pairs():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, size=(50, 3)).astype(float), rng.integers(0, 4, size=(50, 4)).astype(float)  # ties
    u = st.mannwhitneyu(x, y, axis=-1, alternative="greater", method="asymptotic").statistic
    assert np.array_equal(stats._u_share(x, y), u / 12)


def test_many_tasks_and_tasks_of_other_run_counts_stay_apart():
    rng = np.random.default_rng(1)
    x, y = rng.uniform(size=(150, 3)), rng.uniform(size=(150, 3))  # 150 images x 3 seeds each
    pi = stats.probability_of_improvement(x, y)
    assert pi["p"] == pytest.approx(np.mean(stats._u_share(x, y))) and pi["lo"] < pi["p"] < pi["hi"]
    # a task with one run of y (1 beats 0 -> 1) beside 150 of three runs: the mean of 151 tasks
    mixed = stats.probability_of_improvement(list(x) + [[1.0]], list(y) + [[0.0]])
    assert mixed["tasks"] == 151 and mixed["p"] == pytest.approx((150 * pi["p"] + 1) / 151)


def test_page_note_says_which_tasks():
    from dashboards.comparisons import improvement_text

    images = {"p": 0.9, "lo": 0.8, "hi": 1.0, "tasks": 3, "over": "images", "no_gt": 1}
    text = improvement_text([images], "")
    assert "averaged over the 3 val images with ground truth (1 without ground truth left out);" in text
    assert "within each image" in text and "one task" not in text
    val_set = {"p": 1.0, "lo": 1.0, "hi": 1.0, "tasks": 1, "over": "the val set", "no_gt": 0}
    text = improvement_text([val_set], "no stored detections for 4 of 4 trials")
    assert "one task, this val set (no per-image AP: no stored detections for 4 of 4 trials)" in text
    assert "val images as its tasks" not in text
