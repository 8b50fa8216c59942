"""The results store's tables (SQLAlchemy 2 ORM declarations), for ``platform.track.store`` alone:
dashboards read through the store's read API and never see these classes.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import List, Optional, Union

from sqlalchemy import DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

Timestamp = Union[datetime, float, int, None]


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes on every backend (SQLite stores naive text; we pin it to UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Optional[datetime], dialect) -> Optional[datetime]:
        if value is None:
            return None
        value = _utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Optional[datetime], dialect) -> Optional[datetime]:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _utc(t: Timestamp) -> Optional[datetime]:
    """datetime (naive means UTC) or Unix seconds -> aware UTC datetime."""
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return datetime.fromtimestamp(t, tz=timezone.utc)
    return t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc)


def _now() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    spec_json: Mapped[str] = mapped_column(Text)
    study_file: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
    mlflow_experiment_id: Mapped[Optional[str]] = mapped_column(String(64))
    last_parent_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    trials: Mapped[List["TrialRow"]] = relationship(back_populates="study")


class TrialRow(Base):
    __tablename__ = "trials"
    __table_args__ = (UniqueConstraint("study_id", "config_hash"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    config_hash: Mapped[str] = mapped_column(String(64))
    trial_key: Mapped[str] = mapped_column(Text)  # long with many swept keys
    variant: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # running | finished | failed
    started_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    finished_at: Mapped[Optional[datetime]] = mapped_column(UTCDateTime)
    duration_s: Mapped[Optional[float]] = mapped_column(Float)
    mlflow_run_id: Mapped[Optional[str]] = mapped_column(String(64))
    error: Mapped[Optional[str]] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    study: Mapped[StudyRow] = relationship(back_populates="trials")


class MetricRow(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_trial_id", "trial_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[Optional[float]] = mapped_column(Float)  # NULL stands for NaN (SQLite cannot store NaN)
    step: Mapped[Optional[int]] = mapped_column(Integer)    # NULL: a final metric


class TrialDataRow(Base):
    __tablename__ = "trial_data"
    __table_args__ = (UniqueConstraint("trial_id", "key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("trials.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(200))
    json: Mapped[str] = mapped_column(Text)


class GroundTruthRow(Base):
    """A val ground truth (COCO-format dict), stored once however many trials were evaluated on it."""

    __tablename__ = "ground_truths"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the canonical JSON
    json: Mapped[str] = mapped_column(Text)


GROUND_TRUTH_KEY = "val_ground_truth"  # trial-data key holding the digest


class RawJSON(str):
    """Trial data that is JSON text already (a file the worker wrote with ``json.dump``): stored as
    it is, not parsed and dumped again (a trial's val detections are about 240 KB)."""


class SpeedRow(Base):
    """One isolated speed measurement (``detectors.evaluation.speed_phase``), shared by every trial whose
    speed key has this digest; trials name it in their data key ``speed_key``."""

    __tablename__ = "speed_figures"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the speed key
    key_json: Mapped[str] = mapped_column(Text)
    figures_json: Mapped[str] = mapped_column(Text)
    hardware_json: Mapped[str] = mapped_column(Text)
    method_json: Mapped[str] = mapped_column(Text)
    trial_hash: Mapped[Optional[str]] = mapped_column(String(64))   # whose trained weights were timed
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)


SPEED_KEY = "speed_key"  # trial-data key holding the speed figure's digest


class PretrainingRow(Base):
    """One run of the pretraining stage (``detectors.train.pretrain``): the weights every trial whose
    ``detector.backbone`` names these settings starts from, shared by studies."""

    __tablename__ = "pretrained_backbones"
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # pretrain_digest of the settings
    settings_json: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)          # the weights file (in the dataset cache)
    result_json: Mapped[str] = mapped_column(Text)   # accuracy per epoch, seconds, images
    study: Mapped[str] = mapped_column(String(200))  # the study whose run trained it
    trained_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_now)
