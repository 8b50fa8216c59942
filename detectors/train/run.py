"""One trial, start to finish: used by Ray Tune and by hand.

    python -m detectors.train trial.json [--resume CHECKPOINT_DIR]

``run_trial(trial, report)`` parses the plain trial dict (docs/architecture.md)
into its typed config once (``detectors.config.TrialConfig``), builds the
detector it describes (``detectors.build``), trains it through its
phases (``detectors.train.loop``, ``detectors.train.phases``), evaluates it with
pycocotools, measures its speed, and hands metrics and checkpoint directories
to ``report(metrics, ckpt_dir)``. A checkpoint after every epoch
(``detectors.train.checkpoint``) lets a resumed run match an uninterrupted one.
When the driver runs the isolated speed phase (the trial dict's ``speed_phase``;
``detectors.evaluation.speed_phase``), a trial reports only what a shared machine does not
distort (params, FLOPs, its peak memory) and its own training img/s; latency and
throughput come from the phase.
Where it runs (device, rank) is its ``runtime`` (``detectors.train.runtime``).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
from typing import List, Mapping, Optional, Union

import numpy as np
import torch

from detectors.build import build_detector, trial_phases
from detectors.config import TrialConfig
from detectors.train.checkpoint import load_checkpoint
from detectors.data.coco import CocoDetection
from detectors.data.resolve import ensure_dataset
from detectors.evaluation.diagnostics import classification_loss_diagnostics, score_iou_diagnostics
from detectors.train.loop import NonFiniteLossError, Report, fit
from detectors.train.runtime import LocalRuntime
from detectors.train.precision import prepare_memory_format
from detectors.evaluation.speed import measure_speed, size_figures
from detectors.evaluation.speed_phase import speed_settings

__all__ = ["run_trial", "finish", "load_checkpoint", "NonFiniteLossError", "main"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_datasets(cfg: TrialConfig):
    """(train, val) ``CocoDetection`` sets of the trial (a synthetic set is generated if missing)."""
    paths = ensure_dataset(cfg.dataset)
    train_ds = CocoDetection(paths["train_images"], paths["train_annotations"], hflip_prob=cfg.train.hflip_prob)
    return train_ds, CocoDetection(paths["val_images"], paths["val_annotations"])


def run_trial(trial: Union[Mapping, TrialConfig], report: Optional[Report] = None, resume_from: Optional[str] = None,
              runtime=None) -> dict:
    """Train, evaluate and time one trial. Returns the final metrics dict.

    ``trial``: the plain trial dict (or its parsed :class:`TrialConfig`).
    ``report(metrics, checkpoint_dir)`` is called after every epoch (and once more
    at the end with the final metrics and ``final=1``; "done" is Tune's own key).
    ``resume_from`` is a checkpoint directory written by an earlier call.
    """
    cfg = TrialConfig.from_dict(trial)
    report = report or (lambda metrics, ckpt: None)
    torch.set_num_threads(max(1, cfg.num_threads))
    seed_everything(cfg.seed)
    runtime = runtime or LocalRuntime.for_trial(cfg)
    os.makedirs(cfg.trial_dir, exist_ok=True)
    train_ds, val_ds = load_datasets(cfg)
    model = runtime.prepare_model(build_detector(cfg, len(train_ds.cat_ids), train_ds.class_counts))
    model = prepare_memory_format(model, cfg.train.channels_last)
    if hasattr(model, "attach_datasets"):  # per-image inputs computed once and cached (selective search)
        model.attach_datasets([train_ds, val_ds])
    state = load_checkpoint(resume_from) if resume_from else None
    result = fit(model, train_ds, val_ds, cfg, trial_phases(cfg), runtime, report, state)
    if not runtime.is_main:
        return {}
    return finish(cfg, model, val_ds, result, runtime.device, report)


def finish(cfg: TrialConfig, model, val_ds, result: dict, device, report: Report) -> dict:
    """Speed figures, diagnostics, the final artifacts and the last report."""
    ev = result["last_eval"]
    if hasattr(model, "end_training"):  # parts only training needed (alternating's step-1 backbone) go
        model.end_training()
    speed_cfg, precision = cfg.eval.speed, cfg.train.precision
    if not speed_cfg.enabled:
        speed = {}
    elif cfg.speed_phase:  # latency and throughput: measured alone by the driver's speed phase
        speed = size_figures(model, val_ds, device, precision)
    else:
        speed = measure_speed(model, val_ds, device, precision=precision, **speed_settings(speed_cfg))
    speed["train_img_s"] = result["train_img_s"]
    diagnostics = None
    batch = cfg.train.batch_size
    if hasattr(model, "classification_terms"):
        diagnostics = classification_loss_diagnostics(model, val_ds, batch, device)
        diagnostics.update(loss=cfg.loss.name if cfg.loss else None,
                           params=dict(cfg.loss.params) if cfg.loss else {})
    if hasattr(model, "score_iou_pairs"):  # quality-aware heads: does the score track localisation?
        diagnostics = dict(diagnostics or {}, score_iou=score_iou_diagnostics(model, val_ds, batch, device))
    final_dir = os.path.join(cfg.trial_dir, "final")
    os.makedirs(final_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(final_dir, "model.pt"))
    _write_json(os.path.join(final_dir, "detections.json"), ev["detections"])
    _write_json(os.path.join(final_dir, "eval.json"), {k: v for k, v in ev.items() if k != "detections"})
    _write_json(os.path.join(final_dir, "speed.json"), speed)
    if diagnostics is not None:
        _write_json(os.path.join(final_dir, "diagnostics.json"), diagnostics)
    final = {k: v for k, v in ev["metrics"].items() if v is not None}
    final.update({f"speed/{k}": v for k, v in speed.items()})
    phases = trial_phases(cfg)
    final["train/time_s"] = sum(result["phase_times"])  # training wall time, evaluations excluded
    if len(phases) > 1:  # wall time of each phase's epochs (training only)
        final.update({f"train/time_s/{p.name}": t for p, t in zip(phases, result["phase_times"])})
    final.update(epoch=result["epoch"], step=result["step"], final=1)
    report(final, final_dir)
    return final


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m detectors.train",
                                 description="Run one trial from a trial JSON file, without Ray.")
    ap.add_argument("trial", help="trial dict as JSON (see docs/architecture.md)")
    ap.add_argument("--resume", help="checkpoint directory to resume from")
    args = ap.parse_args(argv)
    with open(args.trial) as f:
        trial = json.load(f)

    def printer(metrics, ckpt):
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        print(json.dumps(shown), flush=True)

    run_trial(trial, printer, args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
