"""A held-out part of a training set, for tuning (a study's ``sweep.tune``): the search scores
its samples on images the final trials train on but the report never scores, so the val set
stays untouched by the search.

    rest, held = holdout_split("/data/train.json", fraction=0.2, seed=0, out_dir="/data/cache/holdout")

Both are COCO annotation files over the same images directory. Which images are held out
depends only on the sorted image ids, ``fraction`` and ``seed``; the files are written once
per (content of the source file, fraction, seed) and found again after that.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Tuple

import numpy as np


def held_out_count(num_images: int, fraction: float) -> int:
    """How many of ``num_images`` are held out: ``round(fraction * n)``, at least 1 and at most n - 1.
    Raises ValueError below 2 images (nothing could be split)."""
    if num_images < 2:
        raise ValueError(f"a held-out tuning split needs at least 2 training images, got {num_images}")
    return min(num_images - 1, max(1, round(fraction * num_images)))


def holdout_split(train_annotations: str, fraction: float, seed: int, out_dir: str) -> Tuple[str, str]:
    """(the rest, the held-out part) of ``train_annotations``, as two annotation files in ``out_dir``."""
    with open(train_annotations, "rb") as f:
        raw = f.read()
    key = hashlib.sha256(raw + json.dumps([fraction, seed]).encode()).hexdigest()[:16]
    rest_path = os.path.join(out_dir, f"{key}-train.json")
    held_path = os.path.join(out_dir, f"{key}-holdout.json")
    if os.path.isfile(rest_path) and os.path.isfile(held_path):
        return rest_path, held_path
    coco = json.loads(raw)
    ids = sorted(img["id"] for img in coco["images"])
    order = np.random.default_rng(seed).permutation(len(ids))
    held = {ids[i] for i in order[:held_out_count(len(ids), fraction)]}
    os.makedirs(out_dir, exist_ok=True)
    for path, keep in ((held_path, True), (rest_path, False)):
        part = {**coco, "images": [im for im in coco["images"] if (im["id"] in held) == keep],
                "annotations": [a for a in coco["annotations"] if (a["image_id"] in held) == keep]}
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(part, f)
        os.replace(tmp, path)  # whole files only: a reader never sees half of one
    return rest_path, held_path
