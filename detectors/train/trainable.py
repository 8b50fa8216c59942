"""The Ray Tune function trainable: a thin adapter from Tune to ``run_trial``.

It lives in ``detectors/`` because Ray workers import the stdlib ``platform``
module before any of our code, so nothing defined in the driver package can be
unpickled there. The driver passes ``{"trial": <plain trial dict>}``.

Ray 2.x in Tune: ``ray.tune.report`` / ``ray.tune.get_checkpoint`` /
``ray.tune.Checkpoint`` (``ray.train.report`` raises inside Tune). Tune chdirs
each trial into its own directory, so every path in the trial dict is absolute.

Where a trial starts: a retry after a crash continues from the checkpoint Tune
persisted; a trial that an earlier invocation left unfinished (Ctrl-C, or its
driver killed) from the last epoch checkpoint in its ``trial_dir``, which is
keyed by the config hash; otherwise from scratch. A trial with ``workers`` > 1
trains on that many Ray Train workers (``detectors.train.distributed``). Every report
names the Ray node that trained (``node_id``, of rank 0).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Dict, Optional

from detectors.train.checkpoint import STATE_FILE
from detectors.config import TrialConfig

_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def latest_checkpoint(trial_dir: str) -> Optional[str]:
    """The last complete epoch checkpoint under ``trial_dir/checkpoints`` (None if none);
    complete means its ``state.pt`` exists, which ``save_checkpoint`` writes last, by rename."""
    root = os.path.join(trial_dir, "checkpoints")
    found = []
    for name in os.listdir(root) if os.path.isdir(root) else []:
        m = _EPOCH_DIR.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return max(found)[1] if found else None


def tune_trainable(config: Dict) -> None:
    import ray
    from ray import tune

    trial = config["trial"]
    node = ray.get_runtime_context().get_node_id()

    def report(metrics: Dict[str, float], ckpt_dir: Optional[str]) -> None:
        metrics = {"node_id": node, **metrics}  # a multi-worker trial's reports name rank 0's node
        if ckpt_dir is None:
            tune.report(metrics)
        else:
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(ckpt_dir))

    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        _run(trial, report, latest_checkpoint(trial["trial_dir"]))
        return
    # A retry after a failure: continue from the last epoch Tune persisted. The
    # directory is copied out because ``as_directory`` may hand out a temporary one
    # (into the trial's directory: a multi-worker trial's workers read it too).
    with checkpoint.as_directory() as src:
        local = tempfile.mkdtemp(prefix="resume-", dir=trial["trial_dir"])
        shutil.copytree(src, local, dirs_exist_ok=True)
    try:
        # (the final report's checkpoint holds artifacts, no state: then the last epoch's)
        resume = local if os.path.exists(os.path.join(local, STATE_FILE)) else latest_checkpoint(trial["trial_dir"])
        _run(trial, report, resume)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _run(trial: Dict, report, resume_from: Optional[str]) -> None:
    if TrialConfig.from_dict(trial).workers > 1:
        from detectors.train.distributed import run_workers

        run_workers(trial, report, resume_from)
    else:
        from detectors.train.run import run_trial

        run_trial(trial, report, resume_from)
