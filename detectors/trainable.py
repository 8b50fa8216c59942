"""The Ray Tune function trainable: a thin adapter from Tune to ``run_trial``.

It lives in ``detectors/`` because Ray workers import the stdlib ``platform``
module before any of our code, so nothing defined in the driver package can be
unpickled there. The driver passes ``{"trial": <plain trial dict>}``.

Ray 2.x in Tune: ``ray.tune.report`` / ``ray.tune.get_checkpoint`` /
``ray.tune.Checkpoint`` (``ray.train.report`` raises inside Tune). Tune chdirs
each trial into its own directory, so every path in the trial dict is absolute.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Dict, Optional


def tune_trainable(config: Dict) -> None:
    from ray import tune

    from detectors.train import run_trial

    trial = config["trial"]

    def report(metrics: Dict[str, float], ckpt_dir: Optional[str]) -> None:
        if ckpt_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        run_trial(trial, report)
        return
    # A retry after a failure: continue from the last epoch Tune persisted. The
    # directory is copied out because ``as_directory`` may hand out a temporary one.
    with checkpoint.as_directory() as src:
        local = tempfile.mkdtemp(prefix="resume-", dir=trial["trial_dir"])
        shutil.copytree(src, local, dirs_exist_ok=True)
    try:
        resume = local if os.path.exists(os.path.join(local, "state.pt")) else None
        run_trial(trial, report, resume)
    finally:
        shutil.rmtree(local, ignore_errors=True)
