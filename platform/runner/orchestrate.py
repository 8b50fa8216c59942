"""Run a validated study on Ray Tune: cache check, dataset, Ray, MLflow, store, report.

Only plain trial dicts cross into Ray; the trainable is
``detectors.train.trainable.tune_trainable``. Trials whose config hash already
finished (results store) are skipped unless ``--force``. After the trials, the
speed phase (``platform.runner.speed_phase``) measures each speed configuration alone.

A run, stage by stage (``_run_study``): check the services; open the store and
split the trials into cached and to run; bring MLflow up to date; if nothing is
left to run, the cached path; else start Ray and check a trial fits, run the
trials and the speed phase, and finish (the parent run's status, the summary,
the report, the exit code). Ray, MLflow and torch are imported only by the
stages that need them: a cached run that is in step starts neither.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional

from detectors.evaluation.speed_phase import uses_speed_phase
from platform.runner.cluster import (check_tracking_server, claim_study, describe_footprint, fitting_trials,
                              forget_local_ray, is_server, release_study, trial_request)
from platform.study.expand import detectors_code_version, resolve_dataset_paths
from platform.track.reconcile import in_sync, mark_synced, note_pending_parent, prune_checkpoints, reconcile
from platform.runner.pretrain import run_pretraining
from platform.runner.ray_start import ray_logs_to_file, start_ray
from platform.runner.speed_phase import pending, run_speed_phase, speed_groups
from platform.track.store import Store
from platform.runner.summary import print_summary, write_report
from platform.runner.timing import TrialClock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _CannotRun(Exception):
    """What stops a run before any trial starts; printed as ``error: <message>``, exit code 2."""


@dataclass
class _Run:
    """What the stages of one run share."""

    study: Any
    trials: List[dict]  # every trial of the study
    args: Any  # the command line (platform.run)
    store: Store
    todo: List[dict]  # the trials to run: not cached, or --force
    run_dir: str
    ray_log: str
    tracker: Any = None  # platform.track.tracking.StudyTracker, once MLflow is needed
    parent: Optional[str] = None  # the study's MLflow run
    recorder: Any = None  # platform.runner.callbacks.StudyCallback, once the trials start
    tuning: Any = None  # platform.runner.tuning.TuningPlan while a search of sweep.tune is unfinished
    interrupted: bool = False

    @property
    def local_ray(self) -> bool:
        return not (self.args.address or os.environ.get("RAY_ADDRESS"))


def run_study(study, trials: List[dict], args) -> int:
    """Run what is not cached, then summarise and build the report. Returns the exit code.
    One driver per study at a time (``platform.runner.cluster.claim_study``)."""
    run_dir = os.path.join(study.output.runs_dir, study.name)
    os.makedirs(run_dir, exist_ok=True)
    busy = claim_study(run_dir)
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 2
    try:
        return _run_study(study, trials, args)
    finally:
        release_study(run_dir)


def _run_study(study, trials: List[dict], args) -> int:
    """The stages of a run, in order (the module docstring); a stage that cannot go on raises _CannotRun."""
    try:
        run = _open_run(study, trials, args)
        _sync_mlflow(run)
        if not run.todo and run.tuning is None:
            return _cached_run(run)
        prune_checkpoints(run.store, study.name, run.todo, force=args.force)  # resume only from what the store saw
        with _ray_session(run):
            concurrency = _concurrency(run, _trials_that_fit(run))
            try:
                _run_trials_and_speed(run, concurrency)
            except KeyboardInterrupt:
                run.interrupted = True
    except _CannotRun as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _finish(run)


# --------------------------------------------------------------------------- the stages, in order


def _open_run(study, trials: List[dict], args) -> _Run:
    """The services checked, the store open, the trials split into cached and to run."""
    problem = _services(study)
    if problem:
        raise _CannotRun(problem)
    store = Store(study.tracking.store_url)
    trials, plan = _tuned(study, trials, store)
    todo = _not_finished(store, study.name, trials, args.force)
    if plan is None:
        print(f"study {study.name}: {len(trials)} trials, {len(trials) - len(todo)} cached, {len(todo)} to run")
    else:
        print(f"study {study.name}: {len(trials)} trials, run with each variant's values once it is tuned")
    run_dir = os.path.join(study.output.runs_dir, study.name)
    os.makedirs(run_dir, exist_ok=True)
    ray_log = os.path.join(run_dir, "ray.log")
    ray_logs_to_file(ray_log)  # (also quiets MLflow's start-up notices)
    return _Run(study, trials, args, store, todo, run_dir, ray_log, tuning=plan)


def _not_finished(store: Store, study_name: str, trials: List[dict], force: bool) -> List[dict]:
    finished = set() if force else store.finished_hashes(study_name)
    return [t for t in trials if t["config_hash"] not in finished]


def _tuned(study, trials: List[dict], store: Store):
    """A study with ``sweep.tune``: its trials with each variant's tuned values when every search
    is done, with the plan None; else the trials as written and the plan of the searches left."""
    if study.sweep.tune is None:
        return trials, None
    from platform.runner.tuning import TuningFailed, TuningPlan, tuned_trials

    plan = TuningPlan(study, store, trials)
    print(plan.describe())
    if not plan.complete:
        return trials, plan
    try:
        return tuned_trials(plan), None
    except TuningFailed as exc:
        raise _CannotRun(str(exc)) from None


def _services(study) -> str | None:
    """The results store, and the MLflow server if there is one, reachable? An error line, or None."""
    uri = study.tracking.mlflow_uri
    if is_server(uri):
        # a server that is down makes every call retry for minutes: a short, one-time check
        try:
            check_tracking_server(uri)
        except ConnectionError as exc:
            return f"cannot reach the MLflow tracking server at {uri}: {exc}"
        for var, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                           ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"), ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")):
            os.environ.setdefault(var, value)  # an outage mid-study costs seconds, not minutes, per call
    try:
        Store(study.tracking.store_url).close()
    except Exception as exc:  # SQLAlchemy wraps the driver's error
        first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
        return f"cannot open the results store at {study.tracking.store_url}: {first}"
    return None


def _sync_mlflow(run: _Run) -> None:
    """MLflow brought in step with the store after a killed run; skipped (and MLflow not even
    imported) when nothing is to run and the store and MLflow are known to be in step."""
    study, uri = run.study, run.study.tracking.mlflow_uri
    if not run.todo and in_sync(run.store, study.name, uri, run.run_dir):
        return
    try:
        run.tracker = _study_tracker(study)
        fixed = reconcile(run.tracker, run.store, study.name, run.run_dir)
    except Exception as exc:  # MLflow failing before anything started: one line, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise _CannotRun(f"MLflow at {uri}: {type(exc).__name__}: {first}") from None
    if any(fixed.values()):
        print(f"MLflow brought up to date from the results store: {fixed['parents']} earlier parent runs "
              f"ended, {fixed['children']} unfinished trial runs marked KILLED, {fixed['repaired']} finished "
              f"trials' runs completed")
    mark_synced(run.store, study.name, uri, run.run_dir, run.tracker)


def _cached_run(run: _Run) -> int:
    """Nothing to run: speed figures an earlier run left unmeasured, the summary and the report."""
    print("everything was cached: no trial ran (use --force to run them again)")
    _speed_phase_when_cached(run.study, run.store, run.trials, run.args)
    print_summary(run.store, run.study)
    return 0 if write_report(run.store, run.study) else 1


def _speed_phase_when_cached(study, store, trials: List[dict], args) -> None:
    """A cached run measures only speed figures an earlier run left unmeasured (interrupted,
    failed); Ray and MLflow start only then."""
    groups = speed_groups(store, study.name, trials, detectors_code_version())
    if not pending(groups):
        return
    import ray

    ray_log = os.path.join(study.output.runs_dir, study.name, "ray.log")
    os.makedirs(os.path.dirname(ray_log), exist_ok=True)

    def start() -> bool:
        ray_logs_to_file(ray_log)
        try:
            start_ray(args.address, os.path.dirname(ray_log))
        except ConnectionError as exc:
            print(f"speed: cannot reach the Ray cluster ({str(exc).splitlines()[0]}); speed not measured",
                  file=sys.stderr)
            return False
        ray_logs_to_file(ray_log)
        return True

    tracker = _study_tracker(study)
    try:
        run_speed_phase(store, study.name, groups, tracker=tracker, start_ray=start)
    except KeyboardInterrupt:
        print("interrupted: speed figures not measured yet are measured by the next run")
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _ray_session(run: _Run) -> Iterator[None]:
    """Ray started (or connected to) for the trials; on leaving, a local Ray stopped and forgotten,
    a cluster only disconnected from."""
    import ray

    try:
        start_ray(run.args.address, run.run_dir)
    except ConnectionError as exc:
        where = run.args.address or os.environ.get("RAY_ADDRESS")
        raise _CannotRun(f"cannot connect to the Ray cluster at {where}: {str(exc).splitlines()[0]}") from None
    ray_logs_to_file(run.ray_log)
    try:
        yield
    finally:
        ray.shutdown()
        if run.local_ray:
            forget_local_ray(run.run_dir)


def _trials_that_fit(run: _Run) -> int:
    """How many whole trials the Ray cluster holds at once; none is an error."""
    import ray

    res = run.study.resources
    cluster = ray.cluster_resources()
    fit = fitting_trials(res, cluster)
    if fit < 1:
        gpus = cluster.get("GPU", 0)
        have = f"{cluster.get('CPU', 0):g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
        raise _CannotRun(f"a trial of {run.study.name} needs {describe_footprint(res)} at once; the Ray cluster "
                         f"has {have} (resources in {run.args.study})")
    return fit


def _concurrency(run: _Run, fit: int) -> int:
    """Whole trials only: a multi-worker trial's workers are placed after its Tune trial starts,
    so more concurrent trials than fit would leave every one waiting (platform.runner.cluster)."""
    res = run.study.resources
    return min(len(run.todo), run.args.max_concurrent or res.max_concurrent or fit, fit)


def _run_trials_and_speed(run: _Run, concurrency: int) -> None:
    """The dataset, the study's MLflow run and store row, the trials on Tune, then the speed phase."""
    from platform.runner.callbacks import ProgressCallback, StudyCallback

    study, args = run.study, run.args
    run.todo = prepare_dataset(run.todo)
    _start_parent(run)
    run_pretraining(run.store, study.name, run.todo, run.tracker)  # backbones the trials start from, once
    if run.tuning is not None and not _tune(run, concurrency):
        return  # interrupted: the samples that finished are kept
    for t in run.todo:  # the worker leaves latency and throughput to the speed phase
        t["speed_phase"] = uses_speed_phase(t)
    clock = TrialClock()  # one start and end per trial for the progress line, the store and MLflow
    run.recorder = StudyCallback(study.name, run.tracker, run.store, force=args.force, clock=clock)
    progress = ProgressCallback(len(run.todo), concurrency, clock=clock, retries=study.resources.max_failures,
                                log=run.ray_log)
    if run.todo:  # (after tuning, every trial may be cached)
        print(f"running {len(run.todo)} trials, up to {concurrency} at a time; Ray logs: {run.ray_log}")
        run_trials(study, run.todo, [run.recorder, progress], concurrency)
        run.recorder.flush()  # the trials' MLflow writes done before the speed phase writes to their runs
    ran = {f["trial"]["config_hash"] for f in run.recorder.finished}
    groups = speed_groups(run.store, study.name, run.trials, detectors_code_version(), ran, args.force)
    run_speed_phase(run.store, study.name, groups, tracker=run.tracker)


