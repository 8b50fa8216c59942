"""A results store populated through the Store's own API with fake but plausible trials.

Three focal-loss variants x 3 seeds (the fewest that give a seed verdict), whose (gamma, alpha) pairs are rows of the
focal loss paper's Table 1b, plus one trial that failed (its own variant).
Detections are made from a small COCO ground truth with a box jitter per
variant (gamma 5 the tightest, gamma 0 the loosest), and every accuracy number
is COCOeval's on those detections (detectors.evaluation.evaluate), so the pages, the
bootstrap and the stored metrics agree. The ground truth is stored with each
finished trial, as the driver's callback does, and its file is removed once the
store is written: the pages must read the store alone. The intended outcome:

    AP: gamma=5 > gamma=2 > gamma=0, with clear gaps
    paper (Table 1b): gamma=2 34.0 > gamma=5 32.2 > gamma=0 31.1
    -> gamma=0 vs 2 "reproduced"; gamma=5 vs 2 "not reproduced" (opposite direction), both on
       the seed test and the image bootstrap together
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from typing import Dict, List

import numpy as np

STUDY = "fake_focal"
CLASSES = ("square", "circle", "triangle")
VARIANTS = {  # variant -> (gamma, alpha, box jitter in px, false positives per image)
    "gamma=0,alpha=0.75": (0.0, 0.75, 4.0, 4),
    "gamma=2,alpha=0.25": (2.0, 0.25, 2.0, 2),
    "gamma=5,alpha=0.25": (5.0, 0.25, 0.6, 1),
}
FAILED = ("gamma=1,alpha=0.25", 1.0, 0.25, 0)   # variant, gamma, alpha, seed
SEEDS = (0, 1, 2)
# Pages of the study and the number of plots each should render for the fake study:
# index: AP per variant + the Table 1b gap chart; accuracy: metric bars, swept gamma,
# per-class heatmap, PR at 0.5 and 0.75, val AP per epoch, val AP by epoch budget with its band; speed: small
# multiples, speed-accuracy; loss: training loss, Figure-4 curves, easy-negative share, score vs IoU.
EXPECTED_PLOTS = {"index.html": 2, "accuracy.html": 9, "speed.html": 2, "loss.html": 4, "../index.html": 0}
EPOCHS = 3
# Val AP per epoch as a share of the final AP. FLAT rose, then held over the last epochs (the slope's interval
# holds 0: no "still improving" mark); RISING is a straight line to the end (slope AP / 3, no residual: marked).
FLAT = (0.7, 1.0, 1.0)
RISING = (1 / 3, 2 / 3, 1.0)

# A detector sweep for the convergence marks (populate_zoo): the most accurate detector is still improving and the
# fastest draws one fixed box on every image, so neither may win or stand on the speed-accuracy frontier.
ZOO_STUDY = "fake_zoo"
ZOO = {  # variant -> (detector, box jitter in px (None: one fixed box), false positives per image, latency ms, curve)
    "detector=yolov1": ("yolov1", None, 0, 3.0, FLAT),
    "detector=ssd": ("ssd", 4.0, 4, 5.0, FLAT),
    "detector=retinanet": ("retinanet", 2.0, 2, 8.0, FLAT),
    "detector=gfl": ("gfl", 0.6, 1, 10.0, RISING),
}


def write_ground_truth(path: str, num_images: int = 30, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "file_name": f"{i:04d}.png", "width": 128, "height": 128})
        for _ in range(int(rng.integers(1, 4))):
            w, h = rng.uniform(12, 60, 2)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(rng.integers(1, 4)),
                         "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    return path


# Class colours of the fake val images (tests/dashboards/test_gallery.py finds an object by its colour).
FILL = {1: (230, 30, 30), 2: (30, 160, 30), 3: (30, 60, 230)}
BACKGROUND = (128, 128, 128)


def write_images(gt: dict, images_dir: str) -> str:
    """One PNG per ground-truth image: grey, each object a filled box of its class's ``FILL`` colour, drawn in
    annotation order (a later object covers an earlier one)."""
    from PIL import Image, ImageDraw

    os.makedirs(images_dir, exist_ok=True)
    for img in gt["images"]:
        im = Image.new("RGB", (img["width"], img["height"]), BACKGROUND)
        draw = ImageDraw.Draw(im)
        for a in gt["annotations"]:
            if a["image_id"] == img["id"]:
                x, y, w, h = a["bbox"]
                draw.rectangle([x, y, x + w, y + h], fill=FILL[a["category_id"]])
        im.save(os.path.join(images_dir, img["file_name"]))
    return images_dir


def fake_detections(gt: dict, jitter: float, false_pos: int, seed: int) -> List[dict]:
    rng = np.random.default_rng(seed)
    dets = []
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        dx, dy, dw, dh = rng.normal(0, jitter, 4)
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [round(x + dx, 2), round(y + dy, 2), round(max(2.0, w + dw), 2),
                              round(max(2.0, h + dh), 2)], "score": round(float(rng.uniform(0.5, 1.0)), 4)})
    for img in gt["images"]:
        for _ in range(false_pos):
            x, y = rng.uniform(0, 100, 2)
            dets.append({"image_id": img["id"], "category_id": int(rng.integers(1, 4)),
                         "bbox": [round(float(x), 2), round(float(y), 2), 20.0, 20.0],
                         "score": round(float(rng.uniform(0.05, 0.7)), 4)})
    return dets


def trial_dict(variant: str, gamma: float, alpha: float, seed: int, gt_path: str,
               images_dir: str = "/nonexistent") -> Dict:
    return {
        "study": STUDY, "trial_key": f"{variant}/seed={seed}", "variant": variant, "seed": seed,
        "config_hash": f"{variant}-{seed}".replace("=", "").replace(",", "-").replace(".", "p"),
        "dataset": {"kind": "synthetic", "val_annotations": gt_path, "val_images": images_dir,
                    "synthetic": {"num_train": 64, "num_val": 30, "image_size": 128, "num_classes": 3, "seed": 0}},
        "detector": {"name": "retinanet", "scale": "tiny", "params": {}},
        "loss": {"name": "focal", "params": {"gamma": gamma, "alpha": alpha}},
        "train": {"epochs": EPOCHS, "batch_size": 8, "optimizer": "adamw", "lr": 0.002, "schedule": "cosine"},
        "eval": {"score_thresh": 0.05, "nms_iou": 0.5, "max_dets": 100},
        "num_threads": 1, "trial_dir": f"/tmp/{variant}-{seed}",
    }


def _diagnostics(gamma: float, alpha: float, seed: int) -> dict:
    frac = np.linspace(0, 1, 101)
    neg = frac ** (1 + 3 * gamma)       # larger gamma: the loss sits in fewer, harder negatives
    pos = frac ** (1 + 0.3 * gamma)
    return {"loss": "focal", "params": {"gamma": gamma, "alpha": alpha}, "images": 30,
            "positive": {"fraction": frac.round(4).tolist(), "cumulative_loss": pos.round(5).tolist()},
            "negative": {"fraction": frac.round(4).tolist(), "cumulative_loss": neg.round(5).tolist()},
            "easy_negative_share": round(0.5 / (1 + gamma) + 0.01 * seed, 4),
            "num_positive": 310 + seed, "num_negative": 90_000 + seed,
            # the GFL score-vs-IoU pairs (a focal study would not have them; here they exercise the plot)
            "score_iou": {"iou": np.linspace(0.4, 0.95, 50).round(3).tolist(),
                          "score": (np.linspace(0.4, 0.95, 50) ** (1 + gamma / 5)).round(3).tolist()}}


def populate(store, tmp_dir: str, mlflow_experiment_id: str = "7", images: bool = False) -> Dict[str, dict]:
    """Write the fake study into ``store``; returns trial_key -> trial dict (failed one included).

    ``images``: also write the val images (``write_images``) and keep the annotations file, which names them:
    the gallery page draws on them (without, the study has no gallery)."""
    from detectors.evaluation.cocotools import bbox_ground_truth, coco_ground_truth
    from detectors.evaluation.evaluate import evaluate_coco

    gt_path = write_ground_truth(os.path.join(tmp_dir, "instances_val.json"))
    with open(gt_path) as f:
        gt = json.load(f)
    coco = coco_ground_truth(gt)
    images_dir = write_images(gt, os.path.join(tmp_dir, "val")) if images else "/nonexistent"
    spec = {"name": STUDY, "tracking": {"mlflow_uri": f"sqlite:///{tmp_dir}/mlflow.db"}}
    store.upsert_study(STUDY, "Fake focal-loss sweep for the dashboard tests.", spec,
                       os.path.join(tmp_dir, f"{STUDY}.yaml"), mlflow_experiment_id=mlflow_experiment_id,
                       last_parent_run_id="parent0")
    t0 = datetime(2026, 1, 5, 12, 0, tzinfo=timezone.utc)
    trials = {}
    for n, (variant, (gamma, alpha, jitter, fp)) in enumerate(VARIANTS.items()):
        for seed in SEEDS:
            trial = trial_dict(variant, gamma, alpha, seed, gt_path, images_dir)
            trials[trial["trial_key"]] = trial
            run_id = f"run{n}{seed}" + "0" * 26
            store.mark_running(STUDY, trial, run_id)
            dets = fake_detections(gt, jitter, fp, seed=100 * n + seed)
            ev = evaluate_coco(coco, dets)
            speed = {"train_img_s": 150.0 - 10 * n + seed, "latency_ms_p50": 4.0 + n + 0.1 * seed,
                     "latency_ms_p95": 6.0 + n, "throughput_img_s": 400.0 - 20 * n, "params": 366209.0,
                     "gflops": 0.11, "peak_rss_mb": 900.0 + 10 * n, "threads": 1.0}
            final = {**{k: v for k, v in ev["metrics"].items() if v is not None},
                     **{f"speed/{k}": v for k, v in speed.items()}, "epoch": EPOCHS - 1, "step": 8 * EPOCHS}
            ap = ev["metrics"]["AP"]
            # rows keyed by the optimiser step, with the epoch and the training phase as metrics
            epochs = [{"step": 8 * (e + 1), "epoch": e, "phase": 0, "train/loss": 2.0 / (e + 1) + 0.1 * n,
                       "train/loss_cls": 1.2 / (e + 1), "train/loss_box": 0.8 / (e + 1), "lr": 0.002,
                       "train/img_s": 150.0 - 10 * n, "val/AP": ap * FLAT[e],
                       "val/AP50": min(1.0, 1.3 * ap * FLAT[e]),
                       # a term only one variant reports (GFL's DFL), here to exercise the loss page
                       **({"train/loss_dfl": 0.3 / (e + 1)} if gamma == 5.0 else {})}
                      for e in range(EPOCHS)]
            data = {"metrics": ev["metrics"], "per_class_ap": ev["per_class_ap"], "pr_curves": ev["pr_curves"],
                    "speed": speed, "loss_diagnostics": _diagnostics(gamma, alpha, seed), "detections": dets}
            start = t0 + timedelta(minutes=3 * (2 * n + seed))
            store.record_finished(STUDY, trial, final, epochs, data, run_id, start, start + timedelta(seconds=150),
                                  val_ground_truth=bbox_ground_truth(gt))
    variant, gamma, alpha, seed = FAILED
    trial = trial_dict(variant, gamma, alpha, seed, gt_path)
    trials[trial["trial_key"]] = trial
    store.mark_running(STUDY, trial, "runfailed" + "0" * 23)
    store.record_failed(STUDY, trial, "RuntimeError: loss is NaN at step 3", "runfailed" + "0" * 23, attempts=2)
    if not images:
        os.remove(gt_path)  # the trial configs still name it; the pages must not need it
    return trials


def populate_zoo(store, tmp_dir: str) -> None:
    """Write the fake detector sweep ``ZOO`` (3 seeds each) into ``store``: final AP and latency, val AP per epoch
    along each variant's curve, detections and the val ground truth."""
    from detectors.evaluation.cocotools import bbox_ground_truth, coco_ground_truth
    from detectors.evaluation.evaluate import evaluate_coco

    gt_path = write_ground_truth(os.path.join(tmp_dir, "zoo_val.json"))
    with open(gt_path) as f:
        gt = json.load(f)
    coco = coco_ground_truth(gt)
    store.upsert_study(ZOO_STUDY, "Fake detector sweep for the convergence marks.", {"name": ZOO_STUDY}, None)
    t0 = datetime(2026, 1, 6, 12, 0, tzinfo=timezone.utc)
    for n, (variant, (name, jitter, fp, latency, curve)) in enumerate(ZOO.items()):
        for seed in SEEDS:
            trial = dict(trial_dict(variant, 2.0, 0.25, seed, gt_path), study=ZOO_STUDY,
                         detector={"name": name, "scale": "tiny", "params": {}})
            if jitter is None:
                dets = [{"image_id": img["id"], "category_id": 1, "bbox": [10.0, 10.0, 30.0, 30.0], "score": 0.6}
                        for img in gt["images"]]
            else:
                dets = fake_detections(gt, jitter, fp, seed=100 * n + seed)
            ev = evaluate_coco(coco, dets)
            final = {**{k: v for k, v in ev["metrics"].items() if v is not None},
                     "speed/latency_ms_p50": latency + 0.1 * seed}
            epochs = [{"step": e + 1, "epoch": e, "val/AP": ev["metrics"]["AP"] * curve[e]} for e in range(EPOCHS)]
            start = t0 + timedelta(minutes=3 * (3 * n + seed))
            store.record_finished(ZOO_STUDY, trial, final, epochs, {"detections": dets}, None, start,
                                  start + timedelta(seconds=150), val_ground_truth=bbox_ground_truth(gt))
    os.remove(gt_path)


