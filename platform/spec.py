"""Study files: YAML (read by ``platform.studyfile``) parsed into typed pydantic models;
every problem is one line.

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
Every number has a range with both ends, here and in the components' and the
generator's declarations: an absurd value is an error, not a worker's failure.
"""
from __future__ import annotations

import copy
import os
from typing import Annotated, Any, Dict, List, Literal, Mapping, Optional, Tuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from detectors.registry import ConfigError
from platform.checks import COCO_KEYS, check_dataset, check_output, synthetic_defaults  # noqa: F401 (re-exported)
from platform.messages import show, suggest, translate
from platform.studyfile import StudyError, read_yaml  # noqa: F401 (re-exported: the study's errors)

SWEEPABLE = ("dataset", "detector", "loss", "losses", "train", "eval")


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



# Every number has a range with both ends. The upper ends are generous: they turn a
# typo (a learning rate of 1e3, 10^9 epochs, a batch of 10^5 images) into an error
# here, not a diverged, endless or out-of-memory trial in a worker.
Epochs = Annotated[int, Field(ge=1, le=10_000)]
LearningRate = Annotated[float, Field(gt=0, le=10)]
Momentum = Annotated[float, Field(ge=0, lt=1)]
WeightDecay = Annotated[float, Field(ge=0, le=1)]
WarmupIters = Annotated[int, Field(ge=0, le=10_000_000)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
LrDecay = Annotated[float, Field(gt=0, le=1)]          # the factor at each milestone: a decay
LossWeight = Annotated[float, Field(ge=0, le=1000)]    # a negative weight would maximise its loss
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]       # numpy's seed range (np.random.seed in the worker)


class PhaseSpec(_Strict):
    """One phase of training (``detectors.phases``); unset optimizer settings come from ``train``."""

    name: str = Field(pattern=r"^[a-z0-9_-]+$")
    epochs: Epochs
    trainable: Optional[List[str]] = Field(None, min_length=1)  # parameter-name prefixes; null: everything
    frozen: List[str] = []
    losses: Optional[List[str]] = Field(None, min_length=1)     # loss names that count; null: every one
    kind: Literal["sgd", "fit"] = "sgd"                          # fit: the detector fits the phase itself
    optimizer: Optional[Literal["sgd", "adamw"]] = None
    lr: Optional[LearningRate] = None
    momentum: Optional[Momentum] = None
    weight_decay: Optional[WeightDecay] = None
    warmup_iters: Optional[WarmupIters] = None
    schedule: Optional[Literal["cosine", "multistep", "constant"]] = None
    milestones: Optional[List[Fraction]] = None
    lr_decay: Optional[LrDecay] = None

    @field_validator("milestones")
    @classmethod
    def check_fractions(cls, v: Optional[List[float]]) -> Optional[List[float]]:
        return v if v is None else _fractions(v)


def _fractions(v: List[float]) -> List[float]:
    if any(not 0 < m < 1 for m in v) or v != sorted(set(v)):
        raise ValueError(f"expected increasing fractions of the total steps in (0, 1), got {v}")
    return v


class TrainSpec(_Strict):
    epochs: Epochs = 6
    batch_size: int = Field(8, ge=1, le=1024)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: LearningRate = 1e-3
    momentum: Momentum = 0.9
    weight_decay: WeightDecay = 1e-4
    warmup_iters: WarmupIters = 50
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: List[Fraction] = [0.67, 0.89]
    lr_decay: LrDecay = 0.1   # learning-rate factor at each milestone of the "multistep" schedule
    grad_clip: Optional[float] = Field(10.0, gt=0, le=1e6)
    loss_weights: Dict[str, LossWeight] = {}  # by loss name without "loss_"; unnamed: the detector's default, else 1
    max_steps: Optional[int] = Field(None, ge=1, le=1_000_000_000)  # per phase
    hflip_prob: float = Field(0.5, ge=0, le=1)
    eval_every_epoch: bool = True
    phases: Optional[List[PhaseSpec]] = Field(None, min_length=1)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast (+ fp16 loss scaling), detectors.precision
    channels_last: bool = False                           # NHWC convolution weights (faster on GPUs)

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
    # True: measured once per speed configuration, alone on a node, after training
    # (detectors.speed_phase); False: every trial measures itself as it finishes.
    isolated: bool = True
    latency_images: int = Field(50, ge=1, le=10_000)
    warmup: int = Field(10, ge=0, le=10_000)
    throughput_batch: int = Field(8, ge=1, le=256)       # the images of all throughput batches are
    throughput_batches: int = Field(5, ge=1, le=1000)    # loaded before timing: both ends bounded
    repeats: int = Field(5, ge=1, le=100)         # timings of throughput and of training speed (median, spread)
    train_steps: int = Field(5, ge=1, le=1000)    # optimiser steps per timing of training speed


class EvalSpec(_Strict):
    score_thresh: float = Field(0.05, ge=0, lt=1)  # scores are probabilities: 1 would keep no detection
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_dets: int = Field(100, ge=1, le=100)  # COCO AP counts at most 100 detections per image
    speed: SpeedSpec = Field(default_factory=SpeedSpec)


class SweepSpec(_Strict):
    grid: Dict[str, Any] = {}            # dotted key -> non-empty list of scalars (checked below)
    variants: List[Dict[str, Any]] = []  # each: dotted key -> scalar, applied together
    seeds: List[Seed] = Field([0], min_length=1)

    @field_validator("seeds")
    @classmethod
    def check_distinct(cls, v: List[int]) -> List[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat: {v}")
        return v


class ResourcesSpec(_Strict):
    # What this machine has is checked by ``platform.run`` before a local Ray starts.
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)   # per worker when workers_per_trial > 1
    gpus_per_trial: float = Field(0.0, ge=0, le=64)     # likewise
    workers_per_trial: int = Field(1, ge=1, le=1024)    # > 1: one trial on that many DDP workers (Ray Train)
    max_concurrent: Optional[int] = Field(None, ge=1, le=10_000)
    max_failures: int = Field(1, ge=0, le=100)


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

def validate(raw: Mapping[str, Any]) -> Study:
    """Validate a plain dict as a study (without the sweep checks); raises ConfigError."""
    try:
        study = Study.model_validate(raw)
    except ValidationError as e:
        raise translate(e, Study) from None
    _check_components(study)
    _check_workers(study)
    return study


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


def apply_overrides(study: Study, overrides: Mapping[str, Any]) -> Study:
    """A new, re-validated Study with ``{"dotted.key": value}`` applied; raises ConfigError."""
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
            raise ConfigError((parts[0],), f"cannot sweep '{key}': only keys under {', '.join(SWEEPABLE)}",
                                unknown_key=True)
        node = raw
        for i, part in enumerate(parts[:-1]):
            if parts[0] == "losses" and i == 1 and node.get(part) is None:
                node[part] = _role_default(raw, part)  # a role the base config leaves to its default
            if not isinstance(node.get(part), dict):
                raise ConfigError(tuple(parts[: i + 1]), "no such section", unknown_key=True)
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
    return parts[-1] == "name" and (parts[:-1] in (["detector"], ["loss"])
                                    or (len(parts) == 3 and parts[0] == "losses"))


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


def _check_components(study: Study) -> None:
    """What pydantic cannot know: the components' declared parameters, loss roles and loss
    names, the generator's settings and files on disk. Normalises param values in place."""
    check_dataset(study.dataset)  # first: needs no torch, so a bad path is reported quickly
    check_output(study)
    from detectors.build import check_components, check_loss_weights, check_phase_parts, weight_names

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
