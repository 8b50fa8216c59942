"""Model-level measurements behind ``python -m platform.bench``.

Each function returns plain dicts of repeated measurements; the command takes
medians and spreads and writes the tables. Timings record both the wall clock
and the process's CPU time: on a machine other programs share, CPU time of a
one-thread measurement moves far less with the neighbours than the wall clock,
so side-by-side ratios are read from it (on an idle machine the two agree).

- :func:`ours_vs_torchvision`: training images/s of our RetinaNet against
  ``torchvision.models.detection.RetinaNet`` on the same backbone (one copy of
  our tiny body + FPN), anchors, head (``num_convs`` x conv3x3 of the FPN width,
  GroupNorm, no conv bias before it), transform, batch and threads, interleaved;
- :func:`step_profile`: the parts of a training step and of inference that differ
  between the two (assignment, loss forward + backward, post-processing);
- :func:`detector_zoo`: every registered detector at a scale: params, FLOPs,
  latency, throughput, and its training images/s and FLOPs per training image;
- :func:`matmul_peak`: seconds of a large dense fp32 ``torch.mm``, the physical limit the
  training speeds are set beside (``platform.bench.peak``);
- :func:`padding_cost`: FLOPs and latency of paper-scale RetinaNet and Faster R-CNN on
  one 800 x 1333 image padded to 32 (now) and to the coarsest stride (before, issue 22);
- :func:`data_path`: an epoch of batches with and without the decoded-image
  cache, with 0 and 2 DataLoader workers, and training steps with 0 and 2 workers;
- :func:`eval_backends`: pycocotools against faster-coco-eval on generated detections;
- :func:`worker_memory`: what a Ray worker's resident memory is made of (run it in a Ray task).

Benchmark code, not code that decides a trial's result, so it lives on the driver
side, outside the ``detectors/`` tree hashed into every trial's config hash
(``platform.study.expand.detectors_code_version``): editing it re-runs no cached trial.
It imports nothing of ``platform`` (only ``detectors``), so ``worker_memory`` can
be pickled by value into a Ray worker.
"""
from __future__ import annotations

import copy
import resource
import statistics
import time
from functools import partial
from typing import Callable, Dict, List, Optional

import numpy as np


