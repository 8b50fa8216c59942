"""Study files: YAML parsed into typed pydantic models; every problem is one line.

    study = load_study("studies/focal_gamma_sweep.yaml")

Pydantic checks structure, types and ranges (``extra="forbid"`` and strict
types everywhere: a typo or a quoted number is an error, not a silent default).
A second pass checks what only the worker package knows: detector and loss
names and parameters (registries), the synthetic generator's settings, COCO
files on disk. ``platform.expand.check_sweep`` then substitutes every swept
value and validates again. Failures are :class:`StudyError`, whose ``str`` is
``<file>: <dotted.key.path>: <message>``. Torch is imported (with the
registries) only once the structure is valid, so most typos are reported fast.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from platform.messages import PLURAL, SINGULAR, ConfigInvalid, show, suggest, translate  # noqa: F401 (re-exported)

SWEEPABLE = ("dataset", "detector", "loss", "train", "eval")
COMPONENTS = ("detector", "loss")  # sections with a registry name and its params
COCO_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")
# Detector keyword arguments the training loop fills from other sections.
DETECTOR_RESERVED = frozenset({"num_classes", "scale", "cls_loss", "score_thresh", "nms_iou", "max_dets"})
LOSS_RESERVED = frozenset({"reduction"})


class StudyError(Exception):
    """A study file problem; ``str(err)`` is ``<file>: <key.path>: <message>``, one line."""

    def __init__(self, file: str, path: str, message: str) -> None:
        self.file, self.path, self.message = str(file), path, message
        text = f"{self.file}: {path}: {message}" if path else f"{self.file}: {message}"
        super().__init__(" ".join(text.split("\n")))


# --------------------------------------------------------------------------- schema

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, allow_inf_nan=False)


def _abspath(v: Optional[str]) -> Optional[str]:
    return None if v is None else os.path.abspath(os.path.expanduser(v))


class DatasetSpec(_Strict):
    kind: Literal["synthetic", "coco"]
    synthetic: Dict[str, Any] = {}
    train_images: Optional[str] = None
    train_annotations: Optional[str] = None
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    cache_dir: Optional[str] = None  # None: <runs_dir>/datasets

    @field_validator(*COCO_KEYS, "cache_dir")
    @classmethod
    def absolute_path(cls, v: Optional[str]) -> Optional[str]:
        return _abspath(v)


class DetectorSpec(_Strict):
    name: str
    scale: Literal["tiny", "paper"] = "tiny"
    params: Dict[str, Any] = {}


class LossSpec(_Strict):
    name: str
    params: Dict[str, Any] = {}


class TrainSpec(_Strict):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(50, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    milestones: List[float] = [0.67, 0.89]
    gamma_lr: float = Field(0.1, gt=0)
    grad_clip: Optional[float] = Field(10.0, gt=0)
    loss_weights: Dict[str, float] = {"cls": 1.0, "box": 1.0}
    max_steps: Optional[int] = Field(None, ge=1)
    hflip_prob: float = Field(0.5, ge=0, le=1)
    eval_every_epoch: bool = True

    @field_validator("milestones")
    @classmethod
    def check_fractions(cls, v: List[float]) -> List[float]:
        if any(not 0 < m < 1 for m in v) or v != sorted(set(v)):
            raise ValueError(f"expected increasing fractions of the total steps in (0, 1), got {v}")
        return v

    @field_validator("loss_weights")
    @classmethod
    def merge_weights(cls, v: Dict[str, float]) -> Dict[str, float]:
        return {"cls": 1.0, "box": 1.0, **v}  # naming one weight keeps the others at 1


class SpeedSpec(_Strict):
    enabled: bool = True
    latency_images: int = Field(50, ge=1)
    warmup: int = Field(10, ge=0)
    throughput_batch: int = Field(8, ge=1)
    throughput_batches: int = Field(5, ge=1)


class EvalSpec(_Strict):
    score_thresh: float = Field(0.05, ge=0, le=1)
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_dets: int = Field(100, ge=1, le=100)  # COCO AP counts at most 100 detections per image
    speed: SpeedSpec = Field(default_factory=SpeedSpec)


class SweepSpec(_Strict):
    grid: Dict[str, Any] = {}            # dotted key -> non-empty list of scalars (checked below)
    variants: List[Dict[str, Any]] = []  # each: dotted key -> scalar, applied together
    seeds: List[int] = Field([0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def check_distinct(cls, v: List[int]) -> List[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


class ResourcesSpec(_Strict):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: Optional[int] = Field(None, ge=1)
    max_failures: int = Field(1, ge=0)


class TrackingSpec(_Strict):
    mlflow_uri: Optional[str] = None  # None: sqlite:///<runs_dir>/mlflow.db
    store_url: Optional[str] = None   # None: sqlite:///<runs_dir>/results.db

    @field_validator("mlflow_uri", "store_url")
    @classmethod
    def absolute_sqlite(cls, v: Optional[str]) -> Optional[str]:
        # A relative SQLite path would follow the process's cwd, which Ray changes.
        prefix = "sqlite:///"
        if v and v.startswith(prefix) and not v[len(prefix):].startswith(("/", ":memory:")) and v != prefix:
            return prefix + os.path.abspath(v[len(prefix):])
        return v


class OutputSpec(_Strict):
    runs_dir: str = "runs"
    reports_dir: str = "reports"

    @field_validator("runs_dir", "reports_dir")
    @classmethod
    def absolute_path(cls, v: str) -> str:
        return _abspath(v)


class Study(_Strict):
    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    description: str = ""
    dataset: DatasetSpec
    detector: DetectorSpec
    loss: LossSpec
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    sweep: SweepSpec = Field(default_factory=SweepSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    output: OutputSpec = Field(default_factory=OutputSpec)
    _source: str = PrivateAttr("<study>")

    @model_validator(mode="after")
    def defaults_from_runs_dir(self) -> "Study":
        runs = self.output.runs_dir
        if self.dataset.cache_dir is None:
            self.dataset.cache_dir = os.path.join(runs, "datasets")
        if self.tracking.mlflow_uri is None:
            self.tracking.mlflow_uri = "sqlite:///" + os.path.join(runs, "mlflow.db")
        if self.tracking.store_url is None:
            self.tracking.store_url = "sqlite:///" + os.path.join(runs, "results.db")
        return self

    @property
    def source(self) -> str:
        """The study file as the user named it (used in error messages)."""
        return self._source


# --------------------------------------------------------------------------- loading

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def _read_yaml(source: str) -> dict:
    try:
        with open(source, encoding="utf-8") as f:
            raw = yaml.load(f, Loader=_Loader)
    except OSError as e:
        raise StudyError(source, "", (e.strerror or str(e)).lower()) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "yaml"
        raise StudyError(source, where, e.problem or str(e)) from None
    except yaml.YAMLError as e:
        raise StudyError(source, "yaml", str(e)) from None
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else show(raw)
        raise StudyError(source, "", f"top level must be a mapping of keys (name:, dataset:, ...), got {got}")
    return raw


def load_study(path: Union[str, os.PathLike]) -> Study:
    """Read, validate and resolve a study file. Creates nothing on disk.

    Relative paths (COCO files, output dirs) resolve against the current
    directory; tracking URIs default to SQLite files under ``runs_dir``.
    Raises :class:`StudyError`.
    """
    source = os.fspath(path)
    raw = _read_yaml(source)
    from platform.expand import check_sweep  # the sweep's rules live with the expansion

    try:
        study = validate(raw)
        check_sweep(study)
    except ConfigInvalid as e:
        raise StudyError(source, dotted(e.loc), e.msg) from None
    study._source = source
    return study


def validate(raw: Mapping[str, Any]) -> Study:
    """Validate a plain dict as a study (without the sweep checks); raises ConfigInvalid."""
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise translate(e, Study) from None
    _check_components(study)
    return study


def apply_overrides(study: Study, overrides: Mapping[str, Any]) -> Study:
    """A new, re-validated Study with ``{"dotted.key": value}`` applied; raises ConfigInvalid."""
    raw = study.model_dump()
    # A component whose name changes starts from empty params: the old component's
    # params (focal's gamma, say) mean nothing to the new one (ce). Names go first.
    for section in COMPONENTS:
        name = overrides.get(f"{section}.name")
        if isinstance(name, str) and isinstance(raw.get(section), dict) and name != raw[section].get("name"):
            raw[section]["params"] = {}
    for key, value in sorted(overrides.items(), key=lambda kv: not kv[0].endswith(".name")):
        parts = key.split(".")
        if parts[0] not in SWEEPABLE or len(parts) < 2:
            raise ConfigInvalid((parts[0],), f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)}",
                                unknown_key=True)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigInvalid(tuple(parts[: i + 1]), "no such section", unknown_key=True)
            node = node[part]
        node[parts[-1]] = copy.deepcopy(value)
    new = validate(raw)
    new._source = study._source
    return new


def dotted(loc: Tuple) -> str:
    """('sweep', 'seeds', 0) -> 'sweep.seeds[0]'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# --------------------------------------------------------------------------- components

