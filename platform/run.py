"""``python -m platform.run STUDY``: run a study (the command-line front only).

The study is validated and expanded before anything heavy is imported or
anything is written; a bad file costs a fraction of a second and exits 2.
The work itself is ``platform.runner.orchestrate.run_study``.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

EPILOG = """\
what happens:
  1. STUDY is validated (unknown keys, types, detector/loss names and their
     parameters, swept keys and values), and a COCO dataset's annotation files
     are parsed and checked (schema, ids, boxes, image files); any problem is
     one line naming the file and key or record, and exits 2 before anything
     is written.
  2. The sweep expands to trials (variants x grid x seeds), each with a hash of
     everything that decides its result.
  3. Trials whose hash already finished (results store) are skipped; the rest
     run on Ray Tune, each logged as an MLflow child run of the study's run.
  4. A summary table is printed and the report written under output.reports_dir.

exit codes: 0 all trials finished (or cached), 1 some trial failed,
            2 invalid study file or arguments, 130 interrupted.

examples:
  python -m platform.run studies/smoke.yaml --dry-run
  python -m platform.run studies/focal_gamma_sweep.yaml --max-concurrent 2
  python -m platform.run studies/focal_gamma_sweep.yaml --address ray://head:10001
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m platform.run",
        description="Run a detbench study: a grid of detector/loss variants x seeds on Ray Tune, "
                    "tracked in MLflow, results in the SQL store, report pages under reports/.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", metavar="STUDY", help="study file (YAML), e.g. studies/smoke.yaml")
    parser.add_argument("--address", metavar="ADDR", default=None,
                        help="Ray cluster to connect to (e.g. ray://head:10001 or auto); default: "
                             "$RAY_ADDRESS, else a local Ray started for this run")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and list the trials with their hashes and whether a finished "
                             "result is cached; starts nothing and writes nothing")
    parser.add_argument("--force", action="store_true",
                        help="run every trial again, even those whose finished result is cached")
    parser.add_argument("--max-concurrent", metavar="N", type=_positive_int, default=None,
                        help="run at most N trials at a time (overrides resources.max_concurrent; "
                             "does not change trial hashes)")
    return parser


def _cached_hashes(study) -> set:
    """Finished hashes from the store, read-only; empty if its SQLite file does not exist yet."""
    try:
        store = _readonly_store(study)
        if store is None:
            return set()
        try:
            return store.finished_hashes(study.name)
        finally:
            store.close()
    except Exception as e:  # a store we cannot read must not stop a dry run
        print(f"warning: could not read the results store ({type(e).__name__}: {e}); "
              f"showing every trial as not cached", file=sys.stderr)
        return set()


def _tuned_for_dry_run(study, trials: List[dict]) -> List[dict]:
    """A study with ``sweep.tune``: the state of its searches, and its trials with their tuned
    values once every search is done (until then, as written: their hashes change after tuning)."""
    if study.sweep.tune is None:
        return trials
    from platform.runner.tuning import TuningFailed, TuningPlan, tuned_trials

    store = _readonly_store(study)
    plan = TuningPlan(study, store, trials) if store else None
    if store:
        store.close()
    if plan is None:
        print(f"tuning: {len(trials) // len(study.sweep.seeds)} variants x {study.sweep.tune.samples} samples, "
              "none done; the trials below run with each variant's tuned values")
        return trials
    print(plan.describe())
    if not plan.complete:
        print("the trials below run with each variant's tuned values once it is tuned (their hashes change)")
        return trials
    try:
        return tuned_trials(plan)
    except TuningFailed as exc:
        print(f"warning: {exc}", file=sys.stderr)
        return trials


def _readonly_store(study):
    """The results store opened read-only, or None if its SQLite file does not exist yet."""
    from sqlalchemy.engine import make_url

    from platform.track.store import Store

    url = make_url(study.tracking.store_url)
    if url.get_backend_name() == "sqlite" and not (url.database and os.path.isfile(url.database)):
        return None
    return Store(study.tracking.store_url, readonly=True)


def check_local_resources(study, address: Optional[str]) -> None:
    """Without a cluster, Ray starts here with this machine's CPUs and GPUs; a trial asking for
    more would wait for them forever (Tune only logs a warning). Raises StudyError."""
    from platform.study.load import StudyError

    if address or os.environ.get("RAY_ADDRESS"):
        return  # a cluster may have (or autoscale to) more
    res = study.resources
    cpus = os.cpu_count() or 1
    if res.workers_per_trial > 1:  # its workers and its own process at once (platform.runner.cluster)
        from platform.runner.cluster import describe_footprint, trial_footprint

        need_cpus, need_gpus = trial_footprint(res)
        gpus = 0
        if need_gpus:
            import torch

            gpus = torch.cuda.device_count()
        if need_cpus > cpus or need_gpus > gpus:
            have = f"{cpus} CPUs" + (f" and {gpus} GPUs" if need_gpus else "")
            raise StudyError(study.source, "resources.workers_per_trial",
                             f"a trial takes {describe_footprint(res)}, but this machine has {have}; "
                             "lower it, or pass --address to run on a cluster")
    if res.cpus_per_trial > cpus:
        raise StudyError(study.source, "resources.cpus_per_trial",
                         f"{res.cpus_per_trial:g} CPUs per trial, but this machine has {cpus} (a local Ray "
                         "gets them all); lower it, or pass --address to run on a cluster")
    if res.gpus_per_trial > 0:
        import torch

        gpus = torch.cuda.device_count()
        if res.gpus_per_trial > gpus:
            raise StudyError(study.source, "resources.gpus_per_trial",
                             f"{res.gpus_per_trial:g} GPUs per trial, but this machine has {gpus}; lower it, "
                             "or pass --address to run on a cluster")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    from platform.study.datasets import check_datasets
    from platform.study.expand import describe
    from platform.study.memo import load_expanded, remember
    from platform.study.load import StudyError

    try:
        # the validated expansion of an unchanged file is remembered (platform.study.memo): no torch import
        study, trials, remembered = load_expanded(args.study)
        check_local_resources(study, args.address)
        # COCO annotation files parsed and checked here, not in a worker after Ray started (a passed
        # check is remembered; a dry run reads but writes no verdict)
        checked = check_datasets(study, trials, write=not args.dry_run)
    except StudyError as e:
        for line in getattr(e, "lines", [str(e)]):  # a dataset's faults: one line each
            print(f"error: {line}", file=sys.stderr)
        return 2
    if not args.dry_run:
        for line in checked:
            print(line)
    if not remembered and not args.dry_run:
        try:
            remember(args.study, study, trials)
        except OSError as e:  # only a cache: a run without it validates again next time
            print(f"warning: could not remember the validated study ({e})", file=sys.stderr)
    if args.max_concurrent is not None:
        study.resources.max_concurrent = args.max_concurrent

    if args.dry_run:
        trials = _tuned_for_dry_run(study, trials)
        print(f"study {study.name} ({args.study}): {len(trials)} trials")
        print(f"  runs: {study.output.runs_dir}  reports: {study.output.reports_dir}")
        print(f"  store: {study.tracking.store_url}  mlflow: {study.tracking.mlflow_uri}")
        print(describe(trials, _cached_hashes(study), force=args.force))
        print("dry run: nothing was started or written")
        return 0

    from platform.runner.orchestrate import run_study

    return run_study(study, trials, args)


if __name__ == "__main__":
    sys.exit(main())
