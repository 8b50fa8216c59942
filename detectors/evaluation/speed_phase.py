"""The isolated speed phase: one measurement per speed configuration, alone on a node.

Trials measured side by side share the machine, so their own timings move with
their neighbours (a loss sweep's variants are one network, yet their latencies
differed by noise). After training, the driver (``platform.runner.speed_phase``) groups
a study's trials by :func:`speed_key` (what decides speed: the detector and its
parameters, scale, the val images, batch size, threads, device, precision,
memory format, post-processing settings and the measurement's own settings;
not the loss, the seed or the learning rate) and runs :func:`measure_alone` once
per group as a Ray task that asks for every CPU of a node, so Ray places nothing
else there while it runs. It loads the trained weights of one trial of the group
(speed hardly depends on the weights, but the number of boxes that pass the score
threshold does) and measures, after warm-up and with repeats:

- inference: latency p50 / p95 at batch 1 and throughput at the speed batch
  (``detectors.evaluation.speed.measure_speed``);
- training: images/s of the trial's optimiser steps at its batch size,
  ``repeats`` times ``train_steps`` steps after two warm-up steps;
- the hardware: CPU model and cores, GPU, torch and CUDA versions, the host,
  and the 1-minute load average before and after (a busy node shows there).

Every trial of the group shares the figures. Nothing here imports torch at
module level, so the driver can compute keys cheaply.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from typing import Any, Dict, Mapping, Optional, Union

from detectors.config import SpeedConfig, TrialConfig

__all__ = ["SPEED_SETTINGS", "speed_settings", "speed_key", "key_digest", "key_label", "uses_speed_phase", "hardware",
           "measure_alone", "TRAIN_WARMUP_STEPS"]

# The eval.speed settings that define the measurement (all but ``enabled`` / ``isolated``).
SPEED_SETTINGS = ("latency_images", "warmup", "throughput_batch", "throughput_batches", "repeats", "train_steps")
TRAIN_WARMUP_STEPS = 2


def speed_settings(speed: SpeedConfig) -> Dict[str, int]:
    """The measurement's settings (``SPEED_SETTINGS``) as keyword arguments."""
    return {k: getattr(speed, k) for k in SPEED_SETTINGS}


def uses_speed_phase(trial: Union[Mapping[str, Any], TrialConfig]) -> bool:
    """Whether the trial's speed figures come from the isolated phase (``eval.speed``
    ``enabled`` and ``isolated``, both true by default)."""
    speed = TrialConfig.from_dict(trial).eval.speed
    return speed.enabled and speed.isolated


def speed_key(trial: Union[Mapping[str, Any], TrialConfig], code_version: str = "") -> Dict[str, Any]:
    """What decides a trial's speed figures, as a plain dict (trials with equal keys share one)."""
    cfg = TrialConfig.from_dict(trial)
    det, train, ev, ds = cfg.detector, cfg.train, cfg.eval, cfg.dataset
    return {
        "detector": det.name, "scale": det.scale, "params": dict(det.params),
        "dataset": ds.digest or ds.val_annotations,
        "batch_size": train.batch_size, "precision": train.precision, "channels_last": train.channels_last,
        "threads": cfg.num_threads, "device": cfg.device_type,
        "postprocess": {"score_thresh": ev.score_thresh, "nms_iou": ev.nms_iou, "max_dets": ev.max_dets},
        "settings": speed_settings(ev.speed),
        "code": code_version,
    }


