"""The trial config, typed: what the driver hands a worker, parsed once at the start of a trial.

    cfg = TrialConfig.from_dict(trial)      # trial: the plain JSON-able dict from the driver
    cfg.train.lr, cfg.eval.speed.repeats, cfg.detector.params["fpn"]

Every default of a trial lives here and nowhere else: worker code reads fields,
never ``trial.get(key, default)``. The study schema (``platform.study.spec``: ranges,
choices, the study file's wording of errors) declares the same sections with
the same defaults; ``tests/platform/test_trial_defaults.py`` walks both and
holds them equal. A trial dict is plain data (Ray pickles it to the workers, the
driver hashes it): :func:`to_dict` gives the dict form of any config here.

``from_dict`` is strict about keys (an unknown one is a ``ValueError`` naming
it: a trial written by other code than the driver's fails loudly, not with a
silently ignored setting) and fills missing ones from the defaults. Values are
not range-checked here: the driver validated them against the study schema.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Optional, Tuple, Union, get_args, get_origin, get_type_hints

__all__ = ["PRETRAIN", "PretrainConfig", "BackboneConfig", "PhaseConfig", "TrainConfig", "SpeedConfig", "EvalConfig",
           "DetectorConfig", "LossConfig", "DatasetConfig", "TrialConfig", "to_dict", "parse", "OPTIMIZER_KEYS",
           "PHASE_KINDS"]

Optimizer = Literal["sgd", "adamw"]
Schedule = Literal["cosine", "multistep", "constant"]
Precision = Literal["fp32", "bf16", "fp16"]
# "sgd": minibatch steps of the loss; "fit": the model fits the phase's parameters itself, once per epoch,
# by ``model.fit_phase(phase, train_ds, device)`` (R-CNN's SVMs with hard-negative mining).
PhaseKind = Literal["sgd", "fit"]
PHASE_KINDS: Tuple[str, ...] = get_args(PhaseKind)

# The optimizer settings a phase may set for itself; unset ones come from ``train``.
OPTIMIZER_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "warmup_iters", "schedule", "milestones",
                  "lr_decay")


@dataclass(frozen=True)
class PhaseConfig:
    """One phase of training (``detectors.train.phases``). Prefixes name parameters (``backbone``,
    ``head.cls_subnet``); ``trainable`` None trains everything, ``losses`` None counts every loss.
    The optimizer settings are None where the phase takes ``train``'s
    (:func:`detectors.train.phases.resolve_phases` fills them in)."""

    name: str
    epochs: int
    trainable: Optional[Tuple[str, ...]] = None
    frozen: Tuple[str, ...] = ()
    losses: Optional[Tuple[str, ...]] = None  # loss names without "loss_"
    kind: PhaseKind = "sgd"
    optimizer: Optional[Optimizer] = None
    lr: Optional[float] = None
    momentum: Optional[float] = None
    weight_decay: Optional[float] = None
    warmup_iters: Optional[int] = None
    schedule: Optional[Schedule] = None
    milestones: Optional[Tuple[float, ...]] = None
    lr_decay: Optional[float] = None


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 6                      # the sum of the phases' epochs when ``phases`` is set
    batch_size: int = 8                  # global: split over the workers of a multi-worker trial
    optimizer: Optimizer = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9                # SGD only
    weight_decay: float = 1e-4
    warmup_iters: int = 50               # linear warm-up from 0.1% of lr, in optimiser steps
    schedule: Schedule = "cosine"
    milestones: Tuple[float, ...] = (0.67, 0.89)  # "multistep": fractions of the phase's steps
    lr_decay: float = 0.1                # "multistep": the lr factor at each milestone
    grad_clip: Optional[float] = 10.0    # max gradient norm; None: no clipping
    loss_weights: Mapping[str, float] = field(default_factory=dict)  # by loss name without "loss_"
    max_steps: Optional[int] = None      # per phase
    hflip_prob: float = 0.5
    eval_every_epoch: bool = True        # else only each phase's last epoch
    phases: Optional[Tuple[PhaseConfig, ...]] = None  # None: the detector's declared scheme, else one phase
    precision: Precision = "fp32"        # autocast (+ fp16 loss scaling), detectors.train.precision
    channels_last: bool = False          # NHWC convolution weights (faster on GPUs)


@dataclass(frozen=True)
class SpeedConfig:
    enabled: bool = True
    # True: measured once per speed configuration, alone on a node, after training
    # (detectors.evaluation.speed_phase); False: every trial measures itself as it finishes.
    isolated: bool = True
    latency_images: int = 50
    warmup: int = 10
    throughput_batch: int = 8
    throughput_batches: int = 5
    repeats: int = 5        # timings of throughput and of training speed (median, spread)
    train_steps: int = 5    # optimiser steps per timing of training speed


@dataclass(frozen=True)
class EvalConfig:
    score_thresh: float = 0.05
    nms_iou: Optional[float] = None      # None: the detector's own default (its paper's)
    max_dets: int = 100
    speed: SpeedConfig = field(default_factory=SpeedConfig)


# ``detector.backbone.weights`` naming the platform's own pretraining stage rather than a file.
PRETRAIN = "pretrain"


@dataclass(frozen=True)
class PretrainConfig:
    """The platform's pretraining stage (``detectors.train.pretrain``): the tiny body trained as an image
    classifier on the generated classification set (``detectors.data.classification``), SGD with
    momentum 0.9 and a cosine schedule, standing in for ImageNet pretraining."""

    # Chosen by the classifier's held-out accuracy alone (0.81 at 4000 images, 20 epochs; 0.37 at 8 epochs).
    images: int = 8000       # training images (the held-out set that reports accuracy is an eighth of it)
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class BackboneConfig:
    """Where the backbone's weights come from and how they are fine-tuned (``detectors.models.pretrained``)."""

    weights: Optional[str] = None   # None: random; "pretrain": the platform's stage (tiny); else a state dict file
    freeze_at: int = 2              # pretrained only: stages frozen from the first (ResNet: stem, layer1, ...)
    norm: Literal["frozen", "train"] = "frozen"  # pretrained only: the body's batch norms fixed, or trained
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    scale: Literal["tiny", "paper"] = "tiny"
    params: Mapping[str, Any] = field(default_factory=dict)  # checked against the detector's declaration
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


