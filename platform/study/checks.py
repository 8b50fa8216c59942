"""Validating a study: a plain dict (``platform.study.read_yaml``) -> a Study, or the first
problem as a ``ConfigError`` naming its key.

    study = validate(raw)

The schema first (``platform.study.spec``; pydantic's errors reworded as one line
each), then what pydantic cannot know, cheapest first: the dataset (the
generator's settings, or the COCO files), the output directories and the store
URL, then the components' declared parameters, loss roles and loss names
(``detectors.build``: importing it imports torch, so most typos are reported
before that), and the split of a trial over its workers. Swept values are
checked afterwards, by ``platform.study.sweep``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Optional

from pydantic import ValidationError

from detectors.registry import ConfigError, ParamError, show, suggest
from platform.study.keys import fields_at, synthetic_defaults, synthetic_settings
from platform.study.spec import COCO_KEYS, DatasetSpec, Study


def validate(raw: Mapping[str, Any]) -> Study:
    """Validate a plain dict as a study (without the sweep checks); raises ConfigError."""
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise translate(e) from None
    _check_dataset(study.dataset)  # first: needs no torch, so a bad path is reported quickly
    _check_output(study)
    _check_components(study)  # imports torch (the registries)
    _check_workers(study)
    return study


# --------------------------------------------------------------------------- pydantic's errors

_EXPECTED = {"int_type": "integer", "int_from_float": "integer", "float_type": "number", "finite_number": "number",
             "bool_type": "boolean", "string_type": "string", "list_type": "list", "dict_type": "mapping",
             "model_type": "mapping", "model_attributes_type": "mapping"}
SINGULAR = {"integer": "an integer", "number": "a number", "boolean": "true or false", "string": "a string",
             "list": "a list", "mapping": "a mapping (key: value)", "json": "a plain YAML value"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_CTX_KEY = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}


def translate(err: ValidationError) -> ConfigError:
    """The first of pydantic's errors as a ConfigError with a one-line message for the user."""
    e = err.errors(include_url=False)[0]
    loc, typ, ctx, got = tuple(e["loc"]), e["type"], e.get("ctx") or {}, show(e.get("input"))
    if typ == "extra_forbidden":
        known = fields_at(loc[:-1])
        return ConfigError(loc, f"unknown key{suggest(loc[-1], known)} (known: {', '.join(known)})", unknown_key=True)
    if typ == "missing":
        return ConfigError(loc, "required key is missing")
    if typ in _EXPECTED:
        kind = _EXPECTED[typ]
        return ConfigError(loc, f"expected {SINGULAR[kind]}, got {got}", expected=kind)
    if typ == "literal_error":
        return ConfigError(loc, f"expected {ctx['expected']}, got {got}", expected=ctx["expected"])
    if typ in _BOUNDS:
        bound = ctx[_CTX_KEY[typ]]  # pydantic gives a float field's bound as a float: "> 0", not "> 0.0"
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return ConfigError(loc, f"must be {_BOUNDS[typ]} {bound}, got {got}")
    if typ == "too_short":
        return ConfigError(loc, "must not be empty")
    if typ == "string_pattern_mismatch":
        return ConfigError(loc, f"must match {ctx['pattern']} (lower-case letters, digits, _ and -), got {got}")
    msg = e["msg"].removeprefix("Value error, ")
    return ConfigError(loc, msg if typ == "value_error" else f"{msg}, got {got}")


# --------------------------------------------------------------------------- what pydantic cannot know

def _check_output(study: Study) -> None:
    """The output and cache directories can be created (or are directories), and the store
    URL parses: otherwise the run would fail after Ray started, with a traceback."""
    dirs = [(("output", "runs_dir"), study.output.runs_dir), (("output", "reports_dir"), study.output.reports_dir),
            (("dataset", "cache_dir"), study.dataset.cache_dir)]
    for loc, path in dirs:
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            what = "is" if existing == path else f"cannot be created: {existing} is"
            raise ConfigError(loc, f"{path} {what} a file, not a directory")
        if existing != path and not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(loc, f"{path} cannot be created: no write permission in {existing}")
    url = study.tracking.store_url
    if url and not url.startswith("sqlite:///"):
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        loc = ("tracking", "store_url")
        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError):
            raise ConfigError(loc, f"not a database URL SQLAlchemy knows (e.g. sqlite:////abs/path/results.db "
                              f"or postgresql://user@host/db), got {show(url)}") from None
        except ImportError as e:
            raise ConfigError(loc, f"the database driver is not installed ({e.name or e})") from None


