"""The training loop every trial runs: one function, used by Ray Tune and by hand.

    python -m detectors.train trial.json [--resume CHECKPOINT_DIR]

``run_trial(trial, report)`` trains the detector described by a plain trial dict
(see docs/architecture.md), evaluates it with pycocotools, measures its speed,
and hands metrics and checkpoint directories to ``report(metrics, ckpt_dir)``.
Loss weights are applied here and only here; raw and weighted losses are both
reported. A checkpoint after every epoch holds model, optimizer, scheduler,
epoch, step and every RNG state, so a resumed run matches an uninterrupted one.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from functools import partial
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from detectors.data.coco import CocoDetection, collate
from detectors.data.resolve import ensure_dataset
from detectors.diagnostics import classification_loss_diagnostics, score_iou_diagnostics
from detectors.evaluate import evaluate_coco, to_coco_results
from detectors.losses import CLS_LOSSES, inverse_frequency_alpha
from detectors.models import MODELS
from detectors.speed import measure_speed

Report = Callable[[Dict[str, float], Optional[str]], None]
STATE_FILE = "state.pt"


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN or inf; the message names the step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(trial: dict, num_classes: int, class_counts: List[int]) -> torch.nn.Module:
    """Map the trial's plain config onto keyword arguments; the model never sees the config."""
    loss_params = dict(trial["loss"].get("params", {}))
    if loss_params.get("alpha") == "inverse_frequency":
        loss_params["alpha"] = inverse_frequency_alpha(class_counts)
    cls_loss = partial(CLS_LOSSES.get(trial["loss"]["name"]), **loss_params)
    det, ev = trial["detector"], trial["eval"]
    return MODELS.build(det["name"], num_classes=num_classes, scale=det.get("scale", "tiny"),
                        cls_loss=cls_loss, score_thresh=ev["score_thresh"], nms_iou=ev["nms_iou"],
                        max_dets=ev["max_dets"], **det.get("params", {}))


def build_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               weight_decay=cfg.get("weight_decay", 1e-4))
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 1e-4))
    raise ValueError(f"unknown optimizer '{cfg['optimizer']}'")


def lr_factor(step: int, total: int, cfg: dict) -> float:
    """Linear warm-up from 0.1% to 100%, then cosine to 0 or steps of ``gamma_lr``."""
    warmup = cfg.get("warmup_iters", 0)
    if step < warmup:
        return 0.001 + (1 - 0.001) * step / warmup
    schedule = cfg.get("schedule", "cosine")
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        passed = sum(step >= m * total for m in cfg.get("milestones", [0.67, 0.89]))
        return cfg.get("gamma_lr", 0.1) ** passed
    return 1.0


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            # numpy's state holds an ndarray; stored as a tensor so weights_only loading accepts it
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def save_checkpoint(path: str, model, optimizer, scheduler, epoch: int, step: int, extra: dict) -> str:
    os.makedirs(path, exist_ok=True)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
             "rng": rng_state(), "extra": extra}
    tmp = os.path.join(path, STATE_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, os.path.join(path, STATE_FILE))  # never a half-written checkpoint
    return path


def load_checkpoint(path: str) -> dict:
    return torch.load(os.path.join(path, STATE_FILE), map_location="cpu", weights_only=True)


@torch.no_grad()
def predict(model, dataset: CocoDetection, batch_size: int, device: torch.device) -> List[dict]:
    """Run eval-mode inference over a dataset; boxes in the dataset images' pixels."""
    model.eval()
    preds = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    for images, targets in loader:
        outputs = model([img.to(device) for img in images])
        for out, tgt in zip(outputs, targets):
            preds.append({"image_id": int(tgt["image_id"]),
                          **{k: v.cpu() for k, v in out.items()}})
    return preds


def evaluate(model, dataset: CocoDetection, batch_size: int, device) -> dict:
    results = to_coco_results(predict(model, dataset, batch_size, device), dataset.cat_ids)
    out = evaluate_coco(dataset.coco, results, class_names=dataset.class_names, cat_ids=dataset.cat_ids)
    out["detections"] = results
    return out


