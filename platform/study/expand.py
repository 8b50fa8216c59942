"""A study's sweep -> plain trial dicts (docs/architecture.md, "The trial dict").

    trials = expand(study)                       # variants x grid x seeds
    trials = resolve_dataset_paths(trials, paths)  # after generating the synthetic set

Order: variants (as written) outer, the grid (``itertools.product`` over the
sorted keys) in the middle, seeds inner. Every combination is substituted into
the config and validated again. ``config_hash`` covers what decides a trial's
results (dataset, detector, losses, train, eval, seed, the dataset's content
and the detectors/ source) and nothing else: resources, tracking, output, name
and description can change without invalidating finished trials. Which keys
may vary, and how one is set, is the key space's (``platform.study.keys``); each
combination is applied by ``platform.study.sweep.apply_overrides``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from detectors.config import PRETRAIN, PretrainConfig, parse
from detectors.registry import ConfigError, show
from detectors.train.pretrain import pretrain_digest
from platform.study.keys import SWEEPABLE, dotted, synthetic_defaults
from platform.study.spec import COCO_KEYS, Study
from platform.study.load import StudyError
from platform.study.sweep import LABEL, apply_overrides, overrides_of

# --------------------------------------------------------------------------- expansion


def format_value(v: Any) -> str:
    """How a swept value appears in a trial key: ``2.0 -> 2``, ``0.25``, ``true``, ``null``."""
    if isinstance(v, bool) or v is None:
        return show(v)
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return str(v)


def short_names(keys: Iterable[str]) -> Dict[str, str]:
    """Last part of each dotted key, or the whole key where the last part is ambiguous."""
    keys = list(keys)
    last = [k.split(".")[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def detectors_code_version(root: Optional[str] = None) -> str:
    """sha256 over the sorted relative paths and bytes of every ``detectors/**/*.py``."""
    if root is None:
        root = importlib.util.find_spec("detectors").submodule_search_locations[0]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    h = hashlib.sha256()
    for rel, path in sorted((os.path.relpath(p, root).replace(os.sep, "/"), p) for p in files):
        with open(path, "rb") as f:
            data = f.read()
        h.update(f"{rel}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def config_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of canonical JSON (sorted keys, no whitespace, no NaN)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def _dataset(section: dict, cache: Dict[str, str]) -> Tuple[dict, Any]:
    """The trial's ``dataset`` dict and the dataset's identity for the hash."""
    dataset = {"kind": section["kind"], **{k: section[k] for k in COCO_KEYS},
               "synthetic": None, "cache_dir": section["cache_dir"]}
    if section["kind"] == "synthetic":
        dataset["synthetic"] = {**synthetic_defaults(), **section["synthetic"]}
        return dataset, dataset["synthetic"]
    identity = {}
    for key in ("train_annotations", "val_annotations"):
        path = section[key]
        if path not in cache:
            cache[path] = _sha256_file(path)
        identity[key] = cache[path]
    return dataset, identity


def _backbone_digest(backbone: dict, cache: Dict[str, str]) -> Optional[str]:
    """sha256 of the backbone's weights file, or of the pretraining stage's identity; None: random weights."""
    weights = backbone["weights"]
    if weights is None:
        return None
    if weights == PRETRAIN:
        return pretrain_digest(parse(PretrainConfig, backbone["pretrain"]))
    if weights not in cache:
        cache[weights] = _sha256_file(weights)
    return cache[weights]


def _hashed_detector(detector: dict, weights_digest: Optional[str]) -> dict:
    """The detector section as it decides results: random weights ignore the fine-tuning settings,
    a file counts by its content, and only the pretraining stage's settings name its weights."""
    backbone = dict(detector["backbone"])
    if backbone["weights"] is None:
        backbone = {"weights": None}
    elif backbone["weights"] != PRETRAIN:
        backbone["weights"] = {"sha256": weights_digest}
        del backbone["pretrain"]
    return {**detector, "backbone": backbone}


