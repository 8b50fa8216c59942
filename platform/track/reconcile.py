"""Bring MLflow up to date from the results store, at the start of every run of a study.

The results store is the record of what finished; MLflow is its view. They part
when a driver dies (its parent run and the child runs of interrupted trials are
left RUNNING) or when the tracking server stops answering mid-study (the
tracker goes offline, ``platform.track.tracking``, and trials finish into the store
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

A run that leaves MLflow in step with the store writes down what both looked like
(``mlflow_synced.json``: the store's record of the study and the SQLite MLflow
file's size and modification time); a later run that finds both unchanged skips
opening MLflow at all (a cached re-run takes about a second instead of three). A
tracking server has no file to look at: the run also tags the study's experiment
with that record (``detbench.synced``), and a later run asks the server for the
tag in one HTTP request, without importing MLflow (listing every run with its
params and metrics took about 0.6 s per 100 runs). A server that lost or never
had the experiment, or answers anything else, is reconciled. What neither
notices is a run changed by hand in MLflow since (deleted in the UI, say): the
next run that trains anything reconciles in full, or remove ``mlflow_synced.json``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import urllib.parse
import urllib.request
from typing import Dict, Optional

from platform.runner.cluster import is_server

PENDING_FILE = "mlflow_pending.json"
SYNC_FILE = "mlflow_synced.json"
SYNC_TAG = "detbench.synced"  # on a tracking server's experiment: the state the last sync left


def _sync_state(store, study_name: str, mlflow_uri: str) -> Optional[str]:
    """A digest of what a reconcile would compare: the study's trials and final metrics in the
    store, and the SQLite MLflow file (size, modification time; a tracking server's part is the
    experiment's tag); None for a missing file or another kind of URI (always reconcile)."""
    if is_server(mlflow_uri):
        db = None
    elif mlflow_uri.startswith("sqlite:///"):
        try:
            st = os.stat(mlflow_uri[len("sqlite:///"):])
        except OSError:
            return None
        db = [st.st_size, st.st_mtime_ns]
    else:
        return None
    study = next((s for s in store.studies() if s["name"] == study_name), {})
    trials = [[t["config_hash"], t["status"], t["mlflow_run_id"], str(t["finished_at"]), t["attempts"]]
              for t in store.trials(study_name)]
    final = [[r["trial_key"], r["name"], repr(r["value"])] for r in store.final_metrics(study_name)]
    state = {"uri": mlflow_uri, "db": db, "parent": study.get("last_parent_run_id"),
             "trials": trials, "final": final}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def in_sync(store, study_name: str, mlflow_uri: str, run_dir: str) -> bool:
    """MLflow and the store are as the last run that left them in step saw them, and no
    invocation left a status to write down."""
    if os.path.exists(os.path.join(run_dir, PENDING_FILE)):
        return False
    state = _sync_state(store, study_name, mlflow_uri)
    if state is None or _read(os.path.join(run_dir, SYNC_FILE)).get("state") != state:
        return False
    return not is_server(mlflow_uri) or server_tag(mlflow_uri, study_name) == state


def server_tag(uri: str, experiment: str, key: str = SYNC_TAG, timeout: float = 5.0) -> Optional[str]:
    """The tag ``key`` of the experiment named ``experiment`` on the MLflow tracking server at ``uri``,
    from its REST API (one request; MLflow's environment variables for a token or a user and password
    are honoured); None if it is missing or the server does not answer as expected."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    elif os.environ.get("MLFLOW_TRACKING_USERNAME"):
        user = f"{os.environ['MLFLOW_TRACKING_USERNAME']}:{os.environ.get('MLFLOW_TRACKING_PASSWORD', '')}"
        request.add_header("Authorization", "Basic " + base64.b64encode(user.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            tags = json.load(resp)["experiment"].get("tags", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # HTTP errors are OSErrors
        return None
    return next((t.get("value") for t in tags if isinstance(t, dict) and t.get("key") == key), None)


def mark_synced(store, study_name: str, mlflow_uri: str, run_dir: str, tracker=None) -> None:
    """Write down that MLflow and the store are in step now (after the last MLflow write); on a
    tracking server, as the experiment's tag too (``tracker``: the ``StudyTracker`` that wrote)."""
    state = _sync_state(store, study_name, mlflow_uri)
    path = os.path.join(run_dir, SYNC_FILE)
    if state is not None and is_server(mlflow_uri):
        try:
            told = tracker is not None and tracker.set_experiment_tag(SYNC_TAG, state)
        except Exception:  # the server failing now: only the next run's check is at stake
            told = False
        if not told:
            state = None  # the server was not told: the next run checks it
    if state is None:
        if os.path.exists(path):
            os.remove(path)
        return
    with open(path + ".tmp", "w") as f:
        json.dump({"state": state}, f)
    os.replace(path + ".tmp", path)


def prune_checkpoints(store, study_name: str, trials, force: bool = False) -> None:
    """Before trials run again: keep only the epoch checkpoints the store recorded.

    A trial resumes from its newest checkpoint on disk (``detectors.train.trainable``). A driver
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


def reconcile(tracker, store, study_name: str, run_dir: str) -> Dict[str, int]:
    """Repair MLflow from the store (see the module docstring; ``tracker``: a
    ``platform.track.tracking.StudyTracker``). Returns counts of what it did: ``parents`` ended,
    ``children`` marked KILLED, ``repaired`` trials' runs completed."""
    from platform.track.tracking import HASH_TAG, PARENT_TAG

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
    tracker.children = {h: run.info.run_id for h, run in latest.items()}  # start_child looks up, not searches
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


def _repair(tracker, store, study_name: str, trial: dict, run, stale: Dict[str, float], ended: bool) -> None:
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
        from platform.runner.callbacks import ARTIFACTS

        final_dir = os.path.join(spec["trial_dir"], "final")
        tracker.log_dict(run_id, spec, "resolved_config.json")
        tracker.log_artifacts(run_id, [os.path.join(final_dir, f) for f in ARTIFACTS])
    end = trial["finished_at"].timestamp()
    tracker.end_child(run_id, "FINISHED", end_time=end, duration_s=trial["duration_s"])


def _log_missing(tracker, run_id: str, epochs: Dict[int, Dict[str, float]]) -> None:
    """Log the epoch values (``{step: {name: value}}``) MLflow has no point of at their step."""
    names = sorted({name for values in epochs.values() for name in values})
    have = {name: {m.step for m in tracker.client.get_metric_history(run_id, name.replace("@", "_"))}
            for name in names}
    for step, values in sorted(epochs.items()):
        missing = {k: v for k, v in values.items() if step not in have[k]}
        if missing:
            tracker.log_metrics(run_id, missing, step)
