"""A study's sweep -> plain trial dicts (docs/architecture.md, "The trial dict").

    trials = expand(study)                       # variants x grid x seeds
    trials = resolve_dataset_paths(trials, paths)  # after generating the synthetic set

Order: variants (as written) outer, the grid (``itertools.product`` over the
sorted keys) in the middle, seeds inner. Every combination is substituted into
the config and validated again. ``config_hash`` covers what decides a trial's
results (dataset, detector, loss, train, eval, seed, the dataset's content and
the detectors/ source) and nothing else: resources, tracking, output, name and
description can change without invalidating finished trials.

This module also holds the sweep's rules (:func:`check_sweep`, called by
``load_study``): which keys may vary, and that every swept value validates.
"""
from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

from platform.spec import (
    COCO_KEYS, COMPONENTS, DETECTOR_RESERVED, LOSS_RESERVED, PLURAL, SWEEPABLE, ConfigInvalid, Study, StudyError,
    apply_overrides, dotted, is_scalar, show, suggest, synthetic_defaults,
)

# --------------------------------------------------------------------------- sweep rules


class _Probe:
    """A value no validator accepts: its error says whether a key exists and what it expects."""


def _probe(study: Study, key: str) -> Optional[ConfigInvalid]:
    try:
        apply_overrides(study, {key: _Probe()})
    except ConfigInvalid as e:
        return e
    return None


def _missing(err: Optional[ConfigInvalid], key: str) -> bool:
    parts = tuple(key.split("."))
    return err is not None and err.unknown_key and parts[: len(err.loc)] == err.loc


def _check_key(bases: List[Study], key: str, loc: Tuple) -> Optional[ConfigInvalid]:
    """Raise unless ``key`` exists in at least one base config; returns the probe's error."""
    parts = key.split(".")
    if parts[0] not in SWEEPABLE or len(parts) < 2:
        raise ConfigInvalid(loc, f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)} can vary")
    errors = [_probe(base, key) for base in bases]
    if all(_missing(e, key) for e in errors):
        raise ConfigInvalid(loc, f"no such key in the study config{suggest(key, _leaf_keys(bases[0]))}")
    return next((e for e in errors if not _missing(e, key)), None)


def _attribute(e: ConfigInvalid, loc_of: Mapping[str, Tuple], where: Tuple) -> ConfigInvalid:
    """Pin a validation error of substituted values on the swept key that caused it."""
    for key, loc in loc_of.items():
        if tuple(key.split(".")) == e.loc:
            return ConfigInvalid(loc, e.msg)
    return ConfigInvalid(where, f"{dotted(e.loc)}: {e.msg}")


def _check_scalar(value: Any, loc: Tuple) -> None:
    if not is_scalar(value):
        raise ConfigInvalid(loc, f"expected a single value (number, string, true/false or null), got {show(value)}")


def _leaf_keys(study: Study) -> List[str]:
    """Every dotted key a sweep could name (for "did you mean" hints)."""
    from detectors.losses import CLS_LOSSES
    from detectors.models import MODELS

    def walk(prefix: str, node: Any) -> Iterable[str]:
        if not isinstance(node, dict):
            return [prefix]
        return [k for key, v in node.items() for k in walk(f"{prefix}.{key}", v)]

    data = study.model_dump(include=set(SWEEPABLE))
    keys = [k for section in SWEEPABLE for k in walk(section, data[section])]
    keys += [f"detector.params.{p}" for p in MODELS.parameters(study.detector.name) if p not in DETECTOR_RESERVED]
    keys += [f"loss.params.{p}" for p in CLS_LOSSES.parameters(study.loss.name) if p not in LOSS_RESERVED]
    return keys + [f"dataset.synthetic.{p}" for p in (synthetic_defaults() or {})]


LABEL = "label"  # optional name of a variant in trial keys, e.g. "baseline" instead of its overrides


def overrides_of(variant: Mapping[str, Any]) -> Dict[str, Any]:
    """A variant's dotted-key overrides (everything but its label)."""
    return {k: v for k, v in variant.items() if k != LABEL}


