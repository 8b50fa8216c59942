"""The epoch loop over a trial's phases (see ``detectors.train.phases``).

``fit`` trains every phase from where a checkpoint left off: per phase it sets
what trains, builds a fresh optimizer and schedule, runs its epochs, and after
each epoch evaluates (every epoch, or the phase's last), checkpoints and
reports. Loss weights are applied here and only here: models return unweighted
losses, and the total is the weighted sum of the losses the phase counts.
Steps and epochs are global across phases; each report carries the phase index.
Where the steps run (one process, or one of several DDP workers) is the
runtime's business (``detectors.train.runtime``): it wraps each phase's objective,
shards the batches and sums the logged figures over workers.
``train.precision`` (``detectors.train.precision``) runs the forward under autocast and
scales fp16 gradients; the scaler's state is checkpointed with the optimizer's.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from detectors.build import default_loss_weights
from detectors.train.checkpoint import save_checkpoint, set_rng_state
from detectors.config import PhaseConfig, TrialConfig
from detectors.data.coco import CocoDetection, collate
from detectors.evaluation.evaluate import evaluate_model
from detectors.train.phases import (apply_phase, build_optimizer, counts, freeze_norm_statistics, make_scheduler,
                              phase_steps)
from detectors.train.precision import autocast, grad_scaler

Report = Callable[[Dict[str, float], Optional[str]], None]


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or inf; the message names the step."""


class PhaseObjective(torch.nn.Module):
    """One phase's training objective: ``(total, raw)`` for a batch.

    ``total`` is the weighted sum of the losses the phase counts (the only place loss
    weights exist: models return unweighted losses); ``raw`` the model's losses,
    detached, for logging. A module so that a multi-worker runtime can wrap it whole:
    DDP then follows the gradient of ``total`` only.
    """

    def __init__(self, model: torch.nn.Module, weights: Dict[str, float], phase: PhaseConfig) -> None:
        super().__init__()
        self.model, self.weights, self.phase = model, weights, phase

    def forward(self, images, targets):
        raw = self.model(images, targets)
        # summed in float32 whatever the autocast precision of the losses
        total = sum(self.weights.get(k.removeprefix("loss_"), 1.0) * v.float() for k, v in raw.items()
                    if counts(k, self.phase))
        return total, {k: v.detach() for k, v in raw.items()}


@dataclass
class Progress:
    """Where training stands (global epoch and optimiser step) and what it has timed so far."""

    epoch: int = -1
    step: int = 0
    train_time: float = 0.0
    train_images: int = 0
    phase_times: List[float] = field(default_factory=list)

    @classmethod
    def resume(cls, state: Optional[dict], num_phases: int) -> "Progress":
        if state is None:
            return cls(phase_times=[0.0] * num_phases)
        extra = state["extra"]
        return cls(state["epoch"], state["step"], extra["train_time"], extra["train_images"],
                   list(extra.get("phase_times", [0.0] * num_phases)))  # (older checkpoints lack it)

    @property
    def img_s(self) -> float:
        return self.train_images / max(self.train_time, 1e-9)


@dataclass
class PhaseRun:
    """One phase as it runs: its optimizer, schedule and objective, and its own step count."""

    index: int
    phase: PhaseConfig
    optimizer: torch.optim.Optimizer
    scheduler: Any
    objective: torch.nn.Module
    total_steps: int
    first_epoch: int      # global index of the phase's epoch 0
    of: int               # the trial's number of phases
    local_start: int = 0  # the phase's first epoch to run (> 0 when resumed mid-phase)
    step: int = 0         # optimiser steps taken in this phase


def _start(state: Optional[dict], phases: List[PhaseConfig], steps_per_epoch: int, max_steps: Optional[int]) -> dict:
    """Where to begin: phase index, its first epoch, and whether the phase is resumed mid-way."""
    if state is None:
        return {"phase": 0, "phase_epoch": 0, "mid_phase": False}
    done = phases[state["phase"]]
    finished = (state["phase_epoch"] >= done.epochs - 1
                or state["phase_step"] >= phase_steps(done, steps_per_epoch, max_steps))
    if finished:
        return {"phase": state["phase"] + 1, "phase_epoch": 0, "mid_phase": False}
    return {"phase": state["phase"], "phase_epoch": state["phase_epoch"] + 1, "mid_phase": True}


