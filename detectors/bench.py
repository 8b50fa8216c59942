"""Benchmark command: dataset generation time, train img/s and eval latency per thread count.

    python -m detectors.bench [--threads 1 2] [--scale tiny] [--steps 30] [--train-epochs 0]

Prints one line per figure. Timings are wall clock on this machine, after a
warm-up, so run it on an otherwise idle machine when comparing.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from functools import partial
from typing import List, Optional

import torch
from torch.utils.data import DataLoader

from detectors.data.coco import CocoDetection, collate
from detectors.data.synthetic import generate
from detectors.losses import CLS_LOSSES
from detectors.models import MODELS


def _model(scale: str, num_classes: int):
    return MODELS.build("retinanet", num_classes=num_classes, scale=scale,
                        cls_loss=partial(CLS_LOSSES.get("focal"), gamma=2.0, alpha=0.25))


def train_img_s(train_ds, scale: str, steps: int, batch_size: int) -> float:
    torch.manual_seed(0)
    model = _model(scale, len(train_ds.cat_ids)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loader = DataLoader(train_ds, batch_size=batch_size, shuffle=True, collate_fn=collate)
    batches = [b for _, b in zip(range(steps + 3), loader)]
    t0, seen = 0.0, 0
    for i, (images, targets) in enumerate(batches):
        if i == 3:  # first steps allocate; not counted
            t0, seen = time.perf_counter(), 0
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(images)
    return seen / (time.perf_counter() - t0)


@torch.no_grad()
def latency_ms(val_ds, scale: str, n: int = 50) -> List[float]:
    model = _model(scale, len(val_ds.cat_ids)).eval()
    images = [val_ds[i % len(val_ds)][0] for i in range(n + 10)]
    times = []
    for i, img in enumerate(images):
        t0 = time.perf_counter()
        model([img])
        if i >= 10:
            times.append((time.perf_counter() - t0) * 1000)
    return sorted(times)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m detectors.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--scale", default="tiny", choices=["tiny", "paper"])
    ap.add_argument("--steps", type=int, default=30, help="timed training steps per thread count")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-epochs", type=int, default=0,
                    help="also run a full training of this many epochs on the default set (1 thread) and print AP50")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        paths = generate(None, cache)
        print(f"dataset generation (default synthetic, 600+100 images): {time.perf_counter() - t0:.1f} s")
        train_ds = CocoDetection(paths["train_images"], paths["train_annotations"], hflip_prob=0.5)
        val_ds = CocoDetection(paths["val_images"], paths["val_annotations"])
        for n in args.threads:
            torch.set_num_threads(n)
            ips = train_img_s(train_ds, args.scale, args.steps, args.batch_size)
            lat = latency_ms(val_ds, args.scale)
            p95 = lat[int(round(0.95 * (len(lat) - 1)))]
            print(f"{args.scale} threads={n}: train {ips:.1f} img/s (batch {args.batch_size}), "
                  f"eval latency p50 {statistics.median(lat):.1f} ms, p95 {p95:.1f} ms (batch 1, 128 px)")
        if args.train_epochs:
            from detectors.train import run_trial

            torch.set_num_threads(1)
            trial = {"study": "bench", "trial_key": "bench", "variant": "bench", "seed": 0, "config_hash": "bench",
                     "dataset": {"kind": "synthetic", **{k: paths[k] for k in
                                 ("train_images", "train_annotations", "val_images", "val_annotations")}},
                     "detector": {"name": "retinanet", "scale": args.scale, "params": {}},
                     "loss": {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}},
                     "train": {"epochs": args.train_epochs, "batch_size": args.batch_size, "optimizer": "adamw",
                               "lr": 2e-3, "weight_decay": 1e-4, "warmup_iters": 50, "schedule": "cosine",
                               "grad_clip": 10.0, "hflip_prob": 0.5, "eval_every_epoch": False},
                     "eval": {"score_thresh": 0.05, "nms_iou": 0.5, "max_dets": 100, "speed": {"enabled": False}},
                     "num_threads": 1, "trial_dir": f"{cache}/trial"}
            t0 = time.perf_counter()
            final = run_trial(trial)
            print(f"{args.scale} training, {args.train_epochs} epochs x 600 images, 1 thread: "
                  f"AP50 {final['AP50']:.3f}, AP {final['AP']:.3f}, wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
