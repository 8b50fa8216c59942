"""COCO evaluation: results format, hand-computed AP, empty input, and a generated-set round trip."""
import json

import numpy as np
import pytest
import torch

from detectors.data import CocoDetection
from detectors.data.synthetic import generate
from detectors.evaluation.cocotools import bbox_ground_truth, coco_ground_truth
from detectors.evaluation.evaluate import METRIC_NAMES, evaluate_coco, to_coco_results


def _gt(annotations, categories=((3, "cat"), (7, "dog"))):
    """A ground-truth COCO with two 100x100 images (ids 1, 2); iscrowd 0 and the box area filled in."""
    return coco_ground_truth({
        "images": [{"id": 1, "width": 100, "height": 100}, {"id": 2, "width": 100, "height": 100}],
        "categories": [{"id": c, "name": n} for c, n in categories],
        "annotations": [{"id": k + 1, **a} for k, a in enumerate(annotations)],
    })


def _det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score}


def test_to_coco_results_converts_boxes_and_maps_labels():
    preds = [{"image_id": 5, "boxes": torch.tensor([[10.123, 20.0, 30.5, 60.0], [0.0, 0.0, 1.0, 2.0]]),
              "scores": torch.tensor([0.9, 0.25]), "labels": torch.tensor([1, 2])},
             {"image_id": 6, "boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
              "labels": torch.zeros(0, dtype=torch.int64)}]
    out = to_coco_results(preds, [3, 7, 90])
    # w = 30.5 - 10.123 = 20.377 -> 20.38 (2 decimals); h = 60 - 20 = 40.
    assert out == [{"image_id": 5, "category_id": 7, "bbox": [10.12, 20.0, 20.38, 40.0], "score": pytest.approx(0.9)},
                   {"image_id": 5, "category_id": 90, "bbox": [0.0, 0.0, 1.0, 2.0], "score": 0.25}]
    assert all(type(r["image_id"]) is int and type(r["category_id"]) is int for r in out)
    json.dumps(out)  # plain Python types only: written as detections.json
    # numpy inputs work the same way.
    np_preds = [{"image_id": 5, "boxes": np.array([[0.0, 0.0, 1.0, 2.0]]), "scores": np.array([0.5]),
                 "labels": np.array([0])}]
    assert to_coco_results(np_preds, [3, 7, 90])[0]["category_id"] == 3


def test_to_coco_results_rejects_bad_labels_and_lengths():
    with pytest.raises(ValueError, match="label 3 out of range 0..2"):
        to_coco_results([{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [1.0], "labels": [3]}], [3, 7, 90])
    with pytest.raises(ValueError, match="1 boxes, 2 scores, 1 labels"):
        to_coco_results([{"image_id": 1, "boxes": [[0, 0, 1, 1]], "scores": [1.0, 0.5], "labels": [0]}], [3])


def test_false_positive_ranked_first_halves_ap():
    gt = _gt([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20]}])
    results = [_det(1, 3, [60, 60, 20, 20], 0.9),   # no overlap: false positive, ranked first
               _det(1, 3, [10, 10, 20, 20], 0.8)]   # exact: true positive
    # Ranks: (P=0, R=0), (P=1/2, R=1). Interpolated precision at every recall threshold
    # r <= 1 is max P over R >= r = 0.5, at every IoU threshold: AP = AP50 = 0.5.
    out = evaluate_coco(gt, results)
    assert out["metrics"]["AP"] == pytest.approx(0.5)
    assert out["metrics"]["AP50"] == pytest.approx(0.5)
    assert out["per_class_ap"]["cat"] == pytest.approx(0.5)
    assert out["pr_curves"]["iou50"]["cat"] == pytest.approx([0.5] * 101)
    # "dog" has no ground truth: AP undefined (None), its curve all 0 (COCOeval's -1 -> 0).
    assert out["per_class_ap"]["dog"] is None
    assert out["pr_curves"]["iou50"]["dog"] == [0.0] * 101
    # Box area 20 x 20 = 400 < 32^2: only "small" is defined.
    assert out["metrics"]["APs"] == pytest.approx(0.5)
    assert out["metrics"]["APm"] is None and out["metrics"]["APl"] is None
    assert len(results[0]) == 4  # the caller's dicts are not touched by loadRes


def test_half_recall_gives_51_of_101_thresholds():
    gt = _gt([{"image_id": 1, "category_id": 7, "bbox": [10, 10, 30, 30]},
              {"image_id": 2, "category_id": 7, "bbox": [50, 50, 30, 30]}])
    out = evaluate_coco(gt, [_det(1, 7, [10, 10, 30, 30], 0.7)])
    # One of two found, precision 1: recall thresholds 0.00..0.50 (51 of 101) get 1.0,
    # the rest 0 -> AP = 51 / 101 = 0.50495...
    assert out["metrics"]["AP"] == pytest.approx(51 / 101)
    assert out["pr_curves"]["recall"][:3] == [0.0, 0.01, 0.02] and out["pr_curves"]["recall"][-1] == 1.0
    assert out["pr_curves"]["iou75"]["dog"] == pytest.approx([1.0] * 51 + [0.0] * 50)  # tp / (tp + fp + eps)
    assert out["metrics"]["AR100"] == pytest.approx(0.5)