def _rss_mb() -> Dict[str, float]:
    """Current and peak resident set size of this process (MiB), from /proc where it exists."""
    out = {"peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":")[0]
                if key in ("VmRSS", "RssAnon", "RssFile"):
                    out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def measured(fn: Callable[..., object], *args):
    """``fn(*args)`` and the seconds it took: ``(value, {"wall": ..., "cpu": ...})`` (this process's CPU time)."""
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn(*args)
    return value, {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


def timed(fn: Callable[..., object], *args) -> Dict[str, float]:
    """Seconds of one call ``fn(*args)``: wall clock and this process's CPU time."""
    return measured(fn, *args)[1]


def _batch(paths: dict, batch_size: int):
    from detectors.data.coco import CocoDetection

    ds = CocoDetection(paths["train_images"], paths["train_annotations"])
    items = [ds[i % len(ds)] for i in range(batch_size)]
    return [img for img, _ in items], [{k: v for k, v in t.items() if k != "image_id"} for _, t in items], ds


def retinanet_pair(num_classes: int, head_convs: int = 4):
    """Our tiny RetinaNet and torchvision's on a copy of the same backbone, anchors, head shape and transform."""
    import torch
    from torch import nn
    from torchvision.models.detection.retinanet import RetinaNet as TorchvisionRetinaNet
    from torchvision.models.detection.retinanet import RetinaNetHead

    from detectors.losses import BOX_LOSSES, CLS_LOSSES
    from detectors.models.retinanet import SCALES, build_retinanet

    width = SCALES["tiny"]["fpn_width"]
    torch.manual_seed(0)
    # torchvision's head is 4 convs of the FPN width, its box loss L1: ours set to the same
    ours = build_retinanet(num_classes, "tiny", head_convs=head_convs, head_width=width,
                           cls_loss=CLS_LOSSES.get("focal"), box_loss=BOX_LOSSES.get("l1"))
    groups = min(32, width // 4) or 1  # our GroupNorm's groups
    head = RetinaNetHead(width, 9, num_classes, norm_layer=partial(nn.GroupNorm, groups))
    theirs = TorchvisionRetinaNet(copy.deepcopy(ours.backbone), num_classes, anchor_generator=ours.anchor_generator,
                                  head=head, min_size=SCALES["tiny"]["min_size"], max_size=SCALES["tiny"]["max_size"])
    theirs.transform = ours.transform
    if head_convs != 4:
        raise ValueError("torchvision's RetinaNet head has 4 convs")
    return ours, theirs


def ours_vs_torchvision(paths: dict, steps: int = 5, repeats: int = 10, batch_size: int = 8, threads: int = 1,
                        num_classes: int = 5) -> Dict[str, List[float]]:
    """Training images/s of each, ``repeats`` interleaved rounds of ``steps`` SGD steps after 3 warm-up
    steps (each round, the other model goes first)."""
    import torch

    torch.set_num_threads(threads)
    images, targets, _ = _batch(paths, batch_size)
    ours, theirs = retinanet_pair(num_classes)
    models = {"ours": ours.train(), "torchvision": theirs.train()}
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(name):
        losses = models[name](images, targets)
        loss = sum(losses.values())
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    for name in models:
        for _ in range(3):
            step(name)
    out: Dict[str, List[float]] = {f"{k}_{clock}": [] for k in models for clock in ("wall", "cpu")}
    def steps_of(name):
        for _ in range(steps):
            step(name)

    for r in range(repeats):
        for name in (list(models) if r % 2 == 0 else list(models)[::-1]):  # alternate who goes first
            t = timed(steps_of, name)
            for clock in ("wall", "cpu"):
                out[f"{name}_{clock}"].append(steps * batch_size / t[clock])
    return out


def step_profile(paths: dict, repeats: int = 20, batch_size: int = 8, threads: int = 1,
                 num_classes: int = 5) -> Dict[str, List[float]]:
    """Milliseconds (CPU time) of assignment, loss forward + backward and post-processing, ours and torchvision's,
    on the same head outputs."""
    import torch
    from torchvision.ops import box_iou

    torch.set_num_threads(threads)
    images, targets, _ = _batch(paths, batch_size)
    ours, theirs = retinanet_pair(num_classes)
    with torch.no_grad():
        il, tg = ours.transform(images, targets)
        feats = list(ours.backbone(il.tensors).values())
        logits, deltas = ours.head(feats)
    anchors = ours.anchor_generator(il, feats)
    level_sizes = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
    lg, dl = logits.clone().requires_grad_(), deltas.clone().requires_grad_()

    def our_loss():
        sum(ours.compute_loss(tg, lg, dl, anchors).values()).backward()

    def their_loss():
        out = {"cls_logits": lg, "bbox_regression": dl}
        sum(theirs.compute_loss(tg, out, anchors).values()).backward()

    split = [list(x.split(level_sizes, dim=1)) for x in (logits, deltas)]
    per_level = {"cls_logits": split[0], "bbox_regression": split[1]}
    anchors_per_level = [list(a.split(level_sizes)) for a in anchors]
    parts = {
        "assign_ours": lambda: ours.assign(tg, anchors),
        "assign_torchvision": lambda: [theirs.proposal_matcher(box_iou(t["boxes"], a)) for t, a in zip(tg, anchors)],
        "loss_ours": our_loss, "loss_torchvision": their_loss,
        "postprocess_ours": lambda: ours.postprocess(logits, deltas, anchors, level_sizes, il.image_sizes),
        "postprocess_torchvision": lambda: theirs.postprocess_detections(per_level, anchors_per_level, il.image_sizes),
    }
    out: Dict[str, List[float]] = {k: [] for k in parts}
    for _ in range(2):
        for fn in parts.values():
            fn()
    for _ in range(repeats):
        for name, fn in parts.items():
            out[name].append(timed(fn)["cpu"] * 1000.0)
    return out


def detector_zoo(paths: dict, scale: str = "tiny", threads: int = 1, latency_images: int = 20,
                 warmup: int = 5, repeats: int = 3, train_steps: int = 5) -> List[Dict[str, object]]:
    """Params, GFLOPs, latency p50/p95 (batch 1) and throughput (batch 8) of every registered detector,
    untrained, each with its default losses; with ``train_steps`` > 0 also its training figures
    (:func:`training_figures`, ``repeats`` times ``train_steps`` steps)."""
    import torch

    from detectors.build import build_detector
    from detectors.data.coco import CocoDetection
    from detectors.models import MODELS
    from detectors.evaluation.speed import measure_speed
    from detectors.train.trial import make_trial

    torch.set_num_threads(threads)
    val = CocoDetection(paths["val_images"], paths["val_annotations"])
    rows = []
    for name in MODELS.names():
        trial = make_trial(paths, "/tmp/unused", detector={"name": name, "scale": scale})
        trial["loss"] = None  # each detector's own default losses
        torch.manual_seed(0)
        model = build_detector(trial, len(val.cat_ids), [1] * len(val.cat_ids))
        f = measure_speed(model, val, "cpu", latency_images=latency_images, warmup=warmup, throughput_batch=8,
                          throughput_batches=2, repeats=repeats)
        if train_steps > 0:
            f.update(training_figures(trial, train_steps, repeats))
        rows.append({"detector": name, "scale": scale, "threads": threads, **f})
    return rows


def training_figures(trial: dict, steps: int, repeats: int) -> Dict[str, float]:
    """A trial's training speed as its study's speed phase measures it (``train_img_s`` and its spread: the
    trial's first phase, its batch size, wall clock, ``repeats`` times ``steps`` steps after two warm-up
    steps), and the FLOPs of one training image (``torch.utils.flop_counter``, a multiply-add = 2):
    ``train_gflops`` of the forward pass in train mode, losses included, on a batch of the training set at
    the input size the detector's transform gives it, and ``train_gflops_fwd_bwd`` with the backward of
    the summed losses too (what the usual "x 3" for a training step stands for)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detectors.build import build_detector
    from detectors.config import TrialConfig
    from detectors.data.coco import collate
    # the speed phase's own measurement, so the figure is the one a study reports for this trial
    from detectors.evaluation.speed_phase import _train_speed
    from detectors.train.run import load_datasets

    cfg = TrialConfig.from_dict(trial)
    train_ds, val_ds = load_datasets(cfg)
    torch.manual_seed(0)
    model = build_detector(cfg, len(train_ds.cat_ids), train_ds.class_counts)
    if hasattr(model, "attach_datasets"):  # cached selective-search proposals: training steps read them
        model.attach_datasets([train_ds, val_ds])
    bs = cfg.train.batch_size
    images, targets = collate([train_ds[i % len(train_ds)] for i in range(bs)])
    model.train()
    counter = FlopCounterMode(display=False)
    with counter:
        losses = model(list(images), list(targets))
        forward = counter.get_total_flops()
        sum(losses.values()).backward()
        forward_backward = counter.get_total_flops()
    model.zero_grad(set_to_none=True)
    speed = _train_speed(model, train_ds, cfg, torch.device("cpu"), steps, repeats)
    return {**speed, "train_batch": bs, "train_gflops": forward / bs / 1e9,
            "train_gflops_fwd_bwd": forward_backward / bs / 1e9}


def matmul_peak(n: int = 2048, warmup: int = 2, repeats: int = 5, threads: int = 1) -> Dict[str, object]:
    """Seconds (wall and CPU) of ``repeats`` dense fp32 ``torch.mm`` of two n x n matrices after ``warmup``
    untimed ones, on ``threads`` threads: 2 n^3 FLOPs each, so a GFLOP/s near the best this machine's BLAS
    reaches per thread (n = 2048: 17.2 GFLOP, 16 MiB a matrix, far past the caches' reuse limits)."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b, c = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g), torch.empty(n, n)
    for _ in range(warmup):
        torch.mm(a, b, out=c)
    runs = [timed(partial(torch.mm, out=c), a, b) for _ in range(repeats)]
    return {"n": n, "threads": torch.get_num_threads(), "flop": 2 * n ** 3,
            "wall_s": [t["wall"] for t in runs], "cpu_s": [t["cpu"] for t in runs]}


# (detector, builder overrides, the multiple its transform padded to before anchors took declared strides)
PADDING_DETECTORS = (("retinanet", {}, 128), ("faster_rcnn", {"fpn": True}, 64))


def padding_cost(repeats: int = 3, threads: int = 1, size=(800, 1333),
                 detectors=PADDING_DETECTORS) -> List[Dict[str, object]]:
    """Per detector (paper scale, untrained, eval, min / max size = ``size``, so the image is not resized) and
    per padding multiple (32, and the one it had before): the padded size, the anchors, GFLOPs of one forward
    (``torch.utils.flop_counter``) and its latency (wall and CPU ms, ``repeats`` times after a warm-up, the two
    paddings interleaved). Only the transform's ``size_divisible`` differs between them: at the old multiple the
    anchors are exactly the old ones (every level's grid * stride is the padded side)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detectors.models import MODELS

    torch.set_num_threads(threads)
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, overrides, before in detectors:
        torch.manual_seed(0)
        model = MODELS.build(name, num_classes=80, scale="paper", min_size=min(size), max_size=max(size),
                             **overrides).eval()
        generator = model.rpn.anchor_generator if hasattr(model, "rpn") else model.anchor_generator
        by_pad: Dict[int, Dict[str, object]] = {}
        with torch.no_grad():
            for pad in (before, 32):
                model.transform.size_divisible = pad
                image_list, _ = model.transform([image])
                feats = list(model.backbone(image_list.tensors).values())
                counter = FlopCounterMode(display=False)
                with counter:
                    model([image])
                by_pad[pad] = {"detector": name, "size_divisible": pad, "padded": list(image_list.tensors.shape[-2:]),
                               "anchors": generator(image_list, feats)[0].shape[0],
                               "gflops": counter.get_total_flops() / 1e9, "wall_ms": [], "cpu_ms": []}
            for r in range(repeats):
                for pad in ((before, 32) if r % 2 == 0 else (32, before)):  # alternate who goes first
                    model.transform.size_divisible = pad
                    t = timed(model, [image])
                    by_pad[pad]["wall_ms"].append(t["wall"] * 1000.0)
                    by_pad[pad]["cpu_ms"].append(t["cpu"] * 1000.0)
        rows += [by_pad[before], by_pad[32]]
    return rows


def data_path(paths: dict, batch_size: int = 8, steps: int = 20) -> Dict[str, Dict[str, float]]:
    """Seconds for one pass over the training set's batches (decode + collate) with the decoded-image cache
    off / on (the cached pass after a first, filling one) and 0 / 2 DataLoader workers; and seconds of
    ``steps`` training steps with 0 / 2 workers (cache on)."""
    import torch
    from torch.utils.data import DataLoader

    from detectors.build import build_detector, trial_phases
    from detectors.config import TrialConfig
    from detectors.data.coco import CocoDetection, collate
    from detectors.train.loop import fit
    from detectors.train.runtime import LocalRuntime
    from detectors.train.trial import make_trial

    out: Dict[str, Dict[str, float]] = {}
    for cache in (False, True):
        ds = CocoDetection(paths["train_images"], paths["train_annotations"], cache_mb=1e9 if cache else 0)
        if cache:
            ds.preload()
        for workers in (0, 2):
            loader = DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=workers,
                                generator=torch.Generator().manual_seed(0))
            out[f"epoch_cache={'on' if cache else 'off'}_workers={workers}"] = timed(list, loader)
    for workers in (0, 2):
        train = CocoDetection(paths["train_images"], paths["train_annotations"])
        val = CocoDetection(paths["val_images"], paths["val_annotations"])
        trial = TrialConfig.from_dict(make_trial(paths, f"/tmp/detbench-bench-data-{workers}", train={
            "epochs": 1, "max_steps": steps, "batch_size": batch_size, "eval_every_epoch": False}))
        torch.manual_seed(0)
        model = build_detector(trial, len(train.cat_ids), train.class_counts)
        runtime = LocalRuntime(torch.device("cpu"), loader_workers=workers)
        result, t = measured(fit, model, train, val, trial, trial_phases(trial), runtime, lambda m, c: None)
        out[f"train_{steps}_steps_workers={workers}"] = {**t, "img_s": result["train_img_s"]}
    return out


def synthetic_detections(num_images: int, seed: int = 0):
    """A COCO ground truth of ``num_images`` 128 px images and detections around it (jittered
    true boxes, some with a wrong class, plus low-scoring false positives)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "width": 128, "height": 128})
        for _ in range(int(rng.integers(0, 6))):
            w, h = rng.uniform(6, 60, 2)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            c = int(rng.integers(1, 6))
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 3, 4)
                box = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
                dets.append({"image_id": i, "category_id": c if rng.random() < 0.9 else int(rng.integers(1, 6)),
                             "bbox": [round(float(v), 2) for v in box], "score": float(rng.random())})
        for _ in range(int(rng.integers(0, 20))):
            w, h = rng.uniform(4, 60, 2)
            x, y = rng.uniform(0, 128 - w), rng.uniform(0, 128 - h)
            dets.append({"image_id": i, "category_id": int(rng.integers(1, 6)),
                         "bbox": [round(float(v), 2) for v in (x, y, w, h)], "score": float(rng.random() * 0.5)})
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in range(1, 6)]}
    return gt, dets


