"""The tuning stage of a study with ``sweep.tune``: the same search budget for every variant.

    plan = TuningPlan(study, store)       # what the store already holds of each variant's search
    if not plan.complete:
        run_searches(plan, study, trials, callbacks_for, concurrency)
    trials = expand(study, plan.choices())   # each variant's best values, over the study's seeds

For each variant in turn, one Ray Tune run: Optuna (its TPE sampler, or its random
sampler) draws ``samples`` configurations of the searched keys and ASHA stops the poor
ones early, at the epochs of its rungs. A sample is a trial dict
(``platform.study.expand.tuning_trial``) trained by the same trainable as every trial,
at the search's seed, on train minus a held-out part (``detectors.data.holdout``), and
scored by AP on that part after every epoch: the val set the report scores is never
seen by the search. Samples are stored under ``<study>.tune`` in the results store
(``Store.TUNING_SUFFIX``) and are MLflow child runs of the study's run, tagged
``detbench.stage=tune``.

A search is known by its variant's untuned trial and the tuning settings except the
number of samples (``search_key``): a rerun finds the samples it finished, tells the
searcher their values and scores, and draws only the rest (so raising ``samples``
adds samples). Each variant takes the values of its best sample: the highest score,
the earliest sample on a tie. An early-stopped sample counts with the score it had
when stopped, as ASHA saw it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np

from platform.study.expand import config_hash, expand, tuning_trial, variant_plans
from platform.track.store import Store

METRIC = "val/AP"  # what the search maximises: COCO AP on the held-out part of train


def tuning_study(name: str) -> str:
    """The results store's name for a study's tuning samples."""
    return name + Store.TUNING_SUFFIX


@dataclass
class Search:
    """One variant's search: its label and overrides, its key, and the samples the store has."""

    label: str
    overrides: Dict[str, Any]
    key: str
    done: List[dict] = field(default_factory=list)  # "tuning" records of finished samples, by sample

    def best(self) -> Optional[dict]:
        scored = [r for r in self.done if r.get("score") is not None]
        return min(scored, key=lambda r: (-r["score"], r["sample"])) if scored else None


class TuningPlan:
    """Every variant's search for a study with ``sweep.tune``, and what the store holds of each."""

    def __init__(self, study, store: Store, untuned: List[dict]) -> None:
        self.study, self.spec = study, study.sweep.tune
        settings = self.spec.model_dump(mode="json", exclude={"samples"})
        first = {}  # label -> the variant's first untuned trial: its hash names the variant's config
        for t in untuned:
            first.setdefault(t["variant"], t)
        records = store.trial_data(tuning_study(study.name), "tuning")
        self.searches = []
        for label, overrides in variant_plans(study):
            key = config_hash({"variant": first[label]["config_hash"], "tune": settings})
            done = sorted((r for r in records.values() if r.get("search") == key), key=lambda r: r["sample"])
            self.searches.append(Search(label, overrides, key, done))

    @property
    def complete(self) -> bool:
        return all(len(s.done) >= self.spec.samples for s in self.searches)

    def samples_done(self) -> int:
        return sum(min(len(s.done), self.spec.samples) for s in self.searches)

    def choices(self) -> Dict[str, dict]:
        """Variant label -> the sample it takes: ``{"sample", "values", "score", "samples"}``. Raises
        TuningFailed for a variant none of whose samples finished with a score."""
        out = {}
        for s in self.searches:
            best = s.best()
            if best is None:
                raise TuningFailed(f"tuning: no sample of variant '{s.label}' finished with a score "
                                   f"({len(s.done)} finished); its trials cannot take tuned values")
            out[s.label] = {"sample": best["sample"], "values": best["values"], "score": best["score"],
                            "samples": self.spec.samples}  # the tuning budget, part of what a result cost
        return out

    def describe(self) -> str:
        """One line for ``--dry-run`` and the start of a run."""
        sp = self.spec
        keys = ", ".join(f"{k} [{r.low:g}, {r.high:g}]{' log' if r.log else ''}" for k, r in sp.space.items())
        how = ("Optuna TPE" if sp.search == "optuna" else "random search") + (
            f", ASHA (grace {sp.grace_epochs} epochs, 1 in {sp.reduction_factor} goes on)"
            if sp.scheduler == "asha" else ", no early stopping")
        return (f"tuning: {len(self.searches)} variants x {sp.samples} samples of {keys}; {how}; scored on "
                f"{sp.holdout:.0%} of train held out; {self.samples_done()} of "
                f"{len(self.searches) * sp.samples} samples done")


class TuningFailed(Exception):
    """A variant's search gave no usable sample."""


def tuned_trials(plan: TuningPlan) -> List[dict]:
    """The study's trials with each variant's chosen values (the search must be complete)."""
    return expand(plan.study, plan.choices())


# --------------------------------------------------------------------------- running the searches