def fit(model: torch.nn.Module, train_ds: CocoDetection, val_ds: CocoDetection, cfg: TrialConfig,
        phases: List[PhaseConfig], runtime, report: Report, state: Optional[dict] = None) -> dict:
    """Train ``model`` through ``phases``; ``state`` is a loaded checkpoint to resume from.

    Returns ``last_eval`` (the latest evaluation, or None), ``epoch`` and ``step``
    (global, last finished), ``train_img_s`` and ``phase_times`` (seconds per phase).
    """
    steps_per_epoch = math.ceil(len(train_ds) / cfg.train.batch_size)
    # The detector's declared paper weights (YOLOv1's lambdas), then the study's on top.
    weights = {**default_loss_weights(cfg.detector.name), **cfg.train.loss_weights}
    scaler = grad_scaler(runtime.device, cfg.train.precision)
    if state is not None:
        model.load_state_dict(state["model"])
    progress = Progress.resume(state, len(phases))
    start = _start(state, phases, steps_per_epoch, cfg.train.max_steps)
    last_eval: Optional[dict] = None
    for pi in range(start["phase"], len(phases)):
        run = _begin_phase(model, cfg, phases, pi, steps_per_epoch, weights, runtime, scaler,
                           state if pi == start["phase"] else None, start)
        for local in range(run.local_start, run.phase.epochs):
            if run.step >= run.total_steps:
                break
            progress.epoch = run.first_epoch + local
            sums, batches = _train_epoch(model, train_ds, cfg, run, runtime, scaler, progress)
            metrics = _epoch_metrics(sums, batches, run, runtime, progress)
            is_last = local == run.phase.epochs - 1 or run.step >= run.total_steps
            if runtime.is_main and (cfg.train.eval_every_epoch or is_last):
                last_eval = _evaluate(model, val_ds, cfg, runtime)
                metrics.update({f"val/{k}": v for k, v in last_eval["metrics"].items() if v is not None})
            if runtime.is_main:
                report(metrics, _checkpoint(model, cfg, run, local, progress, scaler))
    if last_eval is None and runtime.is_main:  # resumed after the last epoch, or zero steps
        last_eval = _evaluate(model, val_ds, cfg, runtime)
    return {"last_eval": last_eval, "epoch": progress.epoch, "step": progress.step,
            "train_img_s": progress.img_s, "phase_times": progress.phase_times}


def _begin_phase(model, cfg: TrialConfig, phases: List[PhaseConfig], pi: int, steps_per_epoch: int,
                 weights: Dict[str, float], runtime, scaler, state: Optional[dict], start: dict) -> PhaseRun:
    """Set phase ``pi`` up: what trains, a fresh optimizer and schedule over its own steps, the
    model's own set-up; ``state`` (a checkpoint inside this phase, or None) restores where it was."""
    phase = phases[pi]
    optimizer = build_optimizer(apply_phase(model, phase), phase)
    total = phase_steps(phase, steps_per_epoch, cfg.train.max_steps)
    scheduler = make_scheduler(optimizer, total, phase)
    resumed = state is not None and start["mid_phase"]
    if hasattr(model, "begin_phase"):
        # A model's own set-up of a phase (copy one part's weights into another, switch what
        # feeds a head...). ``resumed``: the weights already hold the phase's progress.
        model.begin_phase(phase, resumed=resumed)
    local_start, phase_step = 0, 0
    if state is not None:
        if resumed:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if state["extra"].get("scaler"):  # (fp16 only)
                scaler.load_state_dict(state["extra"]["scaler"])
            local_start, phase_step = start["phase_epoch"], state["phase_step"]
        set_rng_state(state["rng"])  # after the phase's set-up, as an uninterrupted run
    objective = runtime.wrap(PhaseObjective(model, weights, phase))  # after the set-up: what trains is known
    return PhaseRun(pi, phase, optimizer, scheduler, objective, total, sum(p.epochs for p in phases[:pi]),
                    len(phases), local_start, phase_step)


