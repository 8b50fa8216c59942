"""Study files: YAML parsed into typed pydantic models; every problem is one line.

    study = platform.study.load_study("studies/focal_gamma_sweep.yaml")

Pydantic checks structure, types and ranges (``extra="forbid"`` and strict
types everywhere: a typo or a quoted number is an error, not a silent default).
A second pass asks the worker package what only it knows: the detector's and
losses' declared parameters (``detectors.build.check_components``), the loss
names ``train.loss_weights`` and phases may use, the synthetic generator's
settings, COCO files on disk. ``platform.sweep.check_sweep`` then substitutes
every swept value and validates again. Failures are :class:`StudyError`, whose
``str`` is ``<file>: <dotted.key.path>: <message>``. Torch is imported (with
the registries) only once the structure is valid, so most typos are reported fast.
"""
from __future__ import annotations

import copy
import os
import re
from typing import Any, Dict, List, Literal, Mapping, Optional, Tuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from detectors.registry import ParamError, check_value
from platform.messages import ConfigInvalid, show, suggest, translate

SWEEPABLE = ("dataset", "detector", "loss", "losses", "train", "eval")
COCO_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")


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



class PhaseSpec(_Strict):
    """One phase of training (``detectors.phases``); unset optimizer settings come from ``train``."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    epochs: int = Field(ge=1)
    trainable: Optional[List[str]] = Field(None, min_length=1)  # parameter-name prefixes; null: everything
    frozen: List[str] = []
    losses: Optional[List[str]] = Field(None, min_length=1)     # loss names that count; null: every one
    kind: Literal["sgd", "fit"] = "sgd"                          # fit: the detector fits the phase itself
    optimizer: Optional[Literal["sgd", "adamw"]] = None
    lr: Optional[float] = Field(None, gt=0)
    momentum: Optional[float] = Field(None, ge=0, lt=1)
    weight_decay: Optional[float] = Field(None, ge=0)
    warmup_iters: Optional[int] = Field(None, ge=0)
    schedule: Optional[Literal["cosine", "multistep", "constant"]] = None
    milestones: Optional[List[float]] = None
    lr_decay: Optional[float] = Field(None, gt=0)

    @field_validator("milestones")
    @classmethod
    def check_fractions(cls, v: Optional[List[float]]) -> Optional[List[float]]:
        return v if v is None else _fractions(v)


def _fractions(v: List[float]) -> List[float]:
    if any(not 0 < m < 1 for m in v) or v != sorted(set(v)):
        raise ValueError(f"expected increasing fractions of the total steps in (0, 1), got {v}")
    return v


class TrainSpec(_Strict):
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(8, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_iters: int = Field(50, ge=0)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: List[float] = [0.67, 0.89]
    lr_decay: float = Field(0.1, gt=0)   # learning-rate factor at each milestone of the "multistep" schedule
    grad_clip: Optional[float] = Field(10.0, gt=0)
    loss_weights: Dict[str, float] = {}  # by loss name without "loss_"; unnamed losses weigh 1
    max_steps: Optional[int] = Field(None, ge=1)  # per phase
    hflip_prob: float = Field(0.5, ge=0, le=1)
    eval_every_epoch: bool = True
    phases: Optional[List[PhaseSpec]] = Field(None, min_length=1)

    @field_validator("milestones")
    @classmethod
    def check_fractions(cls, v: List[float]) -> List[float]:
        return _fractions(v)

    @model_validator(mode="after")
    def epochs_from_phases(self) -> "TrainSpec":
        if self.phases:
            total = sum(p.epochs for p in self.phases)
            if "epochs" in self.model_fields_set and self.epochs != total:  # (re-validation sees the total)
                raise ValueError("give each phase its epochs, not train.epochs, when train.phases is set")
            names = [p.name for p in self.phases]
            if len(set(names)) != len(names):
                raise ValueError(f"phase names repeat: {names}")
            self.epochs = total
        return self


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
    loss: Optional[LossSpec] = None             # the detector's primary loss role (``cls`` for one-stage)
    losses: Dict[str, LossSpec] = {}            # any loss role the detector declares, by role name
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


def read_yaml(source: str) -> dict:
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
    for key, name in overrides.items():
        if not is_component_name(key):
            continue
        node = _node(raw, key.split(".")[:-1])
        if isinstance(name, str) and isinstance(node, dict) and name != node.get("name"):
            node["params"] = {}
    for key, value in sorted(overrides.items(), key=lambda kv: not kv[0].endswith(".name")):
        parts = key.split(".")
        if parts[0] not in SWEEPABLE or len(parts) < 2:
            raise ConfigInvalid((parts[0],), f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)}",
                                unknown_key=True)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if parts[0] == "losses" and i == 1 and node.get(part) is None:
                node[part] = _role_default(raw, part)  # a role the base config leaves to its default
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


def is_component_name(key: str) -> bool:
    """Whether a dotted key names a component: ``detector.name``, ``loss.name``, ``losses.<role>.name``."""
    parts = key.split(".")
    return parts[-1] == "name" and (parts[:-1] in (["detector"], ["loss"]) or (len(parts) == 3 and parts[0] == "losses"))


def _node(raw: Mapping[str, Any], path) -> Any:
    for part in path:
        raw = raw.get(part) if isinstance(raw, Mapping) else None
    return raw


def _role_default(raw: Mapping[str, Any], role: str) -> dict:
    """The loss a role gets when the study names none (for sweeping ``losses.<role>.params.*``)."""
    from detectors.build import resolve_losses

    try:
        spec = resolve_losses(raw["detector"]["name"], None, {}).get(role)
    except KeyError:  # an unknown detector or role: validation words it
        spec = None
    return {"name": spec["name"], "params": dict(spec["params"])} if spec else {"params": {}}


# --------------------------------------------------------------------------- components

def is_scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _invalid(e) -> ConfigInvalid:
    """A ``detectors.build.ComponentError`` in the platform's wording."""
    return ConfigInvalid(e.loc, e.msg, unknown_key=e.unknown_key, expected=e.expected)