def key_digest(key: Dict[str, Any]) -> str:
    """sha256 of the key's canonical JSON: the speed figure's id in the results store."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def key_label(key: Dict[str, Any]) -> str:
    """"retinanet tiny, 1 thread, cpu, fp32" (+ non-default detector params)."""
    params = ", ".join(f"{k}={v}" for k, v in sorted((key.get("params") or {}).items()))
    threads = key.get("threads", 1)
    parts = [f"{key['detector']} {key.get('scale') or ''}".strip() + (f" ({params})" if params else ""),
             f"{threads} thread{'s' if threads != 1 else ''}", key.get("device", "cpu"), key.get("precision", "fp32")]
    if key.get("channels_last"):
        parts.append("channels_last")
    return ", ".join(parts)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return os.uname().machine


def hardware(device: str = "cpu") -> Dict[str, Any]:
    """The machine a figure was measured on."""
    import torch

    out: Dict[str, Any] = {"host": os.uname().nodename, "cpu": _cpu_model(), "cpu_cores": os.cpu_count(),
                           "torch": torch.__version__, "cuda": torch.version.cuda, "gpu": None,
                           "python": sys.version.split()[0]}
    if hasattr(os, "sched_getaffinity"):
        out["cpus_usable"] = len(os.sched_getaffinity(0))
    if device == "cuda" and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _train_speed(model, train_ds, cfg: TrialConfig, device, steps: int, repeats: int) -> Dict[str, float]:
    """Images/s of the trial's training step: its first phase set up as the trial sets it up (what
    trains, the model's own set-up of the phase, the loss weights, precision), on a model built
    afresh (a trained model may have dropped what only training needs)."""
    import torch

    from detectors.build import default_loss_weights, trial_phases
    from detectors.data.coco import collate
    from detectors.train.loop import PhaseObjective
    from detectors.train.phases import apply_phase, build_optimizer, freeze_norm_statistics
    from detectors.train.precision import autocast, grad_scaler
    from detectors.evaluation.speed import median_and_spread, timed_ms

    phase = trial_phases(cfg)[0]
    precision = cfg.train.precision
    optimizer = build_optimizer(apply_phase(model, phase), phase)
    if hasattr(model, "begin_phase"):  # e.g. alternating training's step 1: the RPN on its own backbone
        model.begin_phase(phase, resumed=False)
    scaler = grad_scaler(device, precision)
    objective = PhaseObjective(model, {**default_loss_weights(cfg.detector.name), **cfg.train.loss_weights}, phase)
    bs = cfg.train.batch_size
    n = len(train_ds)
    batches = [collate([train_ds[(i * bs + j) % n] for j in range(bs)]) for i in range(max(1, steps))]
    batches = [([img.to(device) for img in imgs], [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                                                    for t in tgts]) for imgs, tgts in batches]
    model.train()
    freeze_norm_statistics(model)

    def step(images, targets):
        with autocast(device, precision):
            loss, _ = objective(images, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for i in range(TRAIN_WARMUP_STEPS):
        step(*batches[i % len(batches)])
    rates = []
    for _ in range(max(1, repeats)):
        ms = timed_ms(lambda: [step(*b) for b in batches], device)
        rates.append(bs * len(batches) / (ms / 1000.0))
    out = median_and_spread(rates)
    return {"train_img_s": out["median"], "train_img_s_spread": out["spread"]}


def measure_alone(trial: Dict[str, Any], weights: Optional[str] = None) -> Dict[str, Any]:
    """Measure one trial's speed configuration (in a Ray task that holds a whole node).

    Args:
        trial: the trial dict (``docs/architecture.md``) of one trial of the group.
        weights: its trained ``model.pt``; None (or missing) measures the freshly built model.
    Returns:
        ``{"figures": {...}, "hardware": {...}, "method": {...}}``: figures as
        ``detectors.evaluation.speed.measure_speed`` plus ``train_img_s`` and its spread.
    """
    import torch

    from detectors.build import build_detector
    from detectors.train.precision import prepare_memory_format
    from detectors.train.runtime import LocalRuntime
    from detectors.evaluation.speed import measure_speed, peak_rss_mb
    from detectors.train.run import load_datasets, seed_everything

    cfg = TrialConfig.from_dict(trial)
    threads = max(1, cfg.num_threads)
    torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    device = LocalRuntime.for_trial(cfg).device
    load_before = os.getloadavg()[0]
    t0 = time.time()
    train_ds, val_ds = load_datasets(cfg)

    def build():
        model = build_detector(cfg, len(train_ds.cat_ids), train_ds.class_counts)
        if hasattr(model, "attach_datasets"):  # the trial's cached proposals: training steps read them
            model.attach_datasets([train_ds, val_ds])  # (inference is timed uncached, as a user runs it)
        return model

    model = build()
    if hasattr(model, "end_training"):  # as the trial saved it (parts only training needed are gone)
        model.end_training()
    used_weights = bool(weights and os.path.isfile(weights))
    if used_weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model = prepare_memory_format(model.to(device), cfg.train.channels_last)
    speed, precision = cfg.eval.speed, cfg.train.precision
    figures = measure_speed(model, val_ds, device, precision=precision, **speed_settings(speed))
    del model
    trainee = prepare_memory_format(build().to(device), cfg.train.channels_last)
    figures.update(_train_speed(trainee, train_ds, cfg, device, speed.train_steps, speed.repeats))
    figures["peak_rss_mb"] = peak_rss_mb()  # after training too: the larger of the two
    method = {"timer": "CUDA events after synchronisation" if device.type == "cuda" else "time.perf_counter",
              "warmup_images": speed.warmup, "latency_images": speed.latency_images,
              "throughput": f"{speed.throughput_batches} batches of {speed.throughput_batch}",
              "train": f"{TRAIN_WARMUP_STEPS} warm-up steps, then {speed.train_steps} steps of "
                       f"batch {cfg.train.batch_size}",
              "repeats": speed.repeats, "threads": threads, "precision": precision,
              "weights": "trained" if used_weights else "untrained", "trial_key": cfg.trial_key,
              "seconds": round(time.time() - t0, 1), "load_avg_before": round(load_before, 2),
              "load_avg_after": round(os.getloadavg()[0], 2)}
    return {"figures": figures, "hardware": hardware(device.type), "method": method}
