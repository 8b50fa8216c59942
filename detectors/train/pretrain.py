"""The pretraining stage: the tiny body trained as an image classifier, standing in for ImageNet.

    path = ensure_pretrained(PretrainConfig(), cache_root)     # trains once, then a cache hit
    path = pretrained_path(settings, cache_root)                # where it is (or will be)

The papers fine-tune backbones pretrained on ImageNet classification; nothing
can be downloaded here, so the platform pretrains the tiny body
(``detectors.models.backbones.TinyBody``) itself: global average pooling and one
linear layer over its last stage, trained with cross-entropy on the generated
classification set (``detectors.data.classification``: one shape per image,
eight classes, never a detection image), SGD with momentum 0.9, weight decay, a
cosine schedule and horizontal flips. Its body's state dict is what a trial loads
(``detectors.models.pretrained``), written with the classifier's held-out
accuracy beside it.

The result is cached under ``<cache_root>/pretrained-<digest>/`` by a digest of
the settings, the body's widths and the versions of this stage and of the image
generator, so every trial and study that asks for the same settings shares one
run. It is written to a temporary directory and renamed into place, like the
synthetic sets. The driver runs it before the trials start (``platform.runner.
pretrain``: progress line, MLflow run, store row); a trial run by hand that
finds no cached weights runs it itself. Nothing here imports torch at module
level, so the driver can compute digests and paths cheaply.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from typing import Callable, Dict, Optional

from detectors.config import PretrainConfig

__all__ = ["PRETRAIN_VERSION", "pretrain_digest", "pretrained_path", "ensure_pretrained", "pretrain_backbone",
           "pretrain_task", "read_meta"]

# Bump when this stage's training changes what given settings produce.
PRETRAIN_VERSION = 1
WEIGHTS_FILE = "backbone.pt"
META_FILE = "pretraining.json"

Progress = Callable[[Dict[str, float]], None]


def pretrain_digest(settings: PretrainConfig) -> str:
    """sha256 of what decides the weights: the settings, the body, this stage's and the generator's versions."""
    from detectors.data.synthetic import GENERATOR_VERSION
    from detectors.models.backbones import TINY_WIDTHS

    identity = {"settings": dataclasses.asdict(settings), "widths": TINY_WIDTHS, "version": PRETRAIN_VERSION,
                "generator": GENERATOR_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def pretrained_path(settings: PretrainConfig, cache_root: str) -> str:
    """The weights file these settings give, cached or not yet."""
    return os.path.join(os.path.abspath(cache_root), f"pretrained-{pretrain_digest(settings)[:16]}", WEIGHTS_FILE)


def ensure_pretrained(settings: PretrainConfig, cache_root: str, progress: Optional[Progress] = None) -> str:
    """The cached weights file, pretraining the body first if there is none."""
    path = pretrained_path(settings, cache_root)
    if os.path.isfile(path):
        return path
    final = os.path.dirname(path)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=os.path.dirname(final))
    try:
        meta = pretrain_backbone(settings, os.path.join(tmp, WEIGHTS_FILE), progress)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump({**meta, "digest": pretrain_digest(settings)}, f, indent=1)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its (identical) result first
            if not os.path.isfile(path):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def pretrain_task(settings: dict, cache_root: str, threads: int, queue=None) -> dict:
    """The stage as a Ray task of the driver (``platform.runner.pretrain``): ``threads`` torch threads,
    each epoch's figures put on ``queue``; returns the weights' path and what the stage wrote beside them."""
    import torch

    from detectors.config import parse

    torch.set_num_threads(max(1, int(threads)))
    path = ensure_pretrained(parse(PretrainConfig, settings), cache_root, queue.put if queue is not None else None)
    return {"path": path, "result": read_meta(path)}


def read_meta(weights_path: str) -> dict:
    """What the stage wrote beside the weights (settings, accuracy, time)."""
    with open(os.path.join(os.path.dirname(weights_path), META_FILE)) as f:
        return json.load(f)


def pretrain_backbone(settings: PretrainConfig, out_path: str, progress: Optional[Progress] = None) -> dict:
    """Train the classifier, save its body's state dict to ``out_path``; returns what was measured.

    ``progress(figures)`` is called after each epoch with ``epoch``, ``epochs``,
    ``loss``, ``val_accuracy``, ``seconds`` so far and ``train_seconds`` (without making the images).
    """
    import numpy as np
    import torch
    from torch import nn

    from detectors.data.classification import classification_set
    from detectors.data.synthetic import SHAPES
    from detectors.models.backbones import TINY_WIDTHS, TinyBody
    from detectors.models.common import IMAGENET_MEAN, IMAGENET_STD

    t0 = time.perf_counter()
    torch.manual_seed(settings.seed)
    data = {"seed": settings.seed, "num_train": settings.images, "num_val": max(1, settings.images // 8)}
    train_x, train_y = classification_set(data, "train")
    val_x, val_y = classification_set(data, "val")
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def tensors(x: np.ndarray, y: np.ndarray):
        images = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255.0)
        return (images - mean) / std, torch.from_numpy(y)

    (train_x, train_y), (val_x, val_y) = tensors(train_x, train_y), tensors(val_x, val_y)
    body = TinyBody(TINY_WIDTHS)
    model = nn.Sequential(body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(TINY_WIDTHS[-1], len(SHAPES)))
    steps_per_epoch = math.ceil(len(train_x) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    generator = torch.Generator().manual_seed(settings.seed)
    history, t_train = [], time.perf_counter()
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        loss_sum = 0.0
        for i in range(steps_per_epoch):
            idx = order[i * settings.batch_size:(i + 1) * settings.batch_size]
            images = train_x[idx]
            flip = torch.rand(len(idx), generator=generator) < 0.5
            images[flip] = images[flip].flip(-1)
            loss = nn.functional.cross_entropy(model(images), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            loss_sum += loss.item()
        figures = {"epoch": epoch + 1, "epochs": settings.epochs, "loss": loss_sum / steps_per_epoch,
                   "val_accuracy": _accuracy(model, val_x, val_y), "seconds": time.perf_counter() - t0,
                   "train_seconds": time.perf_counter() - t_train}
        history.append(figures)
        if progress is not None:
            progress(figures)
    torch.save(body.state_dict(), out_path)
    return {"settings": dataclasses.asdict(settings), "history": history, "val_accuracy": history[-1]["val_accuracy"],
            "seconds": time.perf_counter() - t0, "classes": len(SHAPES), "train_images": len(train_x),
            "val_images": len(val_x)}


def _accuracy(model, images, labels, batch: int = 256) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        right = sum(int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                    for i in range(0, len(images), batch))
    return right / max(1, len(images))