# A study with an equal tuning budget per variant (sweep.tune): 8 samples each of train.lr (log scale) and
# train.warmup_iters, stored as the study "fake_tuned.tune", and 2 seeds of each variant's chosen configuration.
TUNED_STUDY = "fake_tuned"
TUNE = {"space": {"train.lr": {"low": 3e-4, "high": 1e-2, "log": True},
                  "train.warmup_iters": {"low": 0, "high": 200, "log": False}},
        "samples": 8, "search": "optuna", "scheduler": "asha", "grace_epochs": 1, "reduction_factor": 3,
        "holdout": 0.2, "seed": 0}
# variant -> samples in the order created: (lr, warmup_iters, tuning score, stopped early). gamma=2 scores 0.1 ..
# 0.8 (its best lr, 0.0098, at the range's top edge); gamma=0 scores 0.48 .. 0.52 (best lr 0.002, mid-range).
# Before them, one sample of an older search of gamma=0 (other settings: another "search" key), scoring 0.9: the
# page leaves it out.
TUNED = {
    "gamma=2,alpha=0.25": [(0.001, 20, 0.3, False), (0.0004, 180, 0.1, True), (0.003, 60, 0.5, False),
                           (0.0005, 90, 0.2, True), (0.0098, 150, 0.8, False), (0.0007, 10, 0.4, True),
                           (0.006, 120, 0.7, False), (0.004, 30, 0.6, False)],
    "gamma=0,alpha=0.75": [(0.001, 100, 0.5, False), (0.002, 37, 0.52, False), (0.0009, 5, 0.5, False),
                           (0.0012, 70, 0.5, False), (0.0011, 110, 0.5, False), (0.0006, 160, 0.48, False),
                           (0.0015, 140, 0.5, False), (0.0013, 90, 0.5, False)],
}