def _param_kind(default: Any, annotation: str = "") -> Tuple[str, bool]:
    """(kind, nullable) of a keyword parameter, from its default and annotation text."""
    nullable = default is None or "Optional" in annotation or "None" in annotation
    for typ, kind in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                      ((list, tuple), "list")):
        if isinstance(default, typ):
            return kind, nullable
    for word, kind in (("bool", "boolean"), ("float", "number"), ("int", "integer"), ("str", "string")):
        if word in annotation:
            return kind, nullable
    return "json", nullable


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(value: Any, kind: str, nullable: bool, loc: Tuple) -> Any:
    """Check ``value`` against a parameter kind; ints become floats where a float is expected."""
    ok = {"boolean": lambda v: isinstance(v, bool), "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": _is_number, "string": lambda v: isinstance(v, str),
          "list": lambda v: isinstance(v, list) and all(is_scalar(x) for x in v),
          "alpha": lambda v: _is_number(v) or v == "inverse_frequency"
          or (isinstance(v, list) and v and all(_is_number(x) for x in v)),
          "json": _is_json}[kind]
    if (value is None and nullable) or (value is not None and ok(value)):
        if kind == "number" and value is not None:
            return float(value)
        if kind == "alpha" and isinstance(value, list):
            return [float(x) for x in value]
        return float(value) if kind == "alpha" and _is_number(value) else value
    null = " or null" if nullable and kind != "alpha" else ""
    raise ConfigInvalid(loc, f"expected {SINGULAR[kind]}{null}, got {show(value)}",
                        expected=kind)


