"""faster-coco-eval and pycocotools give the same evaluation; pycocotools stays the reference and a switch."""
import numpy as np
import pytest

from detectors.evaluation.cocotools import coco_ground_truth, eval_backend
from detectors.evaluation.evaluate import evaluate_coco
from platform.bench.measurements import synthetic_detections


@pytest.mark.parametrize("num_images,seed", [(20, 0), (120, 1)])
def test_faster_backend_equals_pycocotools(num_images, seed):
    gt, dets = synthetic_detections(num_images, seed)
    ref = evaluate_coco(coco_ground_truth(gt), dets, backend="pycocotools")
    fast = evaluate_coco(coco_ground_truth(gt), dets, backend="faster")
    # the AP family: the same numbers but for the last bits of a float (the two sum in other orders)
    assert fast["metrics"] == pytest.approx(ref["metrics"], abs=1e-12)
    assert fast["per_class_ap"] == pytest.approx(ref["per_class_ap"], abs=1e-12)
    for iou in ("iou50", "iou75"):
        for name, curve in ref["pr_curves"][iou].items():
            assert np.allclose(fast["pr_curves"][iou][name], curve, rtol=0, atol=1e-12)
    assert fast["summary"] == ref["summary"]
    # empty detections: zeros where there is ground truth, as pycocotools
    assert evaluate_coco(coco_ground_truth(gt), [], backend="faster")["metrics"] == \
        evaluate_coco(coco_ground_truth(gt), [], backend="pycocotools")["metrics"]


def test_backend_switch(monkeypatch):
    monkeypatch.setenv("DETBENCH_EVAL_BACKEND", "pycocotools")
    assert eval_backend() == "pycocotools"
    monkeypatch.delenv("DETBENCH_EVAL_BACKEND")
    assert eval_backend() == "faster"  # installed here, so the default
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'x'"):
        eval_backend("x")
    gt, dets = synthetic_detections(5, 0)
    with pytest.raises(ValueError, match="image ids not in the ground truth"):
        evaluate_coco(coco_ground_truth(gt), [dict(dets[0], image_id=999)], backend="faster")
