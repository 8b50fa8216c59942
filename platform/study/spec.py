"""The study schema: what a study file may say, as typed pydantic models.

    study = platform.study.load.load_study("studies/focal_gamma_sweep.yaml")   # a Study

``extra="forbid"`` and strict types everywhere: a typo or a quoted number is an
error, not a silent default. Every number has a range with both ends, here and
in the components' and the generator's declarations: an absurd value is an
error, not a worker's failure. The rest of loading is elsewhere, in the order
it runs: the file (``platform.study``), what only the worker package knows
(``platform.study.checks``), the sweep (``platform.study.sweep``); the dotted keys of this
schema and of the components are ``platform.study.keys``.
"""
from __future__ import annotations

import os
from typing import Annotated, Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from detectors.config import PRETRAIN

COCO_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations")


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


class PretrainSpec(_Strict):
    """The platform's pretraining stage for the tiny body (``detectors.config.PretrainConfig``)."""

    images: int = Field(8000, ge=8, le=1_000_000)
    epochs: int = Field(20, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=4096)
    lr: float = Field(0.05, gt=0, le=10)
    weight_decay: float = Field(1e-4, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**32 - 1)


class BackboneSpec(_Strict):
    """Pretrained weights: ``null`` (random), ``pretrain`` (the platform's stage, tiny scale) or a file."""

    weights: Optional[str] = None
    freeze_at: int = Field(2, ge=0, le=5)
    norm: Literal["frozen", "train"] = "frozen"
    pretrain: PretrainSpec = Field(default_factory=PretrainSpec)

    @field_validator("weights")
    @classmethod
    def absolute_path(cls, v: Optional[str]) -> Optional[str]:
        return v if v in (None, PRETRAIN) else _abspath(v)


class DetectorSpec(_Strict):
    name: str
    scale: Literal["tiny", "paper"] = "tiny"
    params: Dict[str, Any] = {}
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)


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
    """One phase of training (``detectors.train.phases``); unset optimizer settings come from ``train``."""

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
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast (+ fp16 loss scaling), detectors.train.precision
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
    # (detectors.evaluation.speed_phase); False: every trial measures itself as it finishes.
    isolated: bool = True
    latency_images: int = Field(50, ge=1, le=10_000)
    warmup: int = Field(10, ge=0, le=10_000)
    throughput_batch: int = Field(8, ge=1, le=256)       # the images of all throughput batches are
    throughput_batches: int = Field(5, ge=1, le=1000)    # loaded before timing: both ends bounded
    repeats: int = Field(5, ge=1, le=100)         # timings of throughput and of training speed (median, spread)
    train_steps: int = Field(5, ge=1, le=1000)    # optimiser steps per timing of training speed


class EvalSpec(_Strict):
    score_thresh: float = Field(0.05, ge=0, lt=1)  # scores are probabilities: 1 would keep no detection
    # null: each detector's own test NMS IoU, its paper's (RetinaNet 0.5, GFL / ATSS / FCOS 0.6, the
    # R-CNN family 0.3, SSD 0.45, YOLOv1 0.5); a number: that IoU for every detector of the study.
    nms_iou: Optional[float] = Field(None, gt=0, le=1)
    max_dets: int = Field(100, ge=1, le=100)  # COCO AP counts at most 100 detections per image
    speed: SpeedSpec = Field(default_factory=SpeedSpec)


class SearchRange(_Strict):
    """One searched key's range: uniform in [low, high], or log-uniform (``log: true``, low > 0).
    Whether the key takes integers, the range it allows, and that low < high, are checked with the
    sweep (``platform.study.sweep``), where the key is known."""

    low: float = Field(ge=-1e12, le=1e12)
    high: float = Field(ge=-1e12, le=1e12)
    log: bool = False


class TuneSpec(_Strict):
    """An equal tuning budget per variant (``platform.runner.tuning``): for each variant, ``samples``
    configurations of the ``space`` keys drawn by Ray Tune's ``search`` algorithm, stopped early by
    its ``scheduler``, each trained with the study's budget on train minus a held-out ``holdout``
    fraction and scored by AP on that held-out part (never on val); then each variant's best
    configuration trains over the study's seeds."""

    space: Dict[str, SearchRange] = Field(min_length=1)  # dotted key -> its range
    samples: int = Field(8, ge=1, le=10_000)             # configurations per variant
    search: Literal["optuna", "random"] = "optuna"       # Optuna's TPE, or Optuna's random sampler
    scheduler: Literal["asha", "none"] = "asha"          # ASHA early stopping, or every sample to the end
    grace_epochs: int = Field(1, ge=1, le=10_000)        # ASHA: epochs before a sample can be stopped
    reduction_factor: int = Field(3, ge=2, le=100)       # ASHA: 1 in this many goes on at each rung
    holdout: float = Field(0.2, gt=0, lt=1)              # fraction of train images that scores the search
    seed: Seed = 0                                       # the samples' training seed and the search's seed


class SweepSpec(_Strict):
    grid: Dict[str, Any] = {}            # dotted key -> non-empty list of scalars (checked below)
    variants: List[Dict[str, Any]] = []  # each: dotted key -> scalar, applied together
    seeds: List[Seed] = Field([0], min_length=1)
    tune: Optional[TuneSpec] = None      # None: every variant trains with the study's values as written

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