def _trial(study: Study, cfg: Study, variant: str, seed: int, version: str, cache: Dict[str, str],
           holdout: Optional[Mapping[str, Any]] = None) -> dict:
    """One trial dict; ``holdout`` (a tuning sample's) makes the held-out part of train its val set
    (the driver fills in the split's paths) and counts in the dataset's identity."""
    sections = cfg.model_dump(mode="json", include=set(SWEEPABLE))
    dataset, identity = _dataset(sections["dataset"], cache)
    dataset_id = {"kind": dataset["kind"], "identity": identity}
    if holdout is not None:
        dataset_id["holdout"] = dict(holdout)
    dataset["digest"] = config_hash(dataset_id)  # the dataset part of the hash, for MLflow's dataset input
    hashed = {name: sections[name] for name in ("detector", "loss", "losses", "train", "eval")}
    weights_digest = _backbone_digest(sections["detector"]["backbone"], cache)
    # A weights file counts by its content, not its path (the same file on a cluster's shared volume
    # or a laptop is the same trial); the pretraining stage by its settings, which the section holds.
    identity = {**hashed, "detector": _hashed_detector(sections["detector"], weights_digest)}
    digest = config_hash({**identity, "dataset": dataset_id, "seed": seed, "detectors_version": version})
    folder = "trials" if holdout is None else "tuning"
    trial = {
        "study": study.name,
        "trial_key": f"{variant}/seed={seed}",
        "variant": variant,
        "seed": seed,
        "config_hash": digest,
        "dataset": dataset,
        **hashed,
        "num_threads": max(1, int(study.resources.cpus_per_trial)),
        "gpus": study.resources.gpus_per_trial,  # read by detectors.train to pick the device
        # > 1: trained on that many Ray Train workers of cpus/gpus each (detectors.train.distributed)
        "workers": study.resources.workers_per_trial, "cpus": study.resources.cpus_per_trial,
        "trial_dir": os.path.join(study.output.runs_dir, study.name, folder, digest[:12]),
        "backbone_digest": weights_digest,  # shown on the pages beside the variant
    }
    return json.loads(json.dumps(trial))  # plain JSON types only: tuples -> lists


def variant_plans(study: Study) -> List[Tuple[str, Dict[str, Any]]]:
    """Each variant of the sweep (a variant x a grid combination) as (its label, its overrides),
    in the order of the trials: variants as written outer, the grid's sorted keys inner."""
    grid_keys = sorted(study.sweep.grid)
    variants = study.sweep.variants or [{}]
    combos = list(itertools.product(*(study.sweep.grid[k] for k in grid_keys)))
    names = short_names(dict.fromkeys([k for v in variants for k in overrides_of(v)] + grid_keys))
    plans = []
    for variant in variants:
        for combo in combos:
            grid_part = dict(zip(grid_keys, combo))
            overrides = {**overrides_of(variant), **grid_part}
            label = ",".join(f"{names[k]}={format_value(v)}" for k, v in overrides.items()) or "default"
            if LABEL in variant:  # a variant's own label, plus any grid values
                label = ",".join([variant[LABEL]] + [f"{names[k]}={format_value(v)}" for k, v in grid_part.items()])
            plans.append((label, overrides))
    return plans


def _configured(study: Study, label: str, overrides: Mapping[str, Any]) -> Study:
    try:
        return apply_overrides(study, overrides)
    except ConfigError as e:
        raise StudyError(study.source, "sweep", f"trial '{label}': {dotted(e.loc)}: {e.msg}") from None


