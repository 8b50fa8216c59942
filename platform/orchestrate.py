"""Run a validated study on Ray Tune: cache check, dataset, Ray, MLflow, store, report.

Only plain trial dicts cross into Ray; the trainable is
``detectors.trainable.tune_trainable``. Trials whose config hash already
finished (results store) are skipped unless ``--force``. After the trials, the
speed phase (``platform.speed_phase``) measures each speed configuration alone.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ray_logs_to_file(path: str) -> None:
    """Ray's own log lines go to a file under the run directory, not the terminal."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    # Tune's newer console output prints tables whatever the verbosity; the
    # classic one honours verbose=0, and ProgressCallback prints instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # ray.init() resets the "ray" logger's handlers, so this runs again after it; the
    # start-up auth notice comes from a child logger during init, hence named here.
    for name in ("ray", "ray.tune", "ray.train", "ray.data",
                 "ray._private.authentication.authentication_token_setup"):
        lg = logging.getLogger(name)
        lg.handlers = [handler]
        lg.propagate = False
        lg.setLevel(logging.INFO)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on an address nothing listens at: ray.init would retry for minutes."""
    import socket

    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConnectionError(f"expected HOST:PORT, ray://HOST:PORT or auto, got '{address}'")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {host}:{port} ({exc.strerror or exc})") from None


def _start_ray(address: str | None, run_dir: str) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray with this machine's CPUs
    (after stopping what a killed earlier driver of this study left of its own)."""
    import ray

    from platform.cluster import record_local_ray, stop_stale_local_ray

    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    if address:
        _check_reachable(address)
        # Ship the worker package to the cluster; driver code never travels.
        ray.init(address=address, runtime_env={"py_modules": [os.path.join(REPO_ROOT, "detectors")]}, **kwargs)
    else:
        stopped = stop_stale_local_ray(run_dir)
        if stopped:
            print(f"stopped {stopped} processes left of the local Ray of an earlier run that was killed")
        # "local": always a fresh Ray of our own, never a cluster some earlier `ray start` left registered
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)
        record_local_ray(run_dir)


def run_trials(study, trials: List[dict], callbacks, concurrency: int):
    """One Tune trial per trial dict, at most ``concurrency`` at a time; returns the ResultGrid."""
    from ray import tune

    from detectors.trainable import tune_trainable
    from platform.cluster import trial_request

    res = study.resources
    resources = trial_request(res)  # a multi-worker trial's workers ask for themselves (platform.cluster)
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
        tune.with_resources(tune_trainable, resources),
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
    from platform.expand import resolve_dataset_paths

    def make(params: dict) -> dict:
        t0 = time.monotonic()
        paths = generate(params, trials[0]["dataset"]["cache_dir"])
        print(f"dataset: {os.path.basename(paths['root'])} ready in {time.monotonic() - t0:.1f}s")
        return paths

    return resolve_dataset_paths(trials, make)


def _study_tracker(study):
    from platform.tracking import StudyTracker

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its import set INFO: no table-creation lines
    return StudyTracker(study.tracking.mlflow_uri, study.name, os.path.join(study.output.runs_dir, "mlartifacts"))


def _speed_phase_when_cached(study, store, trials: List[dict], args) -> None:
    """A cached run measures only speed figures an earlier run left unmeasured (interrupted,
    failed); Ray and MLflow start only then."""
    from platform.expand import detectors_code_version
    from platform.speed_phase import pending, run_speed_phase, speed_groups

    groups = speed_groups(store, study.name, trials, detectors_code_version())
    if not pending(groups):
        return
    import ray

    ray_log = os.path.join(study.output.runs_dir, study.name, "ray.log")
    os.makedirs(os.path.dirname(ray_log), exist_ok=True)

    def start() -> bool:
        _ray_logs_to_file(ray_log)
        try:
            _start_ray(args.address, os.path.dirname(ray_log))
        except ConnectionError as exc:
            print(f"speed: cannot reach the Ray cluster ({str(exc).splitlines()[0]}); speed not measured",
                  file=sys.stderr)
            return False
        _ray_logs_to_file(ray_log)
        return True

    tracker = _study_tracker(study)
    try:
        run_speed_phase(store, study.name, groups, tracker=tracker, start_ray=start)
    except KeyboardInterrupt:
        print("interrupted: speed figures not measured yet are measured by the next run")
    finally:
        ray.shutdown()


def _services(study) -> str | None:
    """The results store, and the MLflow server if there is one, reachable? An error line, or None."""
    from platform.cluster import check_tracking_server, is_server
    from platform.store import Store

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


