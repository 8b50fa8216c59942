"""Run a validated study on Ray Tune: cache check, dataset, Ray, MLflow, store, report.

Only plain trial dicts cross into Ray; the trainable is
``detectors.trainable.tune_trainable``. Trials whose config hash already
finished (results store) are skipped unless ``--force``.
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


def _start_ray(address: str | None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray with this machine's CPUs."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(log_to_driver=False, logging_level=logging.WARNING, configure_logging=False)
    if address:
        _check_reachable(address)
        # Ship the worker package to the cluster; driver code never travels.
        ray.init(address=address, runtime_env={"py_modules": [os.path.join(REPO_ROOT, "detectors")]}, **kwargs)
    else:
        # "local": always a fresh Ray of our own, never a cluster some earlier `ray start` left registered
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, **kwargs)


def run_trials(study, trials: List[dict], callbacks, max_concurrent: int | None):
    """One Tune trial per trial dict; returns the ResultGrid."""
    from ray import tune

    from detectors.trainable import tune_trainable

    res = study.resources
    resources = {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}
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
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or res.max_concurrent,
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


def run_study(study, trials: List[dict], args) -> int:
    """Run what is not cached, then summarise and build the report. Returns the exit code."""
    from platform.store import Store
    from platform.summary import print_summary, write_report

    store = Store(study.tracking.store_url)
    finished = set() if args.force else store.finished_hashes(study.name)
    todo = [t for t in trials if t["config_hash"] not in finished]
    print(f"study {study.name}: {len(trials)} trials, {len(trials) - len(todo)} cached, {len(todo)} to run")
    if not todo:
        print("everything was cached: no trial ran (use --force to run them again)")
        print_summary(store, study)
        return 0 if write_report(store, study) else 1

    import ray

    from platform.callbacks import ProgressCallback, StudyCallback
    from platform.expand import detectors_code_version
    from platform.timing import TrialClock
    from platform.tracking import StudyTracker, study_description

    run_dir = os.path.join(study.output.runs_dir, study.name)
    os.makedirs(run_dir, exist_ok=True)
    ray_log = os.path.join(run_dir, "ray.log")
    _ray_logs_to_file(ray_log)
    try:
        _start_ray(args.address)
    except ConnectionError as exc:
        where = args.address or os.environ.get("RAY_ADDRESS")
        print(f"error: cannot connect to the Ray cluster at {where}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    _ray_logs_to_file(ray_log)
    interrupted, recorder = False, None
    try:
        todo = prepare_dataset(todo)
        tracker = StudyTracker(study.tracking.mlflow_uri, study.name,
                               os.path.join(study.output.runs_dir, "mlartifacts"))
        report = os.path.join(study.output.reports_dir, study.name, "index.html")
        parent = tracker.start_parent(args.study, REPO_ROOT, {"trials": len(trials), "cached": len(trials) - len(todo),
                                                               "force": bool(args.force)}, detectors_code_version(),
                                      description=study_description(study, trials, report), trials=todo)
        store.upsert_study(study.name, study.description, study.model_dump(mode="json"), os.path.abspath(args.study),
                           mlflow_experiment_id=tracker.experiment_id, last_parent_run_id=parent)
        cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
        concurrency = min(len(todo), args.max_concurrent or study.resources.max_concurrent
                          or max(1, int(cpus // max(study.resources.cpus_per_trial, 1e-9))))
        clock = TrialClock()  # one start and end per trial for the progress line, the store and MLflow
        recorder = StudyCallback(study.name, tracker, store, force=args.force, clock=clock)
        progress = ProgressCallback(len(todo), concurrency, clock=clock)
        print(f"running {len(todo)} trials, up to {concurrency} at a time; Ray logs: {ray_log}")
        run_trials(study, todo, [recorder, progress], args.max_concurrent)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        ray.shutdown()  # stops a local Ray; only disconnects from a cluster
    if recorder is None:  # interrupted before any trial started
        print("interrupted before any trial started; nothing was run")
        return 130
    interrupted = interrupted or len(recorder.finished) + len(recorder.failed) < len(todo)
    if interrupted:
        recorder.close_unfinished()
    status = "KILLED" if interrupted else ("FAILED" if recorder.failed else "FINISHED")
    tracker.end_parent(status)

    print_summary(store, study)
    for f in recorder.failed:
        print(f"failed: {f['trial']['trial_key']}: {f['error']}")
    report_ok = write_report(store, study) is not None
    print(f"MLflow UI: {tracker.ui_command()}")
    print(f"  then open {tracker.experiment_url()}")
    if interrupted:
        print(f"interrupted: {len(recorder.finished)} finished trials are kept; run the same command to resume")
        return 130
    return 1 if recorder.failed or not report_ok else 0
