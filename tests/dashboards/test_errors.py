"""TIDE error breakdown and the confusion matrix on a hand-made image: one detection per error type."""
import pytest

from dashboards.errors import ERROR_TYPES, average_precision, confusion_counts, tide_errors

# One 100 x 100 image, classes 1 and 2; boxes xywh.
GT = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1}, {"id": 2}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20]},    # g0: found, then found again
          {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 0, 20, 20]},   # g1: found 10 px off (loc)
          {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 40, 20, 20]},   # g2: found as class 1 (cls)
          {"id": 4, "image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10]},   # g4: never found (miss)
          {"id": 5, "image_id": 1, "category_id": 1, "bbox": [0, 80, 20, 20]},   # g5: found, low score
          {"id": 6, "image_id": 1, "category_id": 2, "bbox": [40, 80, 20, 20]},  # g6: found, lowest score
          {"id": 7, "image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "iscrowd": 1},  # ignored
      ]}


def _det(cat, bbox, score):
    return {"image_id": 1, "category_id": cat, "bbox": bbox, "score": score}


DETS = [
    _det(1, [0, 0, 20, 20], 0.9),    # true positive on g0
    _det(1, [1, 0, 20, 20], 0.8),    # dupe: IoU 380/420 = 0.90 with g0, already taken
    _det(1, [50, 0, 20, 20], 0.7),   # loc: IoU 200/600 = 0.33 with g1, its class
    _det(1, [0, 40, 20, 20], 0.6),   # cls: IoU 1 with g2, class 2
    _det(1, [10, 40, 20, 20], 0.5),  # both: IoU 0.33 with g2, another class
    _det(2, [80, 80, 10, 10], 0.4),  # bkg: IoU 0 with everything
    _det(1, [0, 80, 20, 20], 0.1),   # true positive on g5
    _det(2, [40, 80, 20, 20], 0.05),  # true positive on g6
]


def test_average_precision_101_points():
    # 2 gts; TP, FP, TP: precision 1, .5, .667 -> interpolated 1, .667, .667; recall .5, .5, 1.
    # 51 recall points in [0, .5] at 1, 50 in (.5, 1] at 2/3: (51 + 33.33) / 101 = 0.834983
    assert average_precision([(0.9, True), (0.8, False), (0.7, True)], 2) == pytest.approx((51 + 100 / 3) / 101)
    assert average_precision([], 3) == 0.0 and average_precision([(0.5, True)], 0) == 0.0


def test_one_detection_per_error_type():
    out = tide_errors(GT, DETS)
    assert out["counts"] == {k: 1 for k in ERROR_TYPES}
    # As it is. Class 1 (4 gts): T F F F F T -> precision 1 .5 .33 .25 .2 .33, interpolated
    # 1 .5 .33 .33 .33 .33 at recall .25 .25 .25 .25 .25 .5: 26 points at 1 + 25 at 1/3 = 34.33 / 101.
    # Class 2 (2 gts): F T -> interpolated .5 .5 at recall 0 .5: 51 points at .5 = 25.5 / 101.
    base = (34 + 1 / 3 + 25.5) / 202
    assert out["AP50"] == pytest.approx(base)
    dap = out["dAP"]
    # cls: the 0.6 detection becomes class 2's top TP. Class 1: T F F F T -> 26 + 25 * .4 = 36;
    # class 2: T F T at recall .5 .5 1 -> 51 * 1 + 50 * 2/3 = 84.33. (36 + 84.33) / 202 - base
    assert dap["cls"] == pytest.approx((36 + 84 + 1 / 3) / 202 - base)
    # loc: the 0.7 detection becomes class 1's second TP: T F T F F T, interpolated 1 .67 .67 .5 .5 .5
    # at recall .25 .25 .5 .5 .5 .75 -> 26 + 25 * 2/3 + 25 * .5 = 55.17
    assert dap["loc"] == pytest.approx((55 + 1 / 6 + 25.5) / 202 - base)
    # both, dupe: one FP above class 1's second TP removed -> 36 for class 1
    assert dap["both"] == pytest.approx((36 + 25.5) / 202 - base)
    assert dap["dupe"] == pytest.approx((36 + 25.5) / 202 - base)
    # bkg: class 2's FP removed -> 51 points at 1 = 51
    assert dap["bkg"] == pytest.approx((34 + 1 / 3 + 51) / 202 - base)
    # miss: g4 leaves class 1's ground truth (3 gts): recall 1/3 then 2/3 -> 34 + 33 / 3 = 45.
    # g1 and g2 are not missed: a loc and a cls error could take them.
    assert dap["miss"] == pytest.approx((45 + 25.5) / 202 - base)
    # the numbers tidecv 1.0.1 gives on this case (checked by hand outside the suite)
    assert [round(100 * dap[k], 2) for k in ERROR_TYPES] == [29.95, 10.31, 0.83, 0.83, 12.62, 5.28]