def eval_backends(num_images: int, repeats: int = 1, seed: int = 0) -> Dict[str, object]:
    """Seconds of a full bbox evaluation with each backend (fresh ground truth object each time) and the
    largest difference between their metrics, per-class AP and PR curves."""
    from detectors.evaluation.cocotools import coco_ground_truth
    from detectors.evaluation.evaluate import evaluate_coco

    gt, dets = synthetic_detections(num_images, seed)
    out: Dict[str, object] = {"images": num_images, "detections": len(dets)}
    results = {}
    for _ in range(repeats):
        for backend in ("pycocotools", "faster"):
            results[backend], t = measured(evaluate_coco, coco_ground_truth(gt), dets, None, None, backend)
            out.setdefault(f"{backend}_s", []).append(t["wall"])
    a, b = results["pycocotools"], results["faster"]
    diffs = [abs((a["metrics"][k] or 0.0) - (b["metrics"][k] or 0.0)) for k in a["metrics"]]
    diffs += [abs((a["per_class_ap"][k] or 0.0) - (b["per_class_ap"][k] or 0.0)) for k in a["per_class_ap"]]
    for iou in ("iou50", "iou75"):
        diffs += [float(np.max(np.abs(np.subtract(a["pr_curves"][iou][k], b["pr_curves"][iou][k]))))
                  for k in a["pr_curves"][iou]]
    out["max_abs_difference"] = max(diffs)
    out["same_metrics"] = max(diffs) <= 1e-6  # the bar; seen: differences in the last bits (<= 3e-16)
    return out