def _tune(run: _Run, concurrency: int) -> bool:
    """The tuning stage (``platform.runner.tuning``): each variant's unfinished search, then the
    study's trials with each variant's best values. False if interrupted."""
    from platform.runner.callbacks import ProgressCallback, StudyCallback
    from platform.runner.tuning import TuningFailed, TuningPlan, run_searches, tuned_trials, tuning_study

    study, store = run.study, run.store
    name = tuning_study(study.name)
    store.upsert_study(name, f"tuning samples of {study.name}", study.model_dump(mode="json"),
                       os.path.abspath(run.args.study))
    clock = TrialClock()

    def callbacks(todo: int) -> list:
        run.recorder = StudyCallback(name, run.tracker, store, clock=clock)
        return [run.recorder, ProgressCallback(todo, min(concurrency, todo), metric="AP", clock=clock,
                                               retries=study.resources.max_failures, log=run.ray_log)]

    if not run_searches(run.tuning, prepare_dataset(run.trials), callbacks, concurrency):
        run.interrupted = True
        return False
    plan = TuningPlan(study, store, run.trials)
    try:
        run.trials = tuned_trials(plan)
    except TuningFailed as exc:
        raise _CannotRun(str(exc)) from None
    for label, choice in plan.choices().items():
        shown = ", ".join(f"{k}={v:.4g}" for k, v in choice["values"].items())
        print(f"tuned {label}: {shown} (sample {choice['sample']}, held-out AP {choice['score']:.3f})")
    run.todo = prepare_dataset(_not_finished(store, study.name, run.trials, run.args.force))
    run.recorder, run.tuning = None, None
    return True


