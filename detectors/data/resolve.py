"""Resolve a trial's ``dataset`` section to the four COCO paths the loader needs."""
from __future__ import annotations

import os
from typing import Dict

from detectors.config import DatasetConfig

PATH_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")


def default_cache_root() -> str:
    return os.path.abspath(os.environ.get("DETBENCH_DATA_CACHE", os.path.join("runs", "datasets")))


def ensure_dataset(dataset: DatasetConfig) -> Dict[str, str]:
    """Return absolute COCO paths, generating the synthetic set if it is not cached yet.

    The driver normally generates the set once before trials start and fills the
    paths in; this covers ``python -m detectors.train`` on a hand-written trial.
    """
    given = {k: getattr(dataset, k) for k in PATH_KEYS}
    if all(given.values()):
        return {k: os.path.abspath(v) for k, v in given.items()}
    if dataset.kind != "synthetic":
        missing = [k for k, v in given.items() if not v]
        raise ValueError(f"dataset: missing {', '.join(missing)}")
    from detectors.data.synthetic import generate

    paths = generate(dict(dataset.synthetic or {}), dataset.cache_dir or default_cache_root())
    return {k: paths[k] for k in PATH_KEYS}