def _check_components(study: Study) -> None:
    """What pydantic cannot know: the components' declared parameters, loss roles and loss
    names, the generator's settings and files on disk. Normalises param values in place."""
    _check_dataset(study.dataset)  # first: needs no torch, so a bad path is reported quickly
    from detectors.build import (ComponentError, check_components, check_loss_weights, check_phase_parts,
                                 weight_names)

    loss = study.loss.model_dump() if study.loss else None
    try:
        det, loss_params, roles = check_components(study.detector.model_dump(), loss,
                                                   {r: s.model_dump() for r, s in study.losses.items()})
        check_loss_weights(study.detector.name, study.train.loss_weights)
    except ComponentError as e:
        raise _invalid(e) from None
    study.detector.params = det
    if study.loss is not None:
        study.loss.params = loss_params
    for role, params in roles.items():
        study.losses[role].params = params
    if study.train.phases:
        try:
            check_phase_parts(study.detector.model_dump(), [p.model_dump() for p in study.train.phases])
        except ComponentError as e:
            raise _invalid(e) from None
    for i, phase in enumerate(study.train.phases or []):
        names = weight_names(study.detector.name)
        for j, name in enumerate(phase.losses or []):
            if name not in names:
                raise ConfigInvalid(("train", "phases", i, "losses", j),
                                    f"detector '{study.detector.name}' returns no loss '{name}'"
                                    f"{suggest(name, names)} (its losses: {', '.join(names)})")


def synthetic_defaults() -> Dict[str, Any]:
    """The synthetic generator's settings and their defaults."""
    from detectors.data.synthetic import DEFAULTS

    return dict(DEFAULTS)


def _hint_of(default: Any) -> Any:
    """A generator setting's type, from its default (a list default: a list of integers)."""
    if isinstance(default, list):
        return List[int] if all(isinstance(x, int) and not isinstance(x, bool) for x in default) else List[Any]
    return type(default) if isinstance(default, (bool, int, float, str)) else Any


def _check_dataset(ds: DatasetSpec) -> None:
    if ds.kind == "synthetic":
        for key in COCO_KEYS:
            if getattr(ds, key) is not None:
                raise ConfigInvalid(("dataset", key), "only used with kind 'coco'")
        defaults = synthetic_defaults()
        out = {}
        for key, value in ds.synthetic.items():
            loc = ("dataset", "synthetic", key)
            if key not in defaults:
                raise ConfigInvalid(loc, f"unknown generator setting{suggest(key, defaults)} "
                                    f"(known: {', '.join(sorted(defaults))})", unknown_key=True)
            try:
                out[key] = check_value(_hint_of(defaults[key]), value)
            except ParamError as e:
                raise ConfigInvalid(loc, e.msg, expected=e.expected) from None
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