def _train_epoch(model, train_ds, cfg: TrialConfig, run: PhaseRun, runtime, scaler,
                 progress: Progress) -> Tuple[Dict[str, float], int]:
    """One epoch of the phase (or its ``fit``); returns the summed logged figures and the batch count."""
    device, non_blocking = runtime.device, getattr(runtime, "non_blocking", False)
    model.train()
    freeze_norm_statistics(model)
    # A fresh generator per epoch: the order depends only on (seed, epoch), so a
    # run resumed at an epoch boundary sees the same batches.
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + progress.epoch)
    loader = runtime.train_loader(train_ds, cfg.train.batch_size, gen, collate)
    sums: Dict[str, float] = {}
    n_batches, n_images, t0 = 0, 0, time.perf_counter()
    if run.phase.kind == "fit":  # the model fits this phase itself: one "step", no minibatches
        sums = {f"train/{k}": v for k, v in model.fit_phase(run.phase, train_ds, device).items()}
        loader = ()
        progress.step += 1
        run.step += 1
    for images, targets in loader:
        if run.step >= run.total_steps:
            break
        images = [img.to(device, non_blocking=non_blocking) for img in images]
        targets = [{k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                    for k, v in t.items()} for t in targets]
        loss, raw = _step(model, images, targets, cfg, run, device, scaler, progress)
        n_batches += 1
        n_images += len(images)
        # The model's own figures of the step (a dense detector's foreground share of its anchors):
        # not losses, so they travel beside them; averaged over the epoch's batches the same way.
        figures = {k: v.item() for k, v in raw.items()} | getattr(model, "train_figures", {})
        for k, v in figures.items():
            sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + v
        sums["train/loss"] = sums.get("train/loss", 0.0) + loss.item()
    elapsed = time.perf_counter() - t0
    progress.train_time += elapsed
    progress.phase_times[run.index] += elapsed
    # Over all workers: each step's loss is the mean of the workers' (the global
    # batch's loss), images add up. One worker: the figures as they are.
    totals = runtime.sum_over_workers({**sums, "batches": n_batches, "images": n_images})
    n_batches = totals.pop("batches")
    progress.train_images += int(totals.pop("images"))
    return totals, n_batches


def _step(model, images, targets, cfg: TrialConfig, run: PhaseRun, device, scaler, progress: Progress):
    """One optimiser step of the phase's objective; returns the weighted loss and the raw losses."""
    with autocast(device, cfg.train.precision):
        loss, raw = run.objective(images, targets)
    if not torch.isfinite(loss):
        parts = ", ".join(f"{k}={v.item():.4g}" for k, v in raw.items())
        where = f"epoch {progress.epoch}" + (f", phase '{run.phase.name}'" if run.of > 1 else "")
        raise NonFiniteLossError(f"{cfg.trial_key}: non-finite loss at step {progress.step} ({where}): {parts}")
    run.optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.train.grad_clip:
        scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(run.optimizer)  # skipped by an fp16 scaler when a gradient overflowed
    scaler.update()
    run.scheduler.step()
    progress.step += 1
    run.step += 1
    return loss, raw


def _epoch_metrics(sums: Dict[str, float], batches: float, run: PhaseRun, runtime,
                   progress: Progress) -> Dict[str, float]:
    metrics = {k: v / max(1, batches) for k, v in sums.items()}
    metrics.update(epoch=progress.epoch, step=progress.step, lr=run.optimizer.param_groups[0]["lr"],
                   **{"train/img_s": progress.img_s}, phase=run.index)
    return metrics


def _evaluate(model, val_ds, cfg: TrialConfig, runtime) -> dict:
    with autocast(runtime.device, cfg.train.precision):
        return evaluate_model(model, val_ds, cfg.train.batch_size, runtime.device)


def _checkpoint(model, cfg: TrialConfig, run: PhaseRun, local: int, progress: Progress, scaler) -> str:
    """The epoch's checkpoint (rank 0): weights, optimizer, schedule, position and timings."""
    position = {"phase": run.index, "phase_epoch": local, "phase_step": run.step, "epoch": progress.epoch,
                "step": progress.step}
    extra = {"train_time": progress.train_time, "train_images": progress.train_images,
             "phase_times": progress.phase_times, **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})}
    return save_checkpoint(os.path.join(cfg.trial_dir, "checkpoints", f"epoch_{progress.epoch:03d}"), model,
                           run.optimizer, run.scheduler, position, extra)