def test_ids_follow_original_categories_not_positions():
    # cat_ids/class_names given in label order; precision must be read at COCOeval's index.
    gt = _gt([{"image_id": 1, "category_id": 90, "bbox": [10, 10, 20, 20]}],
             categories=((90, "zebra"), (3, "cat")))
    out = evaluate_coco(gt, [_det(1, 90, [10, 10, 20, 20], 1.0)], class_names=["cat", "zebra"], cat_ids=[3, 90])
    assert out["per_class_ap"] == {"cat": None, "zebra": pytest.approx(1.0)}


def test_empty_results_give_zero_metrics(capsys):
    gt = _gt([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20]}])
    out = evaluate_coco(gt, [])
    assert set(out["metrics"]) == set(METRIC_NAMES)
    assert {k: v for k, v in out["metrics"].items() if k not in ("APm", "APl")} == \
        {k: 0.0 for k in METRIC_NAMES if k not in ("APm", "APl")}
    assert out["metrics"]["APm"] is None  # no medium ground truth at all
    assert out["per_class_ap"] == {"cat": 0.0, "dog": None}
    assert out["pr_curves"]["iou50"]["cat"] == [0.0] * 101
    assert capsys.readouterr().out == ""  # COCOeval's prints are captured...
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.000" in out["summary"]
    json.dumps(out)  # ...and everything is JSON-able (eval.json)


def test_results_for_unknown_images_raise():
    gt = _gt([{"image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20]}])
    with pytest.raises(ValueError, match=r"image ids not in the ground truth: \[99\]"):
        evaluate_coco(gt, [_det(99, 3, [0, 0, 5, 5], 1.0)])


def test_generated_ground_truth_round_trips_to_ap_one(tmp_path):
    paths = generate({"num_train": 8, "num_val": 4, "seed": 2}, str(tmp_path))
    ds = CocoDetection(paths["val_images"], paths["val_annotations"])
    preds = []
    for i in range(len(ds)):
        _, t = ds[i]
        preds.append({"image_id": t["image_id"], "boxes": t["boxes"],
                      "scores": torch.ones(len(t["labels"])), "labels": t["labels"]})
    results = to_coco_results(preds, ds.cat_ids)
    assert len(results) == len(ds.coco.getAnnIds())
    out = evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids)
    assert out["metrics"]["AP"] == pytest.approx(1.0, abs=1e-6)
    assert out["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert out["metrics"]["AR100"] == pytest.approx(1.0, abs=1e-6)
    assert list(out["per_class_ap"]) == ["square", "circle", "triangle", "cross", "ring"]


def test_bbox_ground_truth_keeps_what_box_ap_reads():
    full = {"info": {"year": 2017}, "licenses": [{"id": 1}],
            "images": [{"id": 1, "width": 100, "height": 80, "file_name": "a.jpg", "license": 1}],
            "categories": [{"id": 3, "name": "cat", "supercategory": "animal"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 30], "area": 500.0, "iscrowd": 0,
                 "segmentation": [[10, 10, 30, 10, 30, 40]]},
                {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 20, 10, 4]},   # area, iscrowd missing
                {"id": 3, "image_id": 1, "category_id": 3, "bbox": [0, 0, 100, 80], "area": 8000.0, "iscrowd": 1,
                 "segmentation": {"counts": [0, 8000], "size": [80, 100]}}]}
    slim = bbox_ground_truth(full)
    assert set(slim) == {"images", "annotations", "categories"}
    assert slim["images"] == [{"id": 1, "width": 100, "height": 80}]
    assert slim["categories"] == [{"id": 3, "name": "cat", "supercategory": "animal"}]
    assert "segmentation" not in slim["annotations"][0] and slim["annotations"][0]["area"] == 500.0
    # the missing fields of annotation 2: iscrowd 0, area = 10 * 4 = 40 (the stored polygon area of 1 is kept)
    assert slim["annotations"][1] == {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 20, 10, 4],
                                      "area": 40.0, "iscrowd": 0}
    assert "area" not in full["annotations"][1]  # the input is untouched
    dets = [_det(1, 3, [11, 9, 20, 30], 0.9), _det(1, 3, [50, 20, 10, 5], 0.8), _det(1, 3, [60, 50, 30, 20], 0.7)]
    assert evaluate_coco(coco_ground_truth(slim), dets)["metrics"] == \
        evaluate_coco(coco_ground_truth(full), dets)["metrics"]