def _device(trial: dict) -> torch.device:
    wants_gpu = trial.get("gpus", 0) > 0
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def run_trial(trial: dict, report: Optional[Report] = None, resume_from: Optional[str] = None) -> dict:
    """Train, evaluate and time one trial. Returns the final metrics dict.

    ``report(metrics, checkpoint_dir)`` is called after every epoch (and once more
    at the end with the final metrics and ``final=1``; "done" is Tune's own key). ``resume_from`` is a
    checkpoint directory written by an earlier call.
    """
    report = report or (lambda metrics, ckpt: None)
    torch.set_num_threads(max(1, int(trial.get("num_threads", 1))))
    seed_everything(int(trial["seed"]))
    device = _device(trial)
    cfg = trial["train"]
    trial_dir = trial["trial_dir"]
    os.makedirs(trial_dir, exist_ok=True)

    paths = ensure_dataset(trial["dataset"])
    train_ds = CocoDetection(paths["train_images"], paths["train_annotations"],
                             hflip_prob=cfg.get("hflip_prob", 0.0))
    val_ds = CocoDetection(paths["val_images"], paths["val_annotations"])
    model = build_model(trial, len(train_ds.cat_ids), train_ds.class_counts).to(device)
    optimizer = build_optimizer(model, cfg)
    steps_per_epoch = math.ceil(len(train_ds) / cfg["batch_size"])
    total_steps = cfg["epochs"] * steps_per_epoch
    if cfg.get("max_steps"):
        total_steps = min(total_steps, cfg["max_steps"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, cfg))

    start_epoch, step, train_time, train_images = 0, 0, 0.0, 0
    if resume_from:
        state = load_checkpoint(resume_from)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        train_time, train_images = state["extra"]["train_time"], state["extra"]["train_images"]
        set_rng_state(state["rng"])

    weights = cfg.get("loss_weights", {})
    last_eval: Optional[dict] = None
    epoch = start_epoch - 1
    for epoch in range(start_epoch, cfg["epochs"]):
        if step >= total_steps:
            break
        model.train()
        # A fresh generator per epoch: the order depends only on (seed, epoch), so a
        # run resumed at an epoch boundary sees the same batches.
        gen = torch.Generator().manual_seed(int(trial["seed"]) * 100003 + epoch)
        loader = DataLoader(train_ds, batch_size=cfg["batch_size"], shuffle=True,
                            generator=gen, collate_fn=collate)
        sums: Dict[str, float] = {}
        n_batches, t0 = 0, time.perf_counter()
        for images, targets in loader:
            if step >= total_steps:
                break
            images = [img.to(device) for img in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            raw = model(images, targets)
            # The only place loss weights exist: models return unweighted losses.
            loss = sum(weights.get(k.removeprefix("loss_"), 1.0) * v for k, v in raw.items())
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in raw.items())
                raise NonFiniteLossError(
                    f"{trial.get('trial_key', 'trial')}: non-finite loss at step {step} "
                    f"(epoch {epoch}): {parts}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.get("grad_clip"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            n_batches += 1
            train_images += len(images)
            for k, v in raw.items():
                sums[f"train/{k}"] = sums.get(f"train/{k}", 0.0) + v.item()
            sums["train/loss"] = sums.get("train/loss", 0.0) + loss.item()
        train_time += time.perf_counter() - t0

        metrics = {k: v / max(1, n_batches) for k, v in sums.items()}
        metrics.update(epoch=epoch, step=step, lr=optimizer.param_groups[0]["lr"],
                       **{"train/img_s": train_images / max(train_time, 1e-9)})
        is_last = epoch == cfg["epochs"] - 1 or step >= total_steps
        if cfg.get("eval_every_epoch", True) or is_last:
            last_eval = evaluate(model, val_ds, cfg["batch_size"], device)
            metrics.update({f"val/{k}": v for k, v in last_eval["metrics"].items() if v is not None})
        ckpt = save_checkpoint(os.path.join(trial_dir, "checkpoints", f"epoch_{epoch:03d}"), model,
                               optimizer, scheduler, epoch, step,
                               {"train_time": train_time, "train_images": train_images})
        report(metrics, ckpt)

    if last_eval is None or epoch < start_epoch:  # resumed after the last epoch, or zero steps
        last_eval = evaluate(model, val_ds, cfg["batch_size"], device)
    return finish(trial, model, val_ds, last_eval, train_images / max(train_time, 1e-9),
                  epoch, step, device, report)


def finish(trial, model, val_ds, ev, train_img_s, epoch, step, device, report) -> dict:
    """Speed figures, then the final artifacts and the last report."""
    speed_cfg = trial["eval"].get("speed", {})
    speed = measure_speed(model, val_ds, device, **speed_cfg) if speed_cfg.get("enabled", True) else {}
    speed["train_img_s"] = train_img_s
    diagnostics = None
    if hasattr(model, "classification_terms"):
        diagnostics = classification_loss_diagnostics(model, val_ds, trial["train"]["batch_size"], device)
        diagnostics.update(loss=trial["loss"]["name"], params=trial["loss"].get("params", {}))
    if hasattr(model, "score_iou_pairs"):  # quality-aware heads: does the score track localisation?
        diagnostics = dict(diagnostics or {}, score_iou=score_iou_diagnostics(
            model, val_ds, trial["train"]["batch_size"], device))
    final_dir = os.path.join(trial["trial_dir"], "final")
    os.makedirs(final_dir, exist_ok=True)
    torch.save(model.state_dict(), os.path.join(final_dir, "model.pt"))
    _write_json(os.path.join(final_dir, "detections.json"), ev["detections"])
    _write_json(os.path.join(final_dir, "eval.json"), {k: v for k, v in ev.items() if k != "detections"})
    _write_json(os.path.join(final_dir, "speed.json"), speed)
    if diagnostics is not None:
        _write_json(os.path.join(final_dir, "diagnostics.json"), diagnostics)
    final = {k: v for k, v in ev["metrics"].items() if v is not None}
    final.update({f"speed/{k}": v for k, v in speed.items()})
    final.update(epoch=epoch, step=step, final=1)
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
