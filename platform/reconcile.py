"""Bring MLflow up to date from the results store, at the start of every run of a study.

The results store is the record of what finished; MLflow is its view. They part
when a driver dies (its parent run and the child runs of interrupted trials are
left RUNNING) or when the tracking server stops answering mid-study (the
tracker goes offline, ``platform.tracking``, and trials finish into the store
only). The next run of the study, before it starts anything:

- ends parent runs of the study that an earlier invocation left RUNNING: with
  the status that invocation meant to give it if it could write it down
  (``mlflow_pending.json`` in the study's run directory, written when MLflow
  was offline at its end), else ``KILLED`` (its driver died);
- marks child runs left RUNNING whose trial did not finish ``KILLED`` (a run
  that resumes the trial takes its child run up again);
- completes the child run of every trial the store has as finished whose run
  is missing, not FINISHED, or incomplete (no ``duration_s``, the last metric
  a finished trial logs): params and dataset for a new run, the epoch and final
  metrics MLflow lacks (by name and step, so nothing is doubled), artifacts
  from the trial's ``final`` directory, the store's start and end times; and
  logs, for any finished trial, final metrics whose latest value in MLflow is
  missing or not the store's (speed figures measured after the trials by a run
  whose MLflow was cut off).

One driver per study at a time: a RUNNING parent is taken for a dead one.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict

from platform.callbacks import ARTIFACTS
from platform.tracking import HASH_TAG, PARENT_TAG, StudyTracker

PENDING_FILE = "mlflow_pending.json"


def prune_checkpoints(store, study_name: str, trials, force: bool = False) -> None:
    """Before trials run again: keep only the epoch checkpoints the store recorded.

    A trial resumes from its newest checkpoint on disk (``detectors.trainable``). A driver
    killed between a checkpoint's write and its report would leave a checkpoint whose epoch
    the store and MLflow never saw; resuming after it would lose that epoch's figures, so
    it goes (its epoch runs again, to the same result). ``force``: every checkpoint goes.
    """
    import re
    import shutil

    for t in trials:
        root = os.path.join(t["trial_dir"], "checkpoints")
        if not os.path.isdir(root):
            continue
        seen = [] if force else [m.get("epoch") for m in store.trial_epochs(study_name, t["config_hash"]).values()]
        last = max((int(e) for e in seen if e is not None), default=-1)
        for name in os.listdir(root):
            m = re.match(r"^epoch_(\d+)$", name)
            if m and int(m.group(1)) > last:
                shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        if force:
            shutil.rmtree(os.path.join(t["trial_dir"], "final"), ignore_errors=True)


def note_pending_parent(run_dir: str, run_id: str, status: str) -> None:
    """MLflow could not be told how this invocation ended: keep it for the next run."""
    path = os.path.join(run_dir, PENDING_FILE)
    pending = _read(path)
    pending[run_id] = status
    with open(path + ".tmp", "w") as f:
        json.dump(pending, f)
    os.replace(path + ".tmp", path)


def _read(path: str) -> Dict[str, str]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def reconcile(tracker: StudyTracker, store, study_name: str, run_dir: str) -> Dict[str, int]:
    """Repair MLflow from the store (see the module docstring). Returns counts of what it did:
    ``parents`` ended, ``children`` marked KILLED, ``repaired`` trials' runs completed."""
    client, exp = tracker.client, tracker.experiment_id
    pending_path = os.path.join(run_dir, PENDING_FILE)
    pending = _read(pending_path)
    trials = store.trials(study_name)
    finished = {t["config_hash"]: t for t in trials if t["status"] == "finished"}
    hash_of = {t["trial_key"]: t["config_hash"] for t in trials}
    final: Dict[str, Dict[str, float]] = {}  # config hash -> the store's final metrics
    for row in store.final_metrics(study_name):
        final.setdefault(hash_of[row["trial_key"]], {})[row["name"]] = row["value"]
    counts = {"parents": 0, "children": 0, "repaired": 0}
    latest = {}
    for run in client.search_runs([exp], max_results=50000, order_by=["attributes.start_time ASC"]):
        config_hash = run.data.tags.get(HASH_TAG)
        if config_hash is not None:
            latest[config_hash] = run  # ascending start times: the newest run per trial stays
        if run.info.status != "RUNNING":
            continue
        if PARENT_TAG not in run.data.tags:
            client.set_terminated(run.info.run_id, status=pending.get(run.info.run_id, "KILLED"))
            counts["parents"] += 1
        elif config_hash not in finished:
            client.set_terminated(run.info.run_id, status="KILLED")
            counts["children"] += 1
    if os.path.exists(pending_path):
        os.remove(pending_path)
    for config_hash, trial in finished.items():
        run = latest.get(config_hash)
        ended = run is not None and run.info.status == "FINISHED" and "duration_s" in run.data.metrics
        # final metrics the store has and MLflow lacks or holds otherwise (speed figures measured
        # after the trial, by a run whose MLflow was cut off, are one case)
        stale = {k: v for k, v in final.get(config_hash, {}).items()
                 if run is None or not _same(run.data.metrics.get(k.replace("@", "_"), math.nan), v)}
        if ended and not stale:
            continue
        _repair(tracker, store, study_name, trial, run, stale, ended)
        counts["repaired"] += 1
    return counts


def _repair(tracker: StudyTracker, store, study_name: str, trial: dict, run, stale: Dict[str, float],
            ended: bool) -> None:
    """Complete one finished trial's MLflow run (``run``; None: make it) from the store:
    ``stale`` final metrics; for a run that never ended, its epochs, artifacts and end too."""
    client, spec = tracker.client, trial["config"]
    if run is None:
        # Under the parent of the invocation that ran it, as the run it would have had.
        tracker.parent_run_id = (next((s for s in store.studies() if s["name"] == study_name), {})
                                 .get("last_parent_run_id"))
        run_id = tracker.start_child(spec, reuse=False, start_time=trial["started_at"].timestamp())
        tracker.parent_run_id = None
        store.set_mlflow_run_id(study_name, trial["config_hash"], run_id)
    else:
        run_id = run.info.run_id
    if stale:
        tracker.log_metrics(run_id, stale, int(stale.get("step", 0) or 0))
    if ended:
        return
    _log_missing(tracker, run_id, store.trial_epochs(study_name, trial["config_hash"]))
    if not client.list_artifacts(run_id):
        final_dir = os.path.join(spec["trial_dir"], "final")
        tracker.log_dict(run_id, spec, "resolved_config.json")
        tracker.log_artifacts(run_id, [os.path.join(final_dir, f) for f in ARTIFACTS])
    end = trial["finished_at"].timestamp()
    tracker.end_child(run_id, "FINISHED", end_time=end, duration_s=trial["duration_s"])


def _log_missing(tracker: StudyTracker, run_id: str, epochs: Dict[int, Dict[str, float]]) -> None:
    """Log the epoch values (``{step: {name: value}}``) MLflow has no point of at their step."""
    names = sorted({name for values in epochs.values() for name in values})
    have = {name: {m.step for m in tracker.client.get_metric_history(run_id, name.replace("@", "_"))}
            for name in names}
    for step, values in sorted(epochs.items()):
        missing = {k: v for k, v in values.items() if step not in have[k]}
        if missing:
            tracker.log_metrics(run_id, missing, step)
