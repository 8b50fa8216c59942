"""The epoch loop over a trial's phases (see ``detectors.phases``).

``fit`` trains every phase from where a checkpoint left off: per phase it sets
what trains, builds a fresh optimizer and schedule, runs its epochs, and after
each epoch evaluates (every epoch, or the phase's last), checkpoints and
reports. Loss weights are applied here and only here: models return unweighted
losses, and the total is the weighted sum of the losses the phase counts.
Steps and epochs are global across phases; each report carries the phase index.
Where the steps run (one process, or one of several DDP workers) is the
runtime's business (``detectors.runtime``): it wraps each phase's objective,
shards the batches and sums the logged figures over workers.
``train.precision`` (``detectors.precision``) runs the forward under autocast and
scales fp16 gradients; the scaler's state is checkpointed with the optimizer's.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional

import torch

from detectors.build import default_loss_weights
from detectors.checkpoint import save_checkpoint, set_rng_state
from detectors.data.coco import CocoDetection, collate
from detectors.evaluate import evaluate_model
from detectors.phases import (apply_phase, build_optimizer, counts, freeze_norm_statistics, make_scheduler,
                              phase_steps)
from detectors.precision import autocast, grad_scaler

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

    def __init__(self, model: torch.nn.Module, weights: Dict[str, float], phase: dict) -> None:
        super().__init__()
        self.model, self.weights, self.phase = model, weights, phase

    def forward(self, images, targets):
        raw = self.model(images, targets)
        # summed in float32 whatever the autocast precision of the losses
        total = sum(self.weights.get(k.removeprefix("loss_"), 1.0) * v.float() for k, v in raw.items()
                    if counts(k, self.phase))
        return total, {k: v.detach() for k, v in raw.items()}


def _start(state: Optional[dict], phases: List[dict], steps_per_epoch: int, max_steps: Optional[int]) -> dict:
    """Where to begin: phase index, its first epoch, and whether the phase is resumed mid-way."""
    if state is None:
        return {"phase": 0, "phase_epoch": 0, "mid_phase": False}
    done = phases[state["phase"]]
    finished = (state["phase_epoch"] >= done["epochs"] - 1
                or state["phase_step"] >= phase_steps(done, steps_per_epoch, max_steps))
    if finished:
        return {"phase": state["phase"] + 1, "phase_epoch": 0, "mid_phase": False}
    return {"phase": state["phase"], "phase_epoch": state["phase_epoch"] + 1, "mid_phase": True}


def fit(model: torch.nn.Module, train_ds: CocoDetection, val_ds: CocoDetection, trial: dict, phases: List[dict],
        runtime, report: Report, state: Optional[dict] = None) -> dict:
    """Train ``model`` through ``phases``; ``state`` is a loaded checkpoint to resume from.

    Returns ``last_eval`` (the latest evaluation, or None), ``epoch`` and ``step``
    (global, last finished), ``train_img_s`` and ``phase_times`` (seconds per phase).
    """
    cfg = trial["train"]
    device = runtime.device
    steps_per_epoch = math.ceil(len(train_ds) / cfg["batch_size"])
    # The detector's declared paper weights (YOLOv1's lambdas), then the study's on top.
    weights = {**default_loss_weights(trial["detector"]["name"]), **cfg.get("loss_weights", {})}
    precision = cfg.get("precision", "fp32")
    scaler = grad_scaler(device, precision)
    non_blocking = getattr(runtime, "non_blocking", False)
    epoch, step, train_time, train_images = -1, 0, 0.0, 0
    phase_times = [0.0] * len(phases)
    if state is not None:
        model.load_state_dict(state["model"])
        epoch, step = state["epoch"], state["step"]
        train_time, train_images = state["extra"]["train_time"], state["extra"]["train_images"]
        phase_times = list(state["extra"].get("phase_times", phase_times))
    start = _start(state, phases, steps_per_epoch, cfg.get("max_steps"))
    last_eval: Optional[dict] = None
    for pi in range(start["phase"], len(phases)):
        phase = phases[pi]
        first_epoch = sum(p["epochs"] for p in phases[:pi])  # global index of the phase's epoch 0
        optimizer = build_optimizer(apply_phase(model, phase), phase)
        total = phase_steps(phase, steps_per_epoch, cfg.get("max_steps"))
        scheduler = make_scheduler(optimizer, total, phase)
        local_start, phase_step = 0, 0
        resumed = pi == start["phase"] and state is not None and start["mid_phase"]
        if hasattr(model, "begin_phase"):
            # A model's own set-up of a phase (copy one part's weights into another, switch what
            # feeds a head...). ``resumed``: the weights already hold the phase's progress.
            model.begin_phase(phase, resumed=resumed)
        if pi == start["phase"] and state is not None:
            if start["mid_phase"]:
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                if state["extra"].get("scaler"):
                    scaler.load_state_dict(state["extra"]["scaler"])
                local_start, phase_step = start["phase_epoch"], state["phase_step"]
            set_rng_state(state["rng"])  # after the phase's set-up, as an uninterrupted run
        objective = runtime.wrap(PhaseObjective(model, weights, phase))  # after the set-up: what trains is known
        for local in range(local_start, phase["epochs"]):
            if phase_step >= total:
                break
            epoch = first_epoch + local
            model.train()
            freeze_norm_statistics(model)
            # A fresh generator per epoch: the order depends only on (seed, epoch), so a
            # run resumed at an epoch boundary sees the same batches.
            gen = torch.Generator().manual_seed(int(trial["seed"]) * 100003 + epoch)
            loader = runtime.train_loader(train_ds, cfg["batch_size"], gen, collate)
            sums: Dict[str, float] = {}
            n_batches, n_images, t0 = 0, 0, time.perf_counter()
            if phase.get("kind") == "fit":  # the model fits this phase itself: one "step", no minibatches
                sums = {f"train/{k}": v for k, v in model.fit_phase(phase, train_ds, device).items()}
                loader, step, phase_step = (), step + 1, phase_step + 1
            for images, targets in loader:
                if phase_step >= total:
                    break
                images = [img.to(device, non_blocking=non_blocking) for img in images]
                targets = [{k: v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v
                            for k, v in t.items()} for t in targets]
                with autocast(device, precision):
                    loss, raw = objective(images, targets)
                if not torch.isfinite(loss):
                    parts = ", ".join(f"{k}={v.item():.4g}" for k, v in raw.items())
                    where = f"epoch {epoch}" + (f", phase '{phase['name']}'" if len(phases) > 1 else "")
                    raise NonFiniteLossError(
                        f"{trial.get('trial_key', 'trial')}: non-finite loss at step {step} ({where}): {parts}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.get("grad_clip"):
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                scaler.step(optimizer)  # skipped by an fp16 scaler when a gradient overflowed
                scaler.update()
                scheduler.step()
                step += 1
                phase_step += 1
                n_batches += 1
                n_images += len(images)
                for k, v in raw.items():
                    sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + v.item()
                sums["train/loss"] = sums.get("train/loss", 0.0) + loss.item()
            elapsed = time.perf_counter() - t0
            train_time += elapsed
            phase_times[pi] += elapsed
            # Over all workers: each step's loss is the mean of the workers' (the global
            # batch's loss), images add up. One worker: the figures as they are.
            totals = runtime.sum_over_workers({**sums, "batches": n_batches, "images": n_images})
            n_batches, n_images = totals.pop("batches"), int(totals.pop("images"))
            train_images += n_images

            metrics = {k: v / max(1, n_batches) for k, v in totals.items()}
            metrics.update(epoch=epoch, step=step, lr=optimizer.param_groups[0]["lr"],
                           **{"train/img_s": train_images / max(train_time, 1e-9)}, phase=pi)
            is_last = local == phase["epochs"] - 1 or phase_step >= total
            if runtime.is_main and (cfg.get("eval_every_epoch", True) or is_last):
                with autocast(device, precision):
                    last_eval = evaluate_model(model, val_ds, cfg["batch_size"], device)
                metrics.update({f"val/{k}": v for k, v in last_eval["metrics"].items() if v is not None})
            ckpt = None
            if runtime.is_main:
                position = {"phase": pi, "phase_epoch": local, "phase_step": phase_step, "epoch": epoch, "step": step}
                ckpt = save_checkpoint(os.path.join(trial["trial_dir"], "checkpoints", f"epoch_{epoch:03d}"), model,
                                       optimizer, scheduler, position,
                                       {"train_time": train_time, "train_images": train_images,
                                        "phase_times": phase_times,
                                        **({"scaler": scaler.state_dict()} if scaler.is_enabled() else {})})
                report(metrics, ckpt)
    if last_eval is None and runtime.is_main:  # resumed after the last epoch, or zero steps
        with autocast(device, precision):
            last_eval = evaluate_model(model, val_ds, cfg["batch_size"], device)
    return {"last_eval": last_eval, "epoch": epoch, "step": step,
            "train_img_s": train_images / max(train_time, 1e-9), "phase_times": phase_times}
