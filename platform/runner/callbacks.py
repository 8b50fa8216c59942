"""Ray Tune callbacks of the driver: MLflow + results store, and the progress view.

They run in the driver process only (Tune calls callbacks there), which makes
the driver the single writer to MLflow's SQLite store and to the results store.

Tune schedules nothing while a callback runs, so the study callback keeps its
work there short (``python -m platform.bench --scale`` measures it per trial):
MLflow's writes go to the driver's writer thread (``platform.track.writer``), and
epoch reports reach the store as they come (``EPOCH_WRITE_S`` = 0: a finished epoch
is never lost, and a trial resumes after the last epoch it reported; a larger value
writes the epochs of every running trial in one transaction that often, and with
the trial's finished record, at the cost of up to that many seconds of epochs run
again after a killed driver: their checkpoints are dropped,
``platform.track.reconcile.prune_checkpoints``). What a killed driver can lose is
therefore MLflow writes (the next run's reconcile makes them again from the store);
never a finished trial or epoch.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, List, Optional, TextIO

from ray.tune import Callback

from dashboards.convergence import INPUT_KEY, input_dependence
from dashboards.errors import ERRORS_KEY, trial_errors
from detectors.evaluation.cocotools import bbox_ground_truth
from platform.runner.failures import last_failure, short_error
from platform.runner.timing import TrialClock
from platform.track.store import RawJSON
from platform.track.writer import Pending, TrackerWriter

# Keys Tune adds to every result; everything else in a result is ours.
TUNE_KEYS = {"timestamp", "training_iteration", "time_this_iter_s", "time_total_s", "pid", "hostname",
             "node_ip", "time_since_restore", "iterations_since_restore", "date", "config", "trial_id",
             "experiment_tag", "checkpoint_dir_name", "should_checkpoint", "done", "experiment_id",
             "episodes_total", "timesteps_total", "timesteps_since_restore", "warmup_time"}
ARTIFACTS = ("detections.json", "eval.json", "speed.json", "diagnostics.json", "model.pt")
EPOCH_WRITE_S = 0.0  # > 0: running trials' epoch reports go to the store at most this often, in one transaction


def our_metrics(result: Dict) -> Dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if k not in TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def trial_error_file(trial) -> Optional[str]:
    """What Tune wrote to the trial's error file (every failure of it so far), or None."""
    path = getattr(trial, "error_file", None)
    if path and os.path.exists(path):
        with open(path) as f:
            return f.read()
    return None


def trial_error_text(trial) -> str:
    """The trial's error in one line (``platform.runner.failures``): what killed its worker or
    node, or the last line of the worker's traceback."""
    text = trial_error_file(trial)
    return short_error(text) if text and text.strip() else "trial failed (no error file)"


def tuning_data(trial: dict, epoch_rows: List[dict]) -> Dict[str, dict]:
    """The trial data of a study with ``sweep.tune`` (``platform.runner.tuning``): a tuning sample's
    values with its score (AP on the held-out part at its last epoch), epochs and whether the
    scheduler stopped it early; a tuned trial's choice of sample."""
    if trial.get("tuned"):
        return {"tuned": trial["tuned"]}
    if not trial.get("tuning"):
        return {}
    scored = [r["val/AP"] for r in epoch_rows if r.get("val/AP") is not None]
    record = {k: v for k, v in trial["tuning"].items() if k != "max_epochs"}
    record.update(score=scored[-1] if scored else None, epochs=len(epoch_rows),
                  stopped_early=len(epoch_rows) < trial["tuning"].get("max_epochs", 0))
    return {"tuning": record}


class TrialErrors:
    """What the report pages derive from a finished trial's detections, computed on the study callback's
    second thread and stored beside its record: TIDE's error breakdown and the confusion counts
    (``dashboards.errors.trial_errors``, about 20 ms a trial, which every build of the pages would
    otherwise spend on every trial) and whether its top boxes follow the image
    (``dashboards.convergence.input_dependence``; with it stored, a build parses no trial's
    detections but those it draws). A trial whose results are missing (a driver killed first, a
    failure here) has them computed by the pages."""

    def __init__(self, store, study_name: str) -> None:
        self.store, self.study_name = store, study_name

    def record(self, config_hash: str, detections: str, gt: dict) -> None:
        try:
            dets = json.loads(detections)
            self.store.record_trial_data(self.study_name, config_hash, {ERRORS_KEY: trial_errors(gt, dets),
                                                                        INPUT_KEY: input_dependence(dets)})
        except Exception as exc:  # the pages compute it instead
            print(f"warning: the error breakdown of trial {config_hash[:12]} was not stored "
                  f"({type(exc).__name__}: {exc}); the report computes it", file=sys.stderr, flush=True)