def worker_memory(paths: Optional[dict] = None, trial_dir: str = "/tmp/detbench-bench-memory") -> Dict[str, object]:
    """Resident memory (MiB) of this process as a Ray worker loads what a trial needs, then after one tiny
    trial; with the heaviest modules loaded before any of ours. Call it inside a Ray task."""
    import sys

    steps = {"worker start": _rss_mb()}
    before = set(sys.modules)
    import ray.tune  # noqa: F401  (what the trainable imports first)

    steps["+ ray.tune"] = _rss_mb()
    import torch  # noqa: F401

    steps["+ torch"] = _rss_mb()
    import torchvision  # noqa: F401  (its ops import torch._dynamo)

    steps["+ torchvision"] = _rss_mb()
    import detectors.train  # noqa: F401

    steps["+ detectors"] = _rss_mb()
    loaded = sorted({m.split(".")[0] for m in set(sys.modules) - before})
    if paths is not None:
        from detectors.train.run import run_trial
        from detectors.train.trial import make_trial

        trial = make_trial(paths, trial_dir, train={"epochs": 1, "max_steps": 10},
                           evaluation={"speed": {"latency_images": 5, "warmup": 1}})
        run_trial(trial)
        steps["after a tiny trial"] = _rss_mb()
    return {"steps": steps, "modules_loaded": loaded, "torch_dynamo": "torch._dynamo" in sys.modules}


def median_spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "spread": max(values) - min(values), "n": len(values)}