def _start_parent(run: _Run) -> None:
    """The study's MLflow parent run, and its row in the store pointing at it."""
    from platform.track.tracking import study_description

    study, args, tracker, trials = run.study, run.args, run.tracker, run.trials
    report = os.path.join(study.output.reports_dir, study.name, "index.html")
    counts = {"trials": len(trials), "cached": len(trials) - len(run.todo), "force": bool(args.force)}
    run.parent = tracker.start_parent(args.study, REPO_ROOT, counts, detectors_code_version(),
                                      description=study_description(study, trials, report), trials=run.todo)
    tracker.tolerate = True  # from here on an MLflow outage does not stop the study
    store_args = (study.name, study.description, study.model_dump(mode="json"), os.path.abspath(args.study))
    run.store.upsert_study(*store_args, mlflow_experiment_id=tracker.experiment_id, last_parent_run_id=run.parent)


def _finish(run: _Run) -> int:
    """The parent run's status, the summary, failures, the report and where MLflow shows the study;
    the exit code: 0 all finished, 1 a trial failed or no report, 130 interrupted."""
    recorder = run.recorder
    if recorder is None:  # interrupted before any trial started
        print("interrupted before any trial started; nothing was run")
        return 130
    interrupted = run.interrupted or len(recorder.finished) + len(recorder.failed) < len(run.todo)
    if interrupted:
        recorder.close_unfinished()
    recorder.flush()  # every MLflow write of the trials done before the parent run ends
    _end_parent(run, "KILLED" if interrupted else ("FAILED" if recorder.failed else "FINISHED"))
    print_summary(run.store, run.study)
    for f in recorder.failed:
        print(f"failed: {f['trial']['trial_key']}: {f['error']}")
    report_ok = write_report(run.store, run.study) is not None
    if is_server(run.study.tracking.mlflow_uri):
        print(f"MLflow: {run.tracker.experiment_url()}")
    else:
        print(f"MLflow UI: {run.tracker.ui_command()}")
        print(f"  then open {run.tracker.experiment_url()}")
    if interrupted:
        print(f"interrupted: {len(recorder.finished)} finished trials are kept; run the same command to resume")
        return 130
    return 1 if recorder.failed or not report_ok else 0