def expand(study: Study, tuned: Optional[Mapping[str, Mapping[str, Any]]] = None) -> List[dict]:
    """All trials of a study, as plain JSON-able dicts; raises StudyError on a bad combination.
    ``tuned``: variant label -> the tuning sample it takes (``{"sample", "values", "score"}``, from
    ``platform.runner.tuning``): its values override the variant's, and its trials carry it."""
    version = detectors_code_version()
    cache: Dict[str, str] = {}
    trials: List[dict] = []
    seen: Dict[str, str] = {}
    for label, overrides in variant_plans(study):
        choice = (tuned or {}).get(label)
        cfg = _configured(study, label, {**overrides, **(choice["values"] if choice else {})})
        for seed in study.sweep.seeds:
            trial = _trial(study, cfg, label, seed, version, cache)
            if choice:
                trial["tuned"] = json.loads(json.dumps(choice))
            for field in ("config_hash", "trial_key"):
                if trial[field] in seen:
                    raise StudyError(study.source, "sweep", f"trials '{seen[trial[field]]}' and "
                                     f"'{trial['trial_key']}' have the same {field.replace('_', ' ')}")
                seen[trial[field]] = trial["trial_key"]
            trials.append(trial)
    return trials


def tuning_trial(study: Study, label: str, overrides: Mapping[str, Any], values: Mapping[str, Any],
                 sample: int, split: Mapping[str, str], cache: Optional[Dict[str, str]] = None) -> dict:
    """Sample ``sample`` of variant ``label``'s search: the variant with the sampled ``values``,
    trained at the search's seed on train minus the held-out part and evaluated on that part after
    every epoch (the search's scheduler stops on it). ``split``: the paths ``train_images``,
    ``train_annotations`` and ``holdout_annotations`` (``detectors.data.holdout``) of the variant's
    training set."""
    tune = study.sweep.tune
    cfg = _configured(study, label, {**overrides, **values, "train.eval_every_epoch": True})
    holdout = {"fraction": tune.holdout, "seed": tune.seed}
    trial = _trial(study, cfg, label, tune.seed, detectors_code_version(), {} if cache is None else cache, holdout)
    trial["trial_key"] = f"{label}/sample={sample}"
    trial["tuning"] = {"sample": sample, "values": dict(values)}
    trial["speed_phase"] = True  # no speed figures for a search
    ds = trial["dataset"]
    ds["train_images"] = ds["val_images"] = split["train_images"]
    ds["train_annotations"], ds["val_annotations"] = split["train_annotations"], split["holdout_annotations"]
    return json.loads(json.dumps(trial))


def resolve_dataset_paths(trials: List[dict], paths: Union[Mapping[str, str], Callable[[dict], Mapping[str, str]]]
                          ) -> List[dict]:
    """Copies of ``trials`` with the four dataset paths of synthetic trials filled in.

    ``paths`` is the dict ``detectors.data.synthetic.generate(params, cache_root)``
    returned, or a callable ``params -> paths`` (called once per distinct set of
    generator params, for sweeps over ``dataset.synthetic.*``). COCO trials,
    whose paths are already absolute, are copied unchanged.
    """
    done: Dict[str, Mapping[str, str]] = {}
    out = []
    for trial in trials:
        trial = json.loads(json.dumps(trial))
        ds = trial["dataset"]
        if ds["kind"] == "synthetic":
            key = json.dumps(ds["synthetic"], sort_keys=True)
            if key not in done:
                done[key] = paths(ds["synthetic"]) if callable(paths) else paths
            ds.update({k: os.path.abspath(done[key][k]) for k in COCO_KEYS})
        out.append(trial)
    return out


def describe(trials: List[dict], finished_hashes: Iterable[str], force: bool = False) -> str:
    """The ``--dry-run`` table: trial key, short hash, whether a finished result is cached."""
    finished = set(finished_hashes)
    rows = [("trial", "hash", "cached")]
    rows += [(t["trial_key"], t["config_hash"][:12], "yes" if t["config_hash"] in finished else "no") for t in trials]
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    lines = [f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows]
    cached = sum(t["config_hash"] in finished for t in trials)
    to_run = len(trials) if force else len(trials) - cached
    note = " (--force: cached trials run again)" if force and cached else ""
    lines.append(f"{len(trials)} trials: {cached} cached, {to_run} to run{note}")
    return "\n".join(lines)
