"""A stand-in for ``detectors.train.trainable.tune_trainable`` that reports exactly like a trial, in about a
second: the scale benchmark (``platform.bench.scale``) runs a thousand of them through the real driver.

Per epoch it reports the keys a trial reports (``train/loss*``, ``lr``, ``train/img_s``, ``val/*``, ``epoch``,
``step``, ``phase``), then a final report (``final=1``, the eval metrics, ``speed/*``) with a checkpoint holding
``detections.json``, ``eval.json``, ``speed.json``, ``diagnostics.json`` and ``model.pt`` copied from a template
the bench builds once (:func:`write_template`) with a real trial's sizes.

Why here, pickled by value: a Ray worker imports the standard library's ``platform`` before anything of ours,
so a function it must import from ``platform.bench`` cannot be unpickled there; and the worker package
(``detectors/``) must not hold a benchmark-only trainable that a study could reach by accident. Registering
this module with ``ray.cloudpickle.register_pickle_by_value`` makes Ray ship :func:`make_trainable`'s function
by value, with the helpers it calls; it imports only the standard library and ``ray.tune`` in the worker.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np

ARTIFACT_NAMES = ("detections.json", "eval.json", "speed.json", "diagnostics.json", "model.pt")
VAL_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
MODEL_BYTES = 1_806_205  # a tiny RetinaNet's state dict (a real trial's model.pt)


def make_trainable(template: str, seconds: float = 1.0) -> Callable[[Dict], None]:
    """The Tune function trainable: ``config["trial"]`` is a trial dict; it sleeps ``seconds`` in all,
    spread over ``trial["train"]["epochs"]`` epoch reports, then reports the final metrics with the
    template's artifacts as its checkpoint."""

    def standin_trainable(config: Dict) -> None:
        from ray import tune

        trial = config["trial"]
        epochs = int(trial["train"]["epochs"])
        with open(os.path.join(template, "eval.json")) as f:
            final_metrics = {k: v for k, v in json.load(f)["metrics"].items() if v is not None}
        steps = 8  # optimiser steps per epoch
        for e in range(epochs):
            time.sleep(seconds / (epochs + 1))
            share = (e + 1) / epochs
            tune.report({"train/loss": 2.0 / (e + 1), "train/loss_cls": 1.2 / (e + 1),
                         "train/loss_box": 0.8 / (e + 1), "lr": 2e-3, "train/img_s": 150.0, "phase": 0,
                         **{f"val/{k}": v * share for k, v in final_metrics.items()},
                         "epoch": e, "step": steps * (e + 1)})
        time.sleep(seconds / (epochs + 1))
        out = tempfile.mkdtemp(prefix="standin-")
        for name in ARTIFACT_NAMES:
            shutil.copy(os.path.join(template, name), out)
        final = {**final_metrics, "speed/train_img_s": 150.0, "train/time_s": seconds,
                 "epoch": epochs - 1, "step": steps * epochs, "final": 1}
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(out))

    return standin_trainable


def register() -> None:
    """Ship this module's functions to Ray workers by value (the module docstring says why)."""
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])


# --------------------------------------------------------------------------- the template (in the driver)


def _detections(gt: dict, per_image: int, rng: np.random.Generator) -> List[dict]:
    """Each ground-truth box jittered by 2 px, then false positives up to ``per_image`` per image:
    the count and spread of a lightly trained tiny detector's output (about 16 a val image)."""
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = (np.asarray(a["bbox"]) + rng.normal(0, 2.0, 4)).round(2).tolist()
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x, y, max(2.0, w), max(2.0, h)], "score": float(rng.uniform(0.5, 1.0))})
    cats = [c["id"] for c in gt["categories"]]
    boxes = {}
    for a in gt["annotations"]:
        boxes[a["image_id"]] = boxes.get(a["image_id"], 0) + 1
    for img in gt["images"]:
        for _ in range(max(0, per_image - boxes.get(img["id"], 0))):
            x, y = rng.uniform(0, img["width"] - 20, 2).round(2).tolist()
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(cats)),
                         "bbox": [x, y, 20.0, 20.0], "score": float(rng.uniform(0.05, 0.5))})
    return dets


def _diagnostics(rng: np.random.Generator) -> dict:
    """The loss diagnostics' shape (``detectors.evaluation.diagnostics``): cumulative-loss curves of 101 points."""
    frac = np.linspace(0, 1, 101)
    return {"loss": "focal", "params": {"gamma": 2.0, "alpha": 0.25}, "images": 150,
            "positive": {"fraction": frac.round(4).tolist(), "cumulative_loss": (frac ** 1.6).round(5).tolist()},
            "negative": {"fraction": frac.round(4).tolist(), "cumulative_loss": (frac ** 7).round(5).tolist()},
            "easy_negative_share": float(rng.uniform(0.1, 0.3)), "num_positive": 310, "num_negative": 90_000}


def write_template(val_annotations: str, out: str, per_image: int = 16) -> str:
    """The artifacts every stand-in trial copies, made once from the study's val set: detections of a
    real trial's size (about 240 KB for 150 images), COCO evaluation of them (``eval.json``), speed,
    diagnostics and a ``model.pt`` of a tiny RetinaNet's size."""
    from detectors.evaluation.cocotools import coco_ground_truth
    from detectors.evaluation.evaluate import evaluate_coco

    os.makedirs(out, exist_ok=True)
    with open(val_annotations) as f:
        gt = json.load(f)
    rng = np.random.default_rng(0)
    dets = _detections(gt, per_image, rng)
    ev = evaluate_coco(coco_ground_truth(gt), dets)
    files = {"detections.json": dets, "eval.json": {k: v for k, v in ev.items() if k != "detections"},
             "speed.json": {"train_img_s": 150.0}, "diagnostics.json": _diagnostics(rng)}
    for name, obj in files.items():
        with open(os.path.join(out, name), "w") as f:
            json.dump(obj, f)
    with open(os.path.join(out, "model.pt"), "wb") as f:
        f.write(rng.bytes(MODEL_BYTES))
    return out