def _check_dataset(ds: DatasetSpec) -> None:
    """The dataset section: synthetic generator settings known, typed and in range; COCO paths exist."""
    if ds.kind == "synthetic":
        for key in COCO_KEYS:
            if getattr(ds, key) is not None:
                raise ConfigError(("dataset", key), "only used with kind 'coco'")
        settings = synthetic_settings()
        out = {}
        for key, value in ds.synthetic.items():
            loc = ("dataset", "synthetic", key)
            if key not in settings:
                raise ConfigError(loc, f"unknown generator setting{suggest(key, settings)} "
                                  f"(known: {', '.join(sorted(settings))})", unknown_key=True)
            try:
                out[key] = settings[key].check(value)
            except ParamError as e:
                raise ConfigError(loc, e.msg, expected=e.expected) from None
        ds.synthetic = out
        _check_generator_values(out)
        return
    if ds.synthetic:
        raise ConfigError(("dataset", "synthetic"), "only used with kind 'synthetic'")
    for key in COCO_KEYS:
        path = getattr(ds, key)
        if path is None:
            raise ConfigError(("dataset", key), "required for kind 'coco'")
        want_dir = key.endswith("images")
        if not (os.path.isdir(path) if want_dir else os.path.isfile(path)):
            raise ConfigError(("dataset", key), f"no such {'directory' if want_dir else 'file'}: {path}")


def _check_generator_values(params: Dict[str, Any]) -> None:
    """The generator's own range checks (``resolve_params``), pinned on the key they name."""
    try:
        from detectors.data.synthetic import resolve_params
    except ImportError:
        return
    try:
        resolve_params(params)
    except ValueError as e:
        msg = str(e).removeprefix("synthetic: ")
        named = [k for k in params if f"'{k}'" in msg]
        raise ConfigError(("dataset", "synthetic") + tuple(named[:1]), msg) from None


def _check_components(study: Study) -> None:
    """The components' declared parameters, loss roles and loss names, and the parts of the
    detector its phases name. Normalises param values in place."""
    from detectors.build import check_backbone, check_components, check_loss_weights, check_phase_parts, weight_names

    loss = study.loss.model_dump() if study.loss else None
    num_classes = _num_classes(study.dataset)
    det, loss_params, roles = check_components(study.detector.model_dump(), loss,
                                               {r: s.model_dump() for r, s in study.losses.items()}, num_classes)
    check_loss_weights(study.detector.name, study.train.loss_weights)
    study.detector.params = det
    if study.loss is not None:
        study.loss.params = loss_params
    for role, params in roles.items():
        study.losses[role].params = params
    check_backbone(study.detector.model_dump(), num_classes or 1)
    if study.train.phases:
        check_phase_parts(study.detector.model_dump(), [p.model_dump() for p in study.train.phases],
                          num_classes or 1)
    for i, phase in enumerate(study.train.phases or []):
        names = weight_names(study.detector.name)
        for j, name in enumerate(phase.losses or []):
            if name not in names:
                raise ConfigError(("train", "phases", i, "losses", j),
                                  f"detector '{study.detector.name}' returns no loss '{name}'"
                                  f"{suggest(name, names)} (its losses: {', '.join(names)})")


def _num_classes(ds: DatasetSpec) -> Optional[int]:
    """The dataset's number of classes where it is known without reading the data (synthetic)."""
    return {**synthetic_defaults(), **ds.synthetic}["num_classes"] if ds.kind == "synthetic" else None


def _check_workers(study: Study) -> None:
    """A multi-worker trial splits each global batch evenly, and gives each worker whole GPUs."""
    res, batch = study.resources, study.train.batch_size
    if res.workers_per_trial > 1 and batch % res.workers_per_trial:
        raise ConfigError(("resources", "workers_per_trial"),
                          f"{res.workers_per_trial} workers cannot split train.batch_size {batch} evenly "
                          f"(each worker takes batch_size / workers_per_trial images per step)")
    if res.workers_per_trial > 1 and not float(res.gpus_per_trial).is_integer():
        raise ConfigError(("resources", "gpus_per_trial"),
                          f"must be a whole number with workers_per_trial > 1 (one NCCL rank per GPU), "
                          f"got {show(res.gpus_per_trial)}")