def run_searches(plan: TuningPlan, untuned: List[dict], callbacks: Callable[[int], list],
                 concurrency: int) -> bool:
    """Each variant's unfinished search, one Ray Tune run after another; False if one was
    interrupted (the rest are not started). ``untuned``: the study's trials with their dataset
    paths resolved; ``callbacks(samples_to_run)``: Tune's callbacks, the study's recorder first
    (``platform.runner.callbacks.StudyCallback``: it counts what finished and failed)."""
    from detectors.build import trial_phases

    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # a trial's last report holds final metrics only
    first = {t["variant"]: t for t in reversed(untuned)}
    spent: List[float] = []  # seconds per sample run so far, for the stage's time left
    for i, search in enumerate(plan.searches):
        todo = plan.spec.samples - len(search.done)
        left = sum(max(0, plan.spec.samples - len(s.done)) for s in plan.searches[i:])
        eta = f"; about {_minutes(left * sum(spent) / len(spent))} left in the tuning stage" if spent else ""
        print(f"tuning {i + 1}/{len(plan.searches)}: {search.label}: {plan.spec.samples} samples, "
              f"{len(search.done)} cached, {max(0, todo)} to run{eta}")
        if todo <= 0:
            continue
        t0 = time.monotonic()
        split = _split(first[search.label], plan.spec)
        epochs = sum(p.epochs for p in trial_phases(first[search.label]))
        given = callbacks(todo)
        _search(plan, search, split, epochs, given, min(concurrency, todo), todo)
        recorder = given[0]
        if len(recorder.finished) + len(recorder.failed) < todo:
            return False
        spent += [(time.monotonic() - t0) / todo] * todo
    return True


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _split(trial: dict, spec) -> Dict[str, str]:
    """The held-out part of the trial's training set (written once, in the dataset cache)."""
    from detectors.data.holdout import holdout_split

    ds = trial["dataset"]
    rest, held = holdout_split(ds["train_annotations"], spec.holdout, spec.seed,
                               os.path.join(ds["cache_dir"], "holdout"))
    return {"train_images": ds["train_images"], "train_annotations": rest, "holdout_annotations": held}


def _space(study, keys: Mapping[str, Any]) -> Dict[str, Any]:
    """The searched keys as Optuna distributions (integers for an integer key)."""
    from optuna.distributions import FloatDistribution, IntDistribution

    from platform.study.keys import KeySpace

    space = KeySpace(study)
    out = {}
    for key, r in keys.items():
        if space.lookup(key).kind == "integer":
            out[key] = IntDistribution(int(r.low), int(r.high), log=r.log)
        else:
            out[key] = FloatDistribution(r.low, r.high, log=r.log)
    return out


def _sampler(spec, restarts: int):
    """Optuna's sampler, seeded by the search's seed and by how many samples are already done
    (a resumed search must not draw its first values again). TPE draws its first half at random."""
    from optuna.samplers import RandomSampler, TPESampler

    seed = int(np.random.SeedSequence([spec.seed, restarts]).generate_state(1)[0])
    if spec.search == "random":
        return RandomSampler(seed=seed)
    return TPESampler(seed=seed, n_startup_trials=max(1, spec.samples // 2), constant_liar=True)


def _search(plan: TuningPlan, search: Search, split: Dict[str, str], epochs: int, callbacks: list,
            concurrency: int, todo: int) -> None:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from detectors.train.trainable import tune_trainable
    from platform.runner.cluster import trial_request
    from platform.runner.searcher import SampleSearcher

    study, spec = plan.study, plan.spec
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per search in the terminal
    inner = OptunaSearch(space=_space(study, spec.space), metric=METRIC, mode="max",
                         sampler=_sampler(spec, len(search.done)),
                         points_to_evaluate=[r["values"] for r in search.done] or None,
                         evaluated_rewards=[r["score"] for r in search.done] or None)
    cache: Dict[str, str] = {}

    def make(values: Dict[str, Any], sample: int) -> dict:
        trial = tuning_trial(study, search.label, search.overrides, values, sample, split, cache)
        trial["tuning"].update(search=search.key, max_epochs=epochs)
        return trial

    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=epochs, grace_period=spec.grace_epochs,
                               reduction_factor=spec.reduction_factor)
                 if spec.scheduler == "asha" else FIFOScheduler())
    res = study.resources
    tuner = tune.Tuner(
        tune.with_resources(tune_trainable, trial_request(res)),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", search_alg=SampleSearcher(inner, make, METRIC, first=len(search.done)),
            scheduler=scheduler, num_samples=todo, max_concurrent_trials=concurrency,
            trial_name_creator=lambda t: t.config["trial"]["config_hash"][:12],
            trial_dirname_creator=lambda t: t.config["trial"]["config_hash"][:12]),
        run_config=tune.RunConfig(
            name=f"{study.name}-tune-{search.key[:8]}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=os.path.join(study.output.runs_dir, study.name, "tune"),
            failure_config=tune.FailureConfig(max_failures=res.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks, verbose=0, log_to_file=True),
    )
    tuner.fit()