@dataclass(frozen=True)
class LossConfig:
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)  # checked against the loss's declaration


@dataclass(frozen=True)
class DatasetConfig:
    kind: Literal["synthetic", "coco"]
    train_images: Optional[str] = None      # absolute paths (the synthetic set's once generated)
    train_annotations: Optional[str] = None
    val_images: Optional[str] = None
    val_annotations: Optional[str] = None
    synthetic: Optional[Mapping[str, Any]] = None  # the generator's settings (kind "synthetic")
    cache_dir: Optional[str] = None
    digest: Optional[str] = None            # sha256 of the dataset's identity (the MLflow dataset input)


@dataclass(frozen=True)
class TrialConfig:
    """One trial as the driver expands it (docs/architecture.md, "The trial dict")."""

    study: str
    trial_key: str                     # "<variant>/seed=<seed>", unique in the study
    variant: str
    seed: int
    config_hash: str
    dataset: DatasetConfig
    trial_dir: str                     # absolute: where the worker writes files
    detector: DetectorConfig
    loss: Optional[LossConfig] = None  # the detector's primary loss role; None: the role's default
    losses: Mapping[str, LossConfig] = field(default_factory=dict)  # other roles, by role name
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    num_threads: int = 1               # torch threads (the CPUs given to the trial, per worker)
    gpus: float = 0                    # GPUs per worker: > 0 picks CUDA where one is visible
    workers: int = 1                   # > 1: Ray Train workers (detectors.train.distributed)
    cpus: float = 1.0                  # CPUs per worker
    speed_phase: bool = False          # set by the driver: latency and throughput come from the speed phase
    loader_workers: int = 0            # DataLoader worker processes
    backbone_digest: Optional[str] = None  # set by the driver: sha256 of the weights file, or of the pretraining
    # Set by the driver for a study with ``sweep.tune`` (platform.runner.tuning); no worker reads them.
    tuning: Optional[Mapping[str, Any]] = None  # a tuning sample: {"sample": i, "values": {dotted key: value}}
    tuned: Optional[Mapping[str, Any]] = None   # a trial of the tuned study: the sample whose values it took

    @classmethod
    def from_dict(cls, trial: Union[Mapping[str, Any], "TrialConfig"]) -> "TrialConfig":
        return trial if isinstance(trial, TrialConfig) else parse(cls, trial)

    @property
    def device_type(self) -> str:
        """"cuda" when the trial asked for a GPU (whether one is visible is the runtime's business)."""
        return "cuda" if self.gpus > 0 else "cpu"


# --------------------------------------------------------------------------- dict <-> dataclass

def parse(cls: type, data: Mapping[str, Any], where: str = "trial") -> Any:
    """``cls`` (a dataclass of this module) from a plain mapping: nested dataclasses, tuples and
    mappings of them parsed recursively, missing keys defaulted, unknown keys a ValueError."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown} (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{where}: missing key '{f.name}'")
    return cls(**values)


def _value(hint: Any, value: Any, where: str) -> Any:
    if value is None:
        return None
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union:  # Optional[X]
        return _value(next(a for a in args if a is not type(None)), value, where)
    if dataclasses.is_dataclass(hint):
        return parse(hint, value, where)
    if origin is tuple:
        return tuple(_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is collections.abc.Mapping and dataclasses.is_dataclass(args[1]):
        return {k: parse(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin is collections.abc.Mapping:
        return dict(value)
    return value


def to_dict(config: Any) -> Any:
    """The plain, JSON-able form of a config (tuples as lists): what crosses to Ray and is hashed."""
    return json.loads(json.dumps(dataclasses.asdict(config)))