def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _is_json(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=False)
        return True
    except (TypeError, ValueError):
        return False


def _check_params(registry: Any, what: str, name: str, params: dict, loc: Tuple, reserved) -> dict:
    allowed = {k: p for k, p in registry.parameters(name).items() if k not in reserved}
    out = {}
    for key, value in params.items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise ConfigInvalid(loc + (key,), f"unknown parameter of {what} '{name}'{suggest(key, allowed)} "
                                f"(known: {known})", unknown_key=True)
        p = allowed[key]
        annotation = "" if p.annotation is p.empty else str(p.annotation)
        kind, nullable = ("alpha", True) if loc[0] == "loss" and key == "alpha" else _param_kind(p.default, annotation)
        out[key] = _coerce(value, kind, nullable, loc + (key,))
    return out


def synthetic_defaults() -> Optional[Dict[str, Any]]:
    """The synthetic generator's defaults, or None while that module does not exist yet."""
    try:
        from detectors.data.synthetic import DEFAULTS
    except ModuleNotFoundError as e:
        if e.name and "detectors.data.synthetic".startswith(e.name):
            return None
        raise
    if hasattr(DEFAULTS, "__dataclass_fields__"):
        import dataclasses
        return dataclasses.asdict(DEFAULTS)
    return dict(DEFAULTS)


def _check_components(study: Study) -> None:
    """Names, parameters and files that pydantic cannot know about; normalises param values."""
    _check_dataset(study.dataset)  # first: needs no torch, so a bad path is reported quickly
    from detectors.losses import CLS_LOSSES
    from detectors.models import MODELS

    for section, registry, reserved in (("detector", MODELS, DETECTOR_RESERVED), ("loss", CLS_LOSSES, LOSS_RESERVED)):
        spec = getattr(study, section)
        if spec.name not in registry:
            raise ConfigInvalid((section, "name"), f"unknown {registry.kind} '{spec.name}'"
                                f"{suggest(spec.name, registry.names())} (known: {', '.join(registry.names())})")
        spec.params = _check_params(registry, registry.kind, spec.name, spec.params, (section, "params"), reserved)


def _check_dataset(ds: DatasetSpec) -> None:
    if ds.kind == "synthetic":
        for key in COCO_KEYS:
            if getattr(ds, key) is not None:
                raise ConfigInvalid(("dataset", key), "only used with kind 'coco'")
        defaults = synthetic_defaults()
        out = {}
        for key, value in ds.synthetic.items():
            loc = ("dataset", "synthetic", key)
            if defaults is None:
                out[key] = _coerce(value, "json", True, loc)
                continue
            if key not in defaults:
                raise ConfigInvalid(loc, f"unknown generator setting{suggest(key, defaults)} "
                                    f"(known: {', '.join(sorted(defaults))})", unknown_key=True)
            out[key] = _coerce(value, *_param_kind(defaults[key]), loc)
        ds.synthetic = out
        _check_generator_values(out)
        return
    if ds.synthetic:
        raise ConfigInvalid(("dataset", "synthetic"), "only used with kind 'synthetic'")
    for key in COCO_KEYS:
        path = getattr(ds, key)
        if path is None:
            raise ConfigInvalid(("dataset", key), "required for kind 'coco'")
        want_dir = key.endswith("images")
        if not (os.path.isdir(path) if want_dir else os.path.isfile(path)):
            raise ConfigInvalid(("dataset", key), f"no such {'directory' if want_dir else 'file'}: {path}")


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
        raise ConfigInvalid(("dataset", "synthetic") + tuple(named[:1]), msg) from None
