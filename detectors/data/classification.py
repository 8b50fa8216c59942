"""A generated image-classification set: the stand-in for ImageNet that pretrains the tiny backbone.

Every paper in scope fine-tunes a backbone pretrained on ImageNet classification.
Nothing can be downloaded here, so the platform pretrains the tiny body itself on
this set: each image holds one shape of the synthetic detection set's drawing code
(``detectors.data.synthetic.render_image``: textured background, distractor
strokes, blur and noise) and its label is the shape. It draws all eight shapes,
not only the detection set's classes, at sizes filling much of the image, from a
random stream of its own (seed and a split index no detection split uses), so
it never holds a detection val image.

    images, labels = classification_set(DEFAULTS, "train")   # uint8 [N, S, S, 3], int64 [N]

The set is small (4000 images of 64 px are 49 MB) and deterministic from its
settings, so it is made in memory each time it is needed rather than cached on disk.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from detectors.data.synthetic import SHAPES, render_image, resolve_params

__all__ = ["DEFAULTS", "classification_set"]

DEFAULTS: Dict[str, object] = {
    "seed": 0,
    "num_train": 4000,
    "num_val": 500,      # held out: the pretraining stage reports its accuracy on these
    "image_size": 64,
    "object_size": [16, 56],
}

# Random streams of the detection set are (seed, 0 | 1, image): train and val. These are (seed, 2 | 3, image).
_SPLIT_INDEX = {"train": 2, "val": 3}


def classification_set(settings: Dict[str, object], split: str) -> Tuple[np.ndarray, np.ndarray]:
    """``split``'s images (uint8 ``[N, S, S, 3]``) and labels (int64 ``[N]``, indices into ``SHAPES``)."""
    s = {**DEFAULTS, **settings}
    # One object per image, every shape equally likely, the detection set's clutter and distractors.
    p = resolve_params({"seed": s["seed"], "image_size": s["image_size"], "object_size": s["object_size"],
                        "num_classes": len(SHAPES), "objects_per_image": [1, 1], "class_skew": 0.0})
    n = int(s[f"num_{split}"])
    images = np.zeros((n, p["image_size"], p["image_size"], 3), dtype=np.uint8)
    labels = np.zeros(n, dtype=np.int64)
    for i in range(n):
        for attempt in range(10):  # a placement can fail (a shape that would hide nothing is never skipped)
            rng = np.random.default_rng([p["seed"], _SPLIT_INDEX[split], i, attempt])
            image, objects = render_image(p, rng)
            if objects:
                break
        else:  # pragma: no cover - one object on an empty canvas always fits within 10 tries
            raise RuntimeError(f"classification set: no shape placed in image {i}")
        images[i] = np.asarray(image)
        labels[i] = objects[0][0]
    return images, labels