def populate_tuned(store) -> None:
    """Write ``TUNED_STUDY`` and its tuning trials (the storage contract of ``dashboards.tuning``) into ``store``."""
    tuning = TUNED_STUDY + getattr(store, "TUNING_SUFFIX", ".tune")
    spec = {"name": TUNED_STUDY, "sweep": {"tune": TUNE}}
    store.upsert_study(TUNED_STUDY, "Fake tuned sweep for the tuning page.", spec, None)
    store.upsert_study(tuning, "", spec, None)
    t0 = datetime(2026, 1, 7, 12, 0, tzinfo=timezone.utc)
    old = [("gamma=0,alpha=0.75", 8, (0.005, 50, 0.9, False), "old-search")]
    new = [(variant, i, sample, f"search-{variant}") for variant, samples in TUNED.items()
           for i, sample in enumerate(samples)]
    for variant, i, (lr, warmup, score, stopped), search in old + new:
        gamma, alpha = VARIANTS[variant][:2]
        trial = dict(trial_dict(variant, gamma, alpha, 0, "/nonexistent"), study=tuning,
                     trial_key=f"{variant}/sample={i}", config_hash=f"tune-{search}-{i}")
        trial["train"] = dict(trial["train"], lr=lr, warmup_iters=warmup)
        epochs = 1 if stopped else EPOCHS
        data = {"tuning": {"sample": i, "values": {"train.lr": lr, "train.warmup_iters": warmup}, "search": search,
                           "score": score, "epochs": epochs, "stopped_early": stopped}}
        start = t0 + timedelta(minutes=i)
        store.record_finished(tuning, trial, {"AP": score}, [{"step": e + 1, "epoch": e, "val/AP": score}
                                                             for e in range(epochs)],
                              data, None, start, start + timedelta(seconds=30))
    for variant, samples in TUNED.items():
        gamma, alpha = VARIANTS[variant][:2]
        best = max(range(len(samples)), key=lambda i: samples[i][2])
        lr, warmup, score, _ = samples[best]
        tuned = {"values": {"train.lr": lr, "train.warmup_iters": warmup}, "sample": best, "score": score}
        for seed in (0, 1):
            trial = dict(trial_dict(variant, gamma, alpha, seed, "/nonexistent"), study=TUNED_STUDY)
            trial["train"] = dict(trial["train"], lr=lr, warmup_iters=warmup)
            ap = score / 2 + 0.01 * seed
            start = t0 + timedelta(hours=1, minutes=seed)
            store.record_finished(TUNED_STUDY, trial, {"AP": ap, "AP50": 1.5 * ap},
                                  [{"step": e + 1, "epoch": e, "val/AP": ap * FLAT[e]} for e in range(EPOCHS)],
                                  {"tuned": tuned}, None, start, start + timedelta(seconds=60))
