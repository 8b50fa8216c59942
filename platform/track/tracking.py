"""MLflow bookkeeping for a study, done by the driver alone.

Ray workers never talk to MLflow (a SQLite file takes one writer at a time, and
every worker of a study would queue on it): the driver's Tune callback
(``platform.runner.callbacks``) calls the functions here. One experiment per
study, one parent run per invocation, one child run per trial; a retried or
resumed trial reuses its child run (found by its config hash). Two studies
running at once on one runs directory share its ``mlflow.db``: their writes wait
for each other (MLflow sets a 20 s busy timeout on each of its sessions), and a
new file's tables are made by one driver at a time (``platform.track.locks``).

What the MLflow UI shows from it: the experiment is tagged as model training
(``mlflow.experimentKind``; MLflow 3.17's UI follows a global switch instead,
which the URLs here set), the parent run's description says what the study
compares and where its report is, and every run names the dataset it trained on
(the Dataset column: name, digest of the dataset identity that is part of the
config hash, the train annotation file as the source).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, Dict, Iterable, List, Optional

from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient

from dashboards.data import flatten
from platform.runner.cluster import is_server
from platform.runner.timing import millis
from platform.track.locks import creating, sqlite_file

HASH_TAG = "detbench.config_hash"
STUDY_TAG = "detbench.study"
PARENT_TAG = "mlflow.parentRunId"
NOTE_TAG = "mlflow.note.content"          # a run's description in the UI (markdown)
KIND_TAG = "mlflow.experimentKind"        # the experiment type: GenAI or model training
TRAINING_KIND = "custom_model_development"
DATASET_CONTEXT_TAG = "mlflow.data.context"
DIGEST_LEN = 12  # MLflow keeps at most 36 characters of a dataset digest; 12 hex as elsewhere here
MAX_LISTED = 20  # variants named in a parent run's description
PACKAGES = ("torch", "torchvision", "ray", "mlflow", "pycocotools", "numpy")
MAX_PARAM_LEN = 6000  # MLflow's limit on a param value


def git_commit(repo_root: str) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_name(dataset: Dict[str, Any]) -> str:
    """How a trial's dataset is named in MLflow: ``synthetic-<12 hex>``, the cache directory
    (and the name the driver prints), or ``coco-<train annotation file stem>``."""
    if dataset["kind"] == "synthetic":
        from detectors.data.synthetic import dataset_dir_name

        return dataset_dir_name(dataset["synthetic"])
    stem = os.path.splitext(os.path.basename(dataset["train_annotations"] or ""))[0]
    return f"{dataset['kind']}-{stem or dataset['digest'][:DIGEST_LEN]}"


def dataset_input(trial: Dict[str, Any]) -> DatasetInput:
    """The trial's training set as an MLflow dataset input (context "training")."""
    ds = trial["dataset"]
    profile = {"val_annotations": ds.get("val_annotations"), "generator": ds.get("synthetic")}
    entity = Dataset(name=dataset_name(ds), digest=ds["digest"][:DIGEST_LEN], source_type="local",
                     source=json.dumps({"uri": ds.get("train_annotations") or ""}), profile=json.dumps(profile))
    return DatasetInput(entity, tags=[InputTag(DATASET_CONTEXT_TAG, "training")])


def dataset_inputs(trials: Iterable[Dict[str, Any]]) -> List[DatasetInput]:
    """One input per distinct dataset of ``trials`` (a sweep over generator params has several)."""
    out: Dict[tuple, DatasetInput] = {}
    for trial in trials:
        inp = dataset_input(trial)
        out.setdefault((inp.dataset.name, inp.dataset.digest), inp)
    return list(out.values())


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def study_description(study, trials: List[Dict[str, Any]], report_path: str) -> str:
    """The parent run's description (markdown): what the study compares and where its report is.

    ``trials``: every trial of the study (cached ones included); ``report_path``: its index.html."""
    variants = list(dict.fromkeys(t["variant"] for t in trials))
    # a variant's "label" names it and is not a config key
    varied = list(dict.fromkeys([k for v in study.sweep.variants for k in v if k != "label"] + list(study.sweep.grid)))
    datasets = list(dict.fromkeys(dataset_name(t["dataset"]) for t in trials))
    shown = ", ".join(f"`{v}`" for v in variants[:MAX_LISTED]) + (", ..." if len(variants) > MAX_LISTED else "")
    seeds = study.sweep.seeds
    url = "file://" + os.path.abspath(report_path)
    # A plain URL, not a markdown link: the UI drops file: hrefs, and a browser opens no file:
    # link from an http page anyway; the text can be copied.
    lines = [study.description or f"Study {study.name}.", "", f"Report: {url}", "",
             f"- Compares {_count(len(variants), 'variant')} x {_count(len(seeds), 'seed')}"
             f" = {_count(len(trials), 'trial')}: {shown}",
             f"- Varies: {', '.join(f'`{k}`' for k in varied) or 'nothing (one configuration)'};"
             f" seeds {', '.join(str(s) for s in seeds)}",
             f"- Dataset: {', '.join(datasets)}; base config: {study.detector.name} ({study.detector.scale}),"
             f" {study.loss.name + ' loss' if study.loss else 'default losses'}, {_count(study.train.epochs, 'epoch')}"]
    return "\n".join(lines)