def run_study(study, trials: List[dict], args) -> int:
    """Run what is not cached, then summarise and build the report. Returns the exit code.
    One driver per study at a time (``platform.cluster.claim_study``)."""
    from platform.cluster import claim_study, release_study

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
    from platform.reconcile import in_sync, mark_synced, note_pending_parent, prune_checkpoints, reconcile
    from platform.store import Store
    from platform.summary import print_summary, write_report
    from platform.cluster import is_server

    problem = _services(study)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    store = Store(study.tracking.store_url)
    finished = set() if args.force else store.finished_hashes(study.name)
    todo = [t for t in trials if t["config_hash"] not in finished]
    print(f"study {study.name}: {len(trials)} trials, {len(trials) - len(todo)} cached, {len(todo)} to run")
    run_dir = os.path.join(study.output.runs_dir, study.name)
    os.makedirs(run_dir, exist_ok=True)
    ray_log = os.path.join(run_dir, "ray.log")
    _ray_logs_to_file(ray_log)  # (also quiets MLflow's start-up notices)
    uri = study.tracking.mlflow_uri
    if todo or not in_sync(store, study.name, uri, run_dir):  # in step: a cached run needs no MLflow
        try:
            tracker = _study_tracker(study)
            fixed = reconcile(tracker, store, study.name, run_dir)  # MLflow from the store, after a killed run
        except Exception as exc:  # MLflow failing before anything started: one line, not a traceback
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            print(f"error: MLflow at {uri}: {type(exc).__name__}: {first}", file=sys.stderr)
            return 2
        if any(fixed.values()):
            print(f"MLflow brought up to date from the results store: {fixed['parents']} earlier parent runs "
                  f"ended, {fixed['children']} unfinished trial runs marked KILLED, {fixed['repaired']} finished "
                  f"trials' runs completed")
        mark_synced(store, study.name, uri, run_dir)
    if not todo:
        print("everything was cached: no trial ran (use --force to run them again)")
        _speed_phase_when_cached(study, store, trials, args)
        print_summary(store, study)
        return 0 if write_report(store, study) else 1
    prune_checkpoints(store, study.name, todo, force=args.force)  # resume only from what the store saw

    import ray

    from platform.callbacks import ProgressCallback, StudyCallback
    from detectors.speed_phase import uses_speed_phase
    from platform.cluster import describe_footprint, fitting_trials, forget_local_ray
    from platform.expand import detectors_code_version
    from platform.speed_phase import run_speed_phase, speed_groups
    from platform.timing import TrialClock
    from platform.tracking import study_description

    try:
        _start_ray(args.address, run_dir)
    except ConnectionError as exc:
        where = args.address or os.environ.get("RAY_ADDRESS")
        print(f"error: cannot connect to the Ray cluster at {where}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    _ray_logs_to_file(ray_log)
    local_ray = not (args.address or os.environ.get("RAY_ADDRESS"))
    res = study.resources
    cluster = ray.cluster_resources()
    fit = fitting_trials(res, cluster)
    if fit < 1:
        ray.shutdown()
        if local_ray:
            forget_local_ray(run_dir)
        gpus = cluster.get("GPU", 0)
        have = f"{cluster.get('CPU', 0):g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")
        print(f"error: a trial of {study.name} needs {describe_footprint(res)} at once; the Ray cluster has {have} "
              f"(resources in {args.study})", file=sys.stderr)
        return 2
    interrupted, recorder = False, None
    try:
        todo = prepare_dataset(todo)
        for t in todo:  # the worker leaves latency and throughput to the speed phase
            t["speed_phase"] = uses_speed_phase(t)
        report = os.path.join(study.output.reports_dir, study.name, "index.html")
        parent = tracker.start_parent(args.study, REPO_ROOT, {"trials": len(trials), "cached": len(trials) - len(todo),
                                                               "force": bool(args.force)}, detectors_code_version(),
                                      description=study_description(study, trials, report), trials=todo)
        tracker.tolerate = True  # from here on an MLflow outage does not stop the study
        store.upsert_study(study.name, study.description, study.model_dump(mode="json"), os.path.abspath(args.study),
                           mlflow_experiment_id=tracker.experiment_id, last_parent_run_id=parent)
        # Whole trials only: a multi-worker trial's workers are placed after its Tune trial starts,
        # so more concurrent trials than fit would leave every one waiting (platform.cluster).
        concurrency = min(len(todo), args.max_concurrent or res.max_concurrent or fit, fit)
        clock = TrialClock()  # one start and end per trial for the progress line, the store and MLflow
        recorder = StudyCallback(study.name, tracker, store, force=args.force, clock=clock)
        progress = ProgressCallback(len(todo), concurrency, clock=clock)
        print(f"running {len(todo)} trials, up to {concurrency} at a time; Ray logs: {ray_log}")
        run_trials(study, todo, [recorder, progress], concurrency)
        ran = {f["trial"]["config_hash"] for f in recorder.finished}
        run_speed_phase(store, study.name, speed_groups(store, study.name, trials, detectors_code_version(), ran,
                                                        args.force), tracker=tracker)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ray.shutdown()  # stops a local Ray; only disconnects from a cluster
        if local_ray:
            forget_local_ray(run_dir)
    if recorder is None:  # interrupted before any trial started
        print("interrupted before any trial started; nothing was run")
        return 130
    interrupted = interrupted or len(recorder.finished) + len(recorder.failed) < len(todo)
    if interrupted:
        recorder.close_unfinished()
    status = "KILLED" if interrupted else ("FAILED" if recorder.failed else "FINISHED")
    if not tracker.end_parent(status):
        note_pending_parent(run_dir, parent, status)  # the next run tells MLflow (platform.reconcile)
    elif not tracker.offline and not interrupted:
        mark_synced(store, study.name, uri, run_dir)  # every trial's run and figure reached MLflow

    print_summary(store, study)
    for f in recorder.failed:
        print(f"failed: {f['trial']['trial_key']}: {f['error']}")
    report_ok = write_report(store, study) is not None
    if is_server(study.tracking.mlflow_uri):
        print(f"MLflow: {tracker.experiment_url()}")
    else:
        print(f"MLflow UI: {tracker.ui_command()}")
        print(f"  then open {tracker.experiment_url()}")
    if interrupted:
        print(f"interrupted: {len(recorder.finished)} finished trials are kept; run the same command to resume")
        return 130
    return 1 if recorder.failed or not report_ok else 0