def check_sweep(study: Study) -> None:
    """Every swept key exists and every swept value validates: each variant on the base
    config, each grid value under every variant. Raises ConfigInvalid. Combinations of
    several grid keys are validated by :func:`expand`."""
    grid, variants = study.sweep.grid, study.sweep.variants
    bases = []
    for j, variant in enumerate(variants):
        loc = ("sweep", "variants", j)
        label = variant.get(LABEL)
        if LABEL in variant and not (isinstance(label, str) and label.strip()):
            raise ConfigInvalid(loc + (LABEL,), f"expected a non-empty string, got {show(label)}")
        variant = overrides_of(variant)
        if not variant:
            raise ConfigInvalid(loc, "empty variant: give at least one dotted key")
        # Keys are checked against the base with the variant's component switches applied,
        # so `loss.name: focal` and `loss.params.gamma: 2` can go together.
        switched = study
        names = {k: v for k, v in variant.items() if k.split(".")[0] in COMPONENTS and k.count(".") == 1
                 and k.endswith(".name")}
        if names:
            try:
                switched = apply_overrides(study, names)
            except ConfigInvalid as e:
                raise _attribute(e, {k: loc + (k,) for k in names}, loc) from None
        for key, value in variant.items():
            if key in grid:
                raise ConfigInvalid(loc + (key,), "also swept in sweep.grid; put a key in one of them")
            _check_key([switched], key, loc + (key,))
            _check_scalar(value, loc + (key,))
        try:
            bases.append(apply_overrides(study, variant))
        except ConfigInvalid as e:
            raise _attribute(e, {k: loc + (k,) for k in variant}, loc) from None
    for key, values in grid.items():
        loc = ("sweep", "grid", key)
        probe_error = _check_key(bases or [study], key, loc)
        if not isinstance(values, list):
            expected = probe_error.expected if probe_error else ""
            plural = PLURAL.get(expected) or (f"values among {expected}" if expected.startswith("'") else "values")
            raise ConfigInvalid(loc, f"expected a list of {plural}, got {show(values)}")
        if not values:
            raise ConfigInvalid(loc, "empty list: give at least one value")
        seen = set()
        for i, value in enumerate(values):
            _check_scalar(value, loc + (i,))
            if json.dumps(value) in seen:
                raise ConfigInvalid(loc + (i,), f"value {show(value)} is listed twice")
            seen.add(json.dumps(value))
            for j, base in enumerate(bases or [study]):
                try:
                    apply_overrides(base, {key: value})
                except ConfigInvalid as e:
                    err = _attribute(e, {key: loc + (i,)}, loc + (i,))
                    raise ConfigInvalid(err.loc, err.msg + (f" (with sweep.variants[{j}])" if bases else "")) from None


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
        dataset["synthetic"] = {**(synthetic_defaults() or {}), **section["synthetic"]}
        return dataset, dataset["synthetic"]
    identity = {}
    for key in ("train_annotations", "val_annotations"):
        path = section[key]
        if path not in cache:
            cache[path] = _sha256_file(path)
        identity[key] = cache[path]
    return dataset, identity


def _trial(study: Study, cfg: Study, variant: str, seed: int, version: str, cache: Dict[str, str]) -> dict:
    sections = cfg.model_dump(mode="json", include=set(SWEEPABLE))
    dataset, identity = _dataset(sections["dataset"], cache)
    dataset_id = {"kind": dataset["kind"], "identity": identity}
    dataset["digest"] = config_hash(dataset_id)  # the dataset part of the hash, for MLflow's dataset input
    hashed = {name: sections[name] for name in ("detector", "loss", "train", "eval")}
    digest = config_hash({**hashed, "dataset": dataset_id, "seed": seed, "detectors_version": version})
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
        "trial_dir": os.path.join(study.output.runs_dir, study.name, "trials", digest[:12]),
    }
    return json.loads(json.dumps(trial))  # plain JSON types only: tuples -> lists


def expand(study: Study) -> List[dict]:
    """All trials of a study, as plain JSON-able dicts; raises StudyError on a bad combination."""
    version = detectors_code_version()
    grid_keys = sorted(study.sweep.grid)
    variants = study.sweep.variants or [{}]
    combos = list(itertools.product(*(study.sweep.grid[k] for k in grid_keys)))
    names = short_names(dict.fromkeys([k for v in variants for k in overrides_of(v)] + grid_keys))
    cache: Dict[str, str] = {}
    trials: List[dict] = []
    seen: Dict[str, str] = {}
    for variant in variants:
        for combo in combos:
            grid_part = dict(zip(grid_keys, combo))
            overrides = {**overrides_of(variant), **grid_part}
            label = ",".join(f"{names[k]}={format_value(v)}" for k, v in overrides.items()) or "default"
            if LABEL in variant:  # a variant's own label, plus any grid values
                label = ",".join([variant[LABEL]] + [f"{names[k]}={format_value(v)}" for k, v in grid_part.items()])
            try:
                cfg = apply_overrides(study, overrides)
            except ConfigInvalid as e:
                raise StudyError(study.source, "sweep", f"trial '{label}': {dotted(e.loc)}: {e.msg}") from None
            for seed in study.sweep.seeds:
                trial = _trial(study, cfg, label, seed, version, cache)
                for field in ("config_hash", "trial_key"):
                    if trial[field] in seen:
                        raise StudyError(study.source, "sweep", f"trials '{seen[trial[field]]}' and "
                                         f"'{trial['trial_key']}' have the same {field.replace('_', ' ')}")
                    seen[trial[field]] = trial["trial_key"]
                trials.append(trial)
    return trials


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