def val_ground_truth(trial: dict) -> Optional[dict]:
    """What the pages' image bootstrap needs of the trial's val annotation file, so that
    the pages read the store alone; None when the file is gone."""
    path = (trial.get("dataset") or {}).get("val_annotations")
    if not (path and os.path.isfile(path)):
        return None
    with open(path) as f:
        return bbox_ground_truth(json.load(f))


class StudyCallback(Callback):
    """Child MLflow run per trial, per-epoch metrics, final artifacts, one store row per trial."""

    def __init__(self, study_name: str, tracker, store, force: bool = False,
                 clock: Optional[TrialClock] = None) -> None:
        self.study_name, self.tracker, self.store, self.force = study_name, tracker, store, force
        self.mlflow = TrackerWriter(tracker)   # the tracker's writes, off Tune's loop
        self.derived = TrackerWriter(TrialErrors(store, study_name), name="trial-errors")
        self.clock = clock or TrialClock()      # shared with ProgressCallback: one duration everywhere
        self.runs: Dict[str, Pending] = {}      # Tune trial id -> its MLflow run id, once the writer made it
        # running trial id -> step -> metrics of the epochs not in the store yet
        self.epochs: Dict[str, Dict[int, Dict[str, float]]] = {}
        self.specs: Dict[str, dict] = {}        # running trial id -> its trial dict, for those epochs' rows
        self.epochs_written = time.monotonic()
        self.ground_truths: Dict[tuple, Optional[dict]] = {}  # (val file, mtime, size) -> val_ground_truth
        self.attempts: Dict[str, int] = {}
        self._hash: Dict[str, str] = {}         # Tune trial id -> config hash
        self.nodes: Dict[str, List[str]] = {}   # Tune trial id -> Ray nodes that trained it, in order
        self.finished: List[dict] = []
        self.failed: List[dict] = []

    def _child(self, trial) -> str:
        tid = trial.trial_id
        if tid not in self.runs:
            spec, start = trial.config["trial"], self.clock.start(tid)
            # --force runs again on purpose: a fresh child run rather than appending to the old one.
            self.runs[tid] = self.mlflow.call("start_child", spec, reuse=not self.force, start_time=start)
            self._hash[tid] = spec["config_hash"]
            # the run id is not known yet (the writer thread asks MLflow for it): the finished or failed record names it
            self.store.mark_running(self.study_name, spec, self.runs[tid].value, started_at=start)
        return self.runs[tid]

    def _run_id(self, trial) -> Optional[str]:
        """The trial's MLflow run id, waiting for the writer to have made the run (None: MLflow is offline)."""
        return self._child(trial).result()

    def _val_ground_truth(self, spec: dict) -> Optional[dict]:
        """:func:`val_ground_truth`, read once per val file (its parse is 10 ms on 150 images, seconds on COCO)."""
        path = (spec.get("dataset") or {}).get("val_annotations")
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        key = (path, st.st_mtime_ns, st.st_size) if st else None
        if key not in self.ground_truths:
            self.ground_truths[key] = val_ground_truth(spec)
        return self.ground_truths[key]

    def _write_epochs(self, now: bool = False) -> None:
        """The epochs not in the store yet, in one transaction, once ``EPOCH_WRITE_S`` passed since the
        last (or ``now``)."""
        if not self.epochs or not (now or time.monotonic() - self.epochs_written >= EPOCH_WRITE_S):
            return
        self.store.record_epochs(self.study_name, [(self.specs[tid], steps) for tid, steps in self.epochs.items()])
        self.epochs.clear()
        self.epochs_written = time.monotonic()

    def flush(self) -> None:
        """Every MLflow write and stored error breakdown queued so far done (before the parent run ends,
        the speed phase writes or the report reads)."""
        self.mlflow.flush()
        self.derived.flush()

    def on_step_end(self, iteration, trials, **info):
        self._write_epochs()

    def on_experiment_end(self, trials, **info):
        self._write_epochs(now=True)
        self.flush()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        if trial.trial_id in self.runs:  # a retry after a crash: the store counts the attempt
            self.store.mark_running(self.study_name, trial.config["trial"], self.runs[trial.trial_id].value,
                                    started_at=self.clock.start(trial.trial_id))
        self._child(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        metrics = our_metrics(result)
        if not metrics:
            return
        # Rows and MLflow points are keyed by the global optimiser step: unique across a
        # trial's phases (epochs restart their count per phase only in the phase's own terms).
        step = int(metrics.get("step", result.get("training_iteration", 0)))
        node = result.get("node_id")
        if node and node not in self.nodes.setdefault(trial.trial_id, []):
            self.nodes[trial.trial_id].append(node)
            self.mlflow.call("set_tags", self._child(trial), {"detbench.nodes": ",".join(self.nodes[trial.trial_id])})
        if not metrics.pop("final", None):  # the worker's last report holds final metrics, not an epoch
            # stored (within EPOCH_WRITE_S): a run that resumes this trial after its driver died adds only later epochs
            self.epochs.setdefault(trial.trial_id, {})[step] = metrics
            self.specs[trial.trial_id] = trial.config["trial"]
            self._write_epochs()
        self.mlflow.call("log_metrics", self._child(trial), metrics, step)

    def on_trial_complete(self, iteration, trials, trial, **info):
        spec, run = trial.config["trial"], self._child(trial)
        duration, (start, end) = self.clock.stop(trial.trial_id), self.clock.span(trial.trial_id)
        final = our_metrics(trial.last_result or {})
        final.pop("final", None)
        ckpt_dir = trial.checkpoint.path if trial.checkpoint else None
        data = self._trial_data(ckpt_dir)
        self.mlflow.call("log_dict", run, spec, "resolved_config.json")
        if ckpt_dir:
            self.mlflow.call("log_artifacts", run, [os.path.join(ckpt_dir, f) for f in ARTIFACTS])
        if "per_class_ap" in data:
            table = {"class": list(data["per_class_ap"]), "AP": list(data["per_class_ap"].values())}
            self.mlflow.call("log_dict", run, table, "per_class_ap.json")
        if self.nodes.get(trial.trial_id):
            data["nodes"] = self.nodes[trial.trial_id]
        # one row per epoch report, keyed by its global optimiser step; "epoch" and "phase" are metrics in it.
        # The epochs not stored yet go with the finished record; those stored before (by this run, or an
        # earlier one whose driver died) stay. Dropped here: memory flat in the trials.
        unstored = self.epochs.pop(trial.trial_id, {})
        self.specs.pop(trial.trial_id, None)
        if spec.get("tuning"):  # a tuning sample's record counts every epoch
            unstored = {**self.store.trial_epochs(self.study_name, spec["config_hash"]), **unstored}
        epoch_rows = [{**m, "step": s} for s, m in sorted(unstored.items())]
        data.update(tuning_data(spec, epoch_rows))
        gt = self._val_ground_truth(spec)
        self.store.record_finished(self.study_name, spec, final, epoch_rows, data, self._run_id(trial), start, end,
                                   val_ground_truth=gt, keep_epochs=True)
        if gt is not None and "detections" in data:
            self.derived.call("record", spec["config_hash"], data["detections"], gt)
        self.mlflow.call("end_child", run, "FINISHED", end_time=end, duration_s=duration)
        self.finished.append({"trial": spec, "metrics": final})

    def on_trial_error(self, iteration, trials, trial, **info):
        spec, run = trial.config["trial"], self._child(trial)
        duration, (start, end) = self.clock.stop(trial.trial_id), self.clock.span(trial.trial_id)
        error = trial_error_text(trial)
        self.epochs.pop(trial.trial_id, None)  # a failed trial's rows are removed from the store too
        self.specs.pop(trial.trial_id, None)
        self.store.record_failed(self.study_name, spec, error, self._run_id(trial),
                                 self.attempts.get(trial.trial_id, 1), start, end)
        self.mlflow.call("end_child", run, "FAILED", {"detbench.error": error}, end_time=end, duration_s=duration)
        self.failed.append({"trial": spec, "error": error})

    def close_unfinished(self) -> int:
        """After an interruption: store the epochs still held, mark child runs of trials that
        neither finished nor failed as KILLED (a re-run resumes them in the same child run),
        and wait for MLflow's writes."""
        self._write_epochs(now=True)
        done = {f["trial"]["config_hash"] for f in self.finished + self.failed}
        open_runs = [(tid, run) for tid, run in self.runs.items() if self._hash.get(tid) not in done]
        for _, run in open_runs:
            self.mlflow.call("end_child", run, "KILLED")
        self.flush()
        return len(open_runs)

    @staticmethod
    def _trial_data(ckpt_dir: Optional[str]) -> dict:
        """What the worker left in its final checkpoint, for the report pages: metrics,
        per-class AP, PR curves (eval.json), speed, loss diagnostics, val detections."""
        data = {}
        for name, key in (("eval.json", None), ("speed.json", "speed"),
                          ("diagnostics.json", "loss_diagnostics"), ("detections.json", "detections")):
            path = os.path.join(ckpt_dir, name) if ckpt_dir else ""
            if not (path and os.path.exists(path)):
                continue
            with open(path) as f:
                if key == "detections":  # stored as the worker wrote it: only the pages parse it
                    data[key] = RawJSON(f.read())
                    continue
                obj = json.load(f)
            if key is None:
                data.update({k: v for k, v in obj.items() if k != "summary"})
            else:
                data[key] = obj
        return data


def _fmt(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressCallback(Callback):
    """A concise progress view in place of Tune's tables.

    One line when a trial starts, finishes or fails, and a status line at most
    every ``every`` seconds: done / running / pending / failed, best metric so
    far, elapsed and an ETA from the mean duration of finished trials.
    """

    def __init__(self, total: int, concurrency: int, metric: str = "AP50",
                 every: float = 30.0, out: TextIO = sys.stdout, clock: Optional[TrialClock] = None,
                 retries: int = 0, log: Optional[str] = None) -> None:
        self.total, self.concurrency, self.metric = total, max(1, concurrency), metric
        self.every, self.out = every, out
        self.retries = retries  # resources.max_failures: a trial runs at most 1 + retries times
        self.log = log          # the study's ray.log, where a failure's whole text goes
        self.attempts: Dict[str, int] = {}
        self.last_epoch: Dict[str, int] = {}  # trial id -> the last epoch it reported, as the lines number it
        self.clock = clock or TrialClock()  # trial durations: the same figures as the store and MLflow
        self.t0 = time.monotonic()
        self.last_line = 0.0
        self.begun: Dict[str, float] = {}
        self.durations: List[float] = []
        self.done = self.failed = 0
        self.best: Optional[tuple] = None

    def _say(self, text: str) -> None:
        print(f"[{_fmt(time.monotonic() - self.t0):>6}] {text}", file=self.out, flush=True)

    def status(self) -> str:
        running = len(self.begun)
        pending = self.total - self.done - self.failed - running
        elapsed = time.monotonic() - self.t0
        eta = "?"
        if self.durations:
            # Mean duration of finished trials for the pending ones, and what is left
            # of it for the running ones, spread over the concurrent slots.
            mean = sum(self.durations) / len(self.durations)
            now = self.clock.now()
            left = sum(max(0.0, mean - (now - t)) for t in self.begun.values()) + pending * mean
            eta = "~" + _fmt(left / self.concurrency)
        best = f"best {self.metric} {self.best[0]:.3f} ({self.best[1]})" if self.best else f"best {self.metric} -"
        return (f"{self.done}/{self.total} done, {running} running, {pending} pending, {self.failed} failed"
                f" | {best} | elapsed {_fmt(elapsed)}, ETA {eta}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.begun[trial.trial_id] = self.clock.start(trial.trial_id)
        self.attempts[trial.trial_id] = self.attempts.get(trial.trial_id, 0) + 1
        self._say(f"start  {trial.config['trial']['trial_key']}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if "epoch" in result and not result.get("final"):
            key = trial.config["trial"]["trial_key"]
            ap = result.get(f"val/{self.metric}")
            shown = f", val {self.metric} {ap:.3f}" if ap is not None else ""
            loss = result.get("train/loss", float("nan"))
            self.last_epoch[trial.trial_id] = int(result["epoch"]) + 1
            self._say(f"       {key}: epoch {self.last_epoch[trial.trial_id]}, loss {loss:.4f}{shown}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.begun.pop(trial.trial_id, None)
        self.durations.append(self.clock.stop(trial.trial_id))
        self.done += 1
        key = trial.config["trial"]["trial_key"]
        last = trial.last_result or {}
        value = last.get(self.metric, last.get(f"val/{self.metric}"))  # a tuning sample stopped at an epoch
        if value is not None and (self.best is None or value > self.best[0]):
            self.best = (value, key)
        shown = f"{self.metric} {value:.3f}" if value is not None else "no metric"
        self._say(f"done   {key}: {shown} in {_fmt(self.durations[-1])}")
        self._say(self.status())

    def on_trial_error(self, iteration, trials, trial, **info):
        self.begun.pop(trial.trial_id, None)
        self.failed += 1
        self._say(f"FAILED {trial.config['trial']['trial_key']}: {self._failure(trial)}; no retries left")
        self._say(self.status())

    def on_trial_recover(self, iteration, trials, trial, **info):
        tid = trial.trial_id
        epoch = self.last_epoch.get(tid)
        after = f" (after epoch {epoch})" if epoch else ""
        attempt = self.attempts.get(tid, 1) + 1
        self._say(f"retry  {trial.config['trial']['trial_key']}: {self._failure(trial)}; resuming from its last "
                  f"checkpoint{after}, attempt {attempt} of {1 + self.retries}")

    def _failure(self, trial) -> str:
        """The failure in one line (:func:`trial_error_text`); its whole text appended to ray.log."""
        text = trial_error_file(trial)
        if self.log and text:
            with open(self.log, "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} detbench trial {trial.config['trial']['trial_key']} "
                        f"(attempt {self.attempts.get(trial.trial_id, 1)}) failed:\n{last_failure(text)}\n")
        return trial_error_text(trial)

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now - self.last_line >= self.every:
            self.last_line = now
            self._say(self.status())