# The imbalance question (populate_imbalance): alpha-balanced CE and focal loss on two datasets, the second with
# 3x the image side (9x the anchors for the same objects). Hand-set AP per seed (0, 1, 2), no detections:
IMBALANCE_STUDY = "fake_imbalance"
IMBALANCE = {  # variant -> (image_size, gamma, alpha, AP per seed, foreground fraction, anchors per image)
    "bce,128px": (128, 0.0, 0.75, (0.30, 0.32, 0.31), 0.006, 3069),
    "focal,128px": (128, 2.0, 0.25, (0.32, 0.33, 0.34), 0.006, 3069),
    "bce,384px": (384, 0.0, 0.75, (0.20, 0.22, 0.21), 0.0008, 27621),
    "focal,384px": (384, 2.0, 0.25, (0.26, 0.26, 0.28), 0.0008, 27621),
}


def populate_imbalance(store) -> None:
    """Write the fake ``IMBALANCE`` sweep into ``store``: final AP and, per epoch, the assignment figures
    (the foreground fraction moves a little over epochs; its epoch mean is the table's value)."""
    store.upsert_study(IMBALANCE_STUDY, "Fake imbalance study.", {"name": IMBALANCE_STUDY}, None)
    t0 = datetime(2026, 1, 7, 12, 0, tzinfo=timezone.utc)
    for n, (variant, (size, gamma, alpha, aps, fg, anchors)) in enumerate(IMBALANCE.items()):
        for seed in SEEDS:
            trial = dict(trial_dict(variant, gamma, alpha, seed, "/nonexistent/val.json"), study=IMBALANCE_STUDY)
            trial["dataset"]["synthetic"]["image_size"] = size
            # as the driver writes them: a generated set's own paths and the dataset digest
            trial["dataset"].update(digest=f"ds{size}", train_annotations=f"/runs/datasets/synthetic-{size}/train.json")
            epochs = [{"step": e + 1, "epoch": e, "val/AP": aps[seed], "train/loss": 1.0,
                       "train/fg_fraction": fg * (0.9, 1.0, 1.1)[e], "train/anchors_per_image": anchors}
                      for e in range(EPOCHS)]
            start = t0 + timedelta(minutes=3 * (3 * n + seed))
            store.record_finished(IMBALANCE_STUDY, trial, {"AP": aps[seed]}, epochs, {}, None, start,
                                  start + timedelta(seconds=150))
