"""MLflow bookkeeping for a study, done by the driver alone.

SQLite has no busy timeout, so Ray workers never talk to MLflow: the driver's
Tune callback (``platform.callbacks``) calls the functions here. One
experiment per study, one parent run per invocation, one child run per trial;
a retried or resumed trial reuses its child run (found by its config hash).
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from importlib import metadata
from typing import Any, Dict, Iterable, Optional

from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from dashboards.data import flatten

HASH_TAG = "detbench.config_hash"
STUDY_TAG = "detbench.study"
PARENT_TAG = "mlflow.parentRunId"
PACKAGES = ("torch", "torchvision", "ray", "mlflow", "pycocotools", "numpy")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def git_commit(repo_root: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> Dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


class StudyTracker:
    """Owns the MLflow experiment and the parent run of one invocation."""

    def __init__(self, tracking_uri: str, study_name: str, artifact_root: str) -> None:
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(study_name)
        if exp is None:
            os.makedirs(artifact_root, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                study_name, artifact_location=f"file://{os.path.abspath(artifact_root)}")
        else:
            self.experiment_id = exp.experiment_id
        self.study_name = study_name
        self.parent_run_id: Optional[str] = None

    def start_parent(self, study_file: str, repo_root: str, params: Dict[str, Any], code_version: str) -> str:
        tags = {STUDY_TAG: self.study_name, "mlflow.runName": f"{self.study_name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                "detbench.study_file": os.path.abspath(study_file), "mlflow.source.git.commit": git_commit(repo_root),
                "detbench.detectors_version": code_version}
        tags.update({f"version.{k}": v for k, v in package_versions().items()})
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        self.client.log_artifact(self.parent_run_id, study_file)
        return self.parent_run_id

    def end_parent(self, status: str) -> None:
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)

    def find_child(self, config_hash: str) -> Optional[str]:
        """The child run an earlier attempt or invocation made for this config, if any."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{HASH_TAG}` = '{config_hash}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    def start_child(self, trial: dict, reuse: bool = True) -> str:
        run_id = self.find_child(trial["config_hash"]) if reuse else None
        if run_id is None:
            run = self.client.create_run(self.experiment_id, tags={
                PARENT_TAG: self.parent_run_id, "mlflow.runName": trial["trial_key"],
                HASH_TAG: trial["config_hash"], STUDY_TAG: self.study_name,
                "detbench.variant": trial["variant"], "detbench.seed": str(trial["seed"])})
            run_id = run.info.run_id
            params = {k: v for k, v in flatten(trial).items() if not k.startswith(("dataset.train_", "dataset.val_"))}
            self.log_params(run_id, params)
        else:
            # Resumed in a later invocation: hang it under this invocation's parent.
            self.client.set_tag(run_id, PARENT_TAG, self.parent_run_id)
            self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(params.items())]
        items = [Param(p.key, p.value[:MAX_PARAM_LEN]) for p in items]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(run_id, params=items[i:i + 100])

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k.replace("@", "_"), float(v), now, step) for k, v in metrics.items()]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_artifacts(self, run_id: str, paths: Iterable[str], artifact_path: Optional[str] = None) -> None:
        for p in paths:
            if os.path.exists(p):
                self.client.log_artifact(run_id, p, artifact_path)

    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    def end_child(self, run_id: str, status: str, tags: Optional[Dict[str, str]] = None) -> None:
        for k, v in (tags or {}).items():
            self.client.set_tag(run_id, k, v[:5000])
        self.client.set_terminated(run_id, status=status)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri '{self.tracking_uri}' --host 127.0.0.1 --port 5000"