def _end_parent(run: _Run, status: str) -> None:
    """Tell MLflow how the study's run ended, or leave a note for the next run to tell it."""
    if not run.tracker.end_parent(status):
        note_pending_parent(run.run_dir, run.parent, status)  # the next run tells MLflow (platform.track.reconcile)
    elif not run.tracker.offline and status != "KILLED":
        mark_synced(run.store, run.study.name, run.study.tracking.mlflow_uri, run.run_dir, run.tracker)  # all in MLflow


# --------------------------------------------------------------------------- Ray, Tune, the dataset, MLflow


def run_trials(study, trials: List[dict], callbacks, concurrency: int, trainable=None):
    """One Tune trial per trial dict, at most ``concurrency`` at a time; returns the ResultGrid.
    ``trainable``: ``detectors.train.trainable.tune_trainable`` unless given (the scale benchmark
    passes a stand-in, ``platform.bench.standin``; a study has no way to)."""
    from ray import tune

    if trainable is None:
        from detectors.train.trainable import tune_trainable as trainable

    res = study.resources
    resources = trial_request(res)  # a multi-worker trial's workers ask for themselves (platform.runner.cluster)
    run_config = tune.RunConfig(
        name=f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        storage_path=os.path.join(study.output.runs_dir, study.name, "tune"),
        failure_config=tune.FailureConfig(max_failures=res.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=callbacks,
        verbose=0,
        log_to_file=True,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={"trial": tune.grid_search(trials)},
        # A fresh worker per trial (Tune's default). Reusing workers saves the torch import (about 2 s a
        # trial on an idle machine), but Tune runs each trial in a new thread and glibc gives each thread
        # a new malloc arena: a reused worker's memory grew about 100 MB a trial (capping the arenas
        # stopped that and cost about 3% of training speed). Measured in platform.bench's terms, 2026-11.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrency,
                                    trial_name_creator=lambda t: t.config["trial"]["config_hash"][:12],
                                    trial_dirname_creator=lambda t: t.config["trial"]["config_hash"][:12]),
        run_config=run_config,
    )
    return tuner.fit()


def prepare_dataset(trials: List[dict]) -> List[dict]:
    """Generate (or find cached) each synthetic set once, before any worker starts."""
    from detectors.data.synthetic import generate

    def make(params: dict) -> dict:
        t0 = time.monotonic()
        paths = generate(params, trials[0]["dataset"]["cache_dir"])
        print(f"dataset: {os.path.basename(paths['root'])} ready in {time.monotonic() - t0:.1f}s")
        return paths

    return resolve_dataset_paths(trials, make)


def _study_tracker(study):
    from platform.track.tracking import StudyTracker

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its import set INFO: no table-creation lines
    return StudyTracker(study.tracking.mlflow_uri, study.name, os.path.join(study.output.runs_dir, "mlartifacts"))