def test_no_detections_everything_missed_and_detections_without_ground_truth_are_background():
    out = tide_errors(GT, [])
    assert out["AP50"] == 0.0 and out["counts"]["miss"] == 6
    empty_image = {**GT, "images": GT["images"] + [{"id": 2}]}
    out = tide_errors(empty_image, DETS + [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.99}])
    assert out["counts"]["bkg"] == 2


def test_confusion_matrix():
    # the 6 best detections (6 objects, the crowd box aside), matched by score at IoU >= 0.5 to any class:
    # .9 -> g0 (1 as 1); .8 dupe, .7 loc, .5 both -> background as 1; .6 -> g2 (2 as 1); .4 -> background as 2;
    # never matched: g1, g4, g5 (class 1), g6 (class 2).
    counts = confusion_counts(GT, DETS, [1, 2])
    assert counts.tolist() == [[1, 0, 3],
                               [1, 0, 1],
                               [3, 1, 0]]


def test_the_accuracy_page_shows_the_breakdown(fake_reports):
    import fakes

    text = (fake_reports["reports"] / fakes.STUDY / "accuracy.html").read_text()
    assert "Why AP is lost: error breakdown (TIDE)" in text and "costs most" in text
    assert "Confusion between classes" in text
    for v in fakes.VARIANTS:
        assert v in text


class _Study:
    """What study_errors reads of a StudyData; counts the trial-data keys it asks for."""

    def __init__(self, data):
        self._data, self.asked = data, []
        self.finished = [{"trial_key": k, "variant": "v", "seed": i} for i, k in enumerate(("a", "b"))]

    def data(self, key):
        self.asked.append(key)
        return self._data.get(key, {})

    def ground_truth(self, digest):
        return GT


def test_stored_errors_are_used_and_the_detections_read_only_for_trials_without_them():
    from dashboards.errors import ERRORS_KEY, ERRORS_VERSION, study_errors, trial_errors

    computed = trial_errors(GT, DETS)
    assert computed["version"] == ERRORS_VERSION
    assert computed["confusion"] == confusion_counts(GT, DETS, [1, 2]).tolist()
    mark = {**computed, "AP50": 0.123}  # a stored result: the page shows it as it is
    digests = {"a": "g", "b": "g"}
    sd = _Study({ERRORS_KEY: {"a": mark, "b": mark}, "val_ground_truth": digests})
    res = study_errors(sd)
    assert res["tide"]["AP50"].tolist() == [0.123, 0.123] and "detections" not in sd.asked
    assert res["confusion"]["v"].tolist() == (2 * confusion_counts(GT, DETS, [1, 2])).tolist()
    # b's result is of an older version: computed again from its detections
    sd = _Study({ERRORS_KEY: {"a": mark, "b": {**mark, "version": 0}}, "val_ground_truth": digests,
                 "detections": {"b": DETS}})
    res = study_errors(sd)
    assert res["tide"]["AP50"].tolist() == [0.123, pytest.approx(computed["AP50"])]