def package_versions() -> Dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _tolerant(method):
    """A write that, once the tracker tolerates outages, is skipped on failure (and every write
    after it): the study goes on into the results store, and the next run brings MLflow up to
    date from the store (``platform.track.reconcile``). A write for no run (``None``) is skipped."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.offline or (args and args[0] is None):
            return None
        if not self.tolerate:
            return method(self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # any failure of the server or the network
            self.offline = True
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            print(f"warning: MLflow at {self.tracking_uri} failed ({type(exc).__name__}: {first}); trials go on "
                  f"into the results store, and the next run brings MLflow up to date", file=sys.stderr, flush=True)
            return None

    return call


class StudyTracker:
    """Owns the MLflow experiment and the parent run of one invocation.

    ``tolerate``: set once the invocation has started (its parent run exists); from then on a
    failing write turns the tracker ``offline`` instead of stopping the study.
    """

    def __init__(self, tracking_uri: str, study_name: str, artifact_root: str) -> None:
        self.tolerate, self.offline = False, False
        self.tracking_uri = tracking_uri
        # MLflow creates a new SQLite file's tables as the client is made; another driver on the
        # same file (a second study) may be doing so at this moment (platform.track.locks)
        with creating(sqlite_file(tracking_uri)):
            self.client = MlflowClient(tracking_uri)
            self.experiment_id = self._experiment(study_name, tracking_uri, artifact_root)
        self.study_name = study_name
        self.parent_run_id: Optional[str] = None
        # config hash -> its newest child run, once known for the whole experiment (``reconcile`` lists
        # every run anyway): then finding a trial's earlier run is a look-up, not a search per trial
        self.children: Optional[Dict[str, str]] = None

    def _experiment(self, study_name: str, tracking_uri: str, artifact_root: str) -> str:
        """The study's experiment id, the experiment created if missing."""
        exp = self.client.get_experiment_by_name(study_name)
        if exp is None and is_server(tracking_uri):
            # the server's own artifact store (``mlflow-artifacts:``, uploads through the server):
            # a path on the driver's disk would mean nothing to the server or to anyone else
            return self.client.create_experiment(study_name, tags={KIND_TAG: TRAINING_KIND})
        if exp is None:
            os.makedirs(artifact_root, exist_ok=True)
            return self.client.create_experiment(
                study_name, artifact_location=f"file://{os.path.abspath(artifact_root)}",
                tags={KIND_TAG: TRAINING_KIND})
        if KIND_TAG not in exp.tags:  # made by an older detbench; a kind set by hand stays
            self.client.set_experiment_tag(exp.experiment_id, KIND_TAG, TRAINING_KIND)
        return exp.experiment_id

    def start_parent(self, study_file: str, repo_root: str, params: Dict[str, Any], code_version: str,
                     description: Optional[str] = None, trials: Iterable[Dict[str, Any]] = ()) -> str:
        """The invocation's parent run. ``description``: its text in the UI (markdown);
        ``trials``: those this invocation runs, whose datasets the parent lists as inputs
        too, so the runs table shows them while the child runs are folded away."""
        tags = {STUDY_TAG: self.study_name, "mlflow.runName": f"{self.study_name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                "detbench.study_file": os.path.abspath(study_file), "mlflow.source.git.commit": git_commit(repo_root),
                "detbench.detectors_version": code_version}
        tags.update({f"version.{k}": v for k, v in package_versions().items()})
        if description:
            tags[NOTE_TAG] = description
        run = self.client.create_run(self.experiment_id, tags=tags)
        self.parent_run_id = run.info.run_id
        self.log_params(self.parent_run_id, params)
        inputs = dataset_inputs(trials)
        if inputs:
            self.client.log_inputs(self.parent_run_id, datasets=inputs)
        self.client.log_artifact(self.parent_run_id, study_file)
        return self.parent_run_id

    @_tolerant
    def set_experiment_tag(self, key: str, value: str) -> bool:
        """A tag of the study's experiment (``platform.track.reconcile``'s record of a sync); False
        if MLflow could not be told."""
        self.client.set_experiment_tag(self.experiment_id, key, value)
        return True

    @_tolerant
    def end_parent(self, status: str) -> bool:
        """End this invocation's parent run; False if MLflow could not be told."""
        if self.parent_run_id:
            self.client.set_terminated(self.parent_run_id, status=status)
        return True

    def find_child(self, config_hash: str) -> Optional[str]:
        """The child run an earlier attempt or invocation made for this config, if any."""
        if self.children is not None:
            return self.children.get(config_hash)
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{HASH_TAG}` = '{config_hash}'",
                                       max_results=1, order_by=["attributes.start_time DESC"])
        return runs[0].info.run_id if runs else None

    @_tolerant
    def start_child(self, trial: dict, reuse: bool = True, start_time: Optional[float] = None) -> str:
        """The trial's child run: a new one starting at ``start_time`` (epoch seconds, default
        now), or with ``reuse`` the run an earlier attempt made, which keeps its start time."""
        run_id = self.find_child(trial["config_hash"]) if reuse else None
        if run_id is None:
            start = millis(start_time) if start_time is not None else None
            tags = {"mlflow.runName": trial["trial_key"], HASH_TAG: trial["config_hash"], STUDY_TAG: self.study_name,
                    "detbench.variant": trial["variant"], "detbench.seed": str(trial["seed"])}
            if trial.get("tuning"):  # a tuning sample of the study (platform.runner.tuning)
                tags["detbench.stage"] = "tune"
            if self.parent_run_id:
                tags[PARENT_TAG] = self.parent_run_id
            run = self.client.create_run(self.experiment_id, start_time=start, tags=tags)
            run_id = run.info.run_id
            if self.children is not None:
                self.children[trial["config_hash"]] = run_id  # now the newest of its config
            params = {k: v for k, v in flatten(trial).items() if not k.startswith(("dataset.train_", "dataset.val_"))}
            self.log_params(run_id, params)
            self.client.log_inputs(run_id, datasets=[dataset_input(trial)])
        else:
            # Resumed in a later invocation: hang it under this invocation's parent.
            self.client.set_tag(run_id, PARENT_TAG, self.parent_run_id)
            self.client.update_run(run_id, status="RUNNING")
            if not self.client.get_run(run_id).inputs.dataset_inputs:  # a run of an older detbench
                self.client.log_inputs(run_id, datasets=[dataset_input(trial)])
        return run_id

    @_tolerant
    def start_run(self, name: str, tags: Dict[str, str], params: Dict[str, Any]) -> str:
        """A run of the study's that is no trial (the pretraining stage's), under this invocation's run."""
        tags = {"mlflow.runName": name, STUDY_TAG: self.study_name, **tags}
        if self.parent_run_id:
            tags[PARENT_TAG] = self.parent_run_id
        run_id = self.client.create_run(self.experiment_id, tags=tags).info.run_id
        self.log_params(run_id, params)
        return run_id

    @_tolerant
    def set_tags(self, run_id: str, tags: Dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v)[:5000])

    def log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        items = [Param(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in sorted(params.items())]
        items = [Param(p.key, p.value[:MAX_PARAM_LEN]) for p in items]
        for i in range(0, len(items), 100):  # MLflow's batch limit on params
            self.client.log_batch(run_id, params=items[i:i + 100])

    @_tolerant
    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int) -> None:
        self._log_steps(run_id, {step: metrics})

    @_tolerant
    def log_steps(self, run_id: str, steps: Dict[int, Dict[str, float]]) -> None:
        """Several steps' metrics (``{step: {name: value}}``) in as few ``log_batch`` calls as MLflow takes."""
        self._log_steps(run_id, steps)

    def _log_steps(self, run_id: str, steps: Dict[int, Dict[str, float]]) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k.replace("@", "_"), float(v), now, step) for step, metrics in steps.items()
                 for k, v in metrics.items()]
        for i in range(0, len(items), 1000):  # MLflow's batch limit on metrics
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    @_tolerant
    def log_artifacts(self, run_id: str, paths: Iterable[str], artifact_path: Optional[str] = None) -> None:
        for p in paths:
            if os.path.exists(p):
                self.client.log_artifact(run_id, p, artifact_path)

    @_tolerant
    def log_dict(self, run_id: str, obj: Any, name: str) -> None:
        self.client.log_dict(run_id, obj, name)

    @_tolerant
    def end_child(self, run_id: str, status: str, tags: Optional[Dict[str, str]] = None,
                  end_time: Optional[float] = None, duration_s: Optional[float] = None) -> None:
        """End a child run at ``end_time`` (epoch seconds, default now). ``duration_s``, the
        trial's duration (platform.runner.timing), is also logged as a metric: a run continued from
        an earlier invocation keeps that invocation's start time, so its own duration is longer."""
        for k, v in (tags or {}).items():
            self.client.set_tag(run_id, k, v[:5000])
        if duration_s is not None:
            self.client.log_metric(run_id, "duration_s", duration_s,
                                   timestamp=millis(end_time) if end_time is not None else None)
        self.client.set_terminated(run_id, status=status, end_time=millis(end_time) if end_time is not None else None)

    def ui_command(self) -> str:
        return f"mlflow ui --backend-store-uri '{self.tracking_uri}' --host 127.0.0.1 --port 5000"

    def experiment_url(self) -> str:
        """The study's runs table, on the tracking server or the ``mlflow ui`` of :meth:`ui_command`.
        MLflow 3.17's UI shows the view of a global switch (GenAI, the default, or model training)
        whatever the experiment's kind; the URL's workflowType sets the switch."""
        base = self.tracking_uri.rstrip("/") if is_server(self.tracking_uri) else "http://127.0.0.1:5000"
        return f"{base}/#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"

