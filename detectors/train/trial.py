"""A complete trial dict (docs/architecture.md) for trials made by hand: the benchmark, the tests.

    trial = make_trial(paths, "/tmp/t", loss={"params": {"gamma": 1.0}}, train={"epochs": 2})
    run_trial(trial)

The driver builds its trial dicts from study files (``platform.study.expand``); the
defaults here are the typed trial config's (``detectors.config``), which the
study schema holds equal (``tests/platform/test_trial_defaults.py``), so a
hand-made trial runs as the same trial from a study would.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Mapping, Optional

from detectors.config import DetectorConfig, EvalConfig, SpeedConfig, TrainConfig, to_dict
from detectors.data.resolve import PATH_KEYS

__all__ = ["DETECTOR", "LOSS", "TRAIN", "SPEED", "EVAL", "make_trial"]

# The headline study's detector and loss: RetinaNet, focal loss with the paper's defaults (sec. 3.2).
DETECTOR = to_dict(DetectorConfig(name="retinanet"))
LOSS = {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}}
TRAIN = to_dict(TrainConfig())
SPEED = to_dict(SpeedConfig())
EVAL = to_dict(EvalConfig())


def _component(default: Mapping[str, Any], given: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """``default`` with ``given``'s keys on top; a new name without params starts from empty params
    (the default component's params mean nothing to another one, as in ``platform.study.spec.apply_overrides``)."""
    given = dict(given or {})
    out = {**copy.deepcopy(dict(default)), **given}
    if given.get("name", default["name"]) != default["name"] and "params" not in given:
        out["params"] = {}
    return out


def make_trial(paths: Mapping[str, str], trial_dir: str, *, detector: Optional[Mapping[str, Any]] = None,
               loss: Optional[Mapping[str, Any]] = None, losses: Optional[Mapping[str, Any]] = None,
               train: Optional[Mapping[str, Any]] = None,
               evaluation: Optional[Mapping[str, Any]] = None, seed: int = 0, study: str = "adhoc",
               variant: str = "default", kind: str = "synthetic", num_threads: int = 1, gpus: float = 0,
               config_hash: str = "0" * 64, workers: int = 1) -> dict:
    """A plain, JSON-able trial dict with every default filled in.

    Args:
        paths: the four COCO paths (``train_images``, ``train_annotations``,
            ``val_images``, ``val_annotations``), e.g. what
            ``detectors.data.synthetic.generate`` returns; other keys are ignored.
        trial_dir: where the worker writes checkpoints and final files.
        detector, loss: ``name`` / ``scale`` / ``params`` over ``DETECTOR`` / ``LOSS``.
        losses: role -> ``{name, params}`` for the detector's other loss roles (default: each role's default).
        train: keys over ``TRAIN``.
        evaluation: keys over ``EVAL`` (the trial's ``eval`` section); its ``speed`` over ``SPEED``.
        workers: > 1 trains on that many Ray Train workers (``detectors.train.distributed``).
        config_hash: a hand-made trial is not hashed (the driver hashes the
            resolved config with the dataset identity and the detectors code).
    Returns:
        the trial dict; ``trial_key`` is ``"<variant>/seed=<seed>"``.
    """
    given_eval = dict(evaluation or {})
    eval_section = {**copy.deepcopy(EVAL), **given_eval, "speed": {**SPEED, **given_eval.get("speed", {})}}
    trial = {
        "study": study, "trial_key": f"{variant}/seed={seed}", "variant": variant, "seed": seed,
        "config_hash": config_hash,
        "dataset": {"kind": kind, **{k: os.path.abspath(paths[k]) for k in PATH_KEYS},
                    "synthetic": None, "cache_dir": None, "digest": None},
        "detector": _component(DETECTOR, detector),
        "loss": _component(LOSS, loss),
        "losses": copy.deepcopy(dict(losses or {})),
        "train": {**copy.deepcopy(TRAIN), **dict(train or {})},
        "eval": eval_section,
        "num_threads": num_threads, "gpus": gpus, "workers": workers, "cpus": float(num_threads),
        "trial_dir": os.path.abspath(trial_dir),
        "backbone_digest": None,  # the driver's (platform.study.expand); a hand-made trial is not hashed
    }
    return json.loads(json.dumps(trial))  # plain JSON types only, as a trial from a study file
