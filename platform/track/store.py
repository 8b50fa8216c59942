"""The results store: studies, trials, metrics and per-trial data in SQL (SQLAlchemy 2 ORM).

    store = Store("sqlite:////abs/runs/results.db")   # any SQLAlchemy URL (PostgreSQL too)

The driver is the only writer (one per study: two studies running at once
share a runs directory's file, each write waiting for the other's, and a new
file's tables made by one at a time, ``platform.track.locks``); dashboards read
through the read API at the bottom and never see the ORM classes. Metrics are stored long (one row per
trial, name and step; ``step IS NULL`` for final metrics) so a new metric needs
no schema change. Everything a finished trial produced is written in one
transaction: a failure leaves the trial's earlier rows as they were. The val
ground truth a trial was evaluated on (what the pages' image bootstrap needs)
is stored once per content in ``ground_truths``; a trial's data key
``val_ground_truth`` holds its digest, so thirty trials on COCO val2017 keep one copy.
Isolated speed figures (one per speed configuration) live in ``speed_figures``
with the hardware they were measured on; a trial's data key ``speed_key`` names
its figure, and the figures are also its final ``speed/*`` metrics.
Timestamps are timezone-aware UTC on the way in and out.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Union

from sqlalchemy import create_engine, delete, event, insert, select
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.orm import Session, sessionmaker

from platform.track.locks import creating, sqlite_file
from platform.track.tables import (
    GROUND_TRUTH_KEY, SPEED_KEY, Base, GroundTruthRow, MetricRow, PretrainingRow, RawJSON, SpeedRow, StudyRow,
    Timestamp, TrialDataRow, TrialRow, _now, _utc,
)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # One writer (the driver) with short transactions: the default rollback journal
    # is enough, works on network filesystems (WAL does not), and lets a read-only
    # opener (``--dry-run``) read without creating -wal/-shm files. busy_timeout
    # makes a reader that meets a write wait instead of failing.
    for pragma in ("foreign_keys=ON", "busy_timeout=30000"):
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def _number(v: Any) -> Optional[float]:
    """A metric value as float (NaN -> None), or raise for non-numbers."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        if hasattr(v, "item"):  # numpy / torch scalars
            v = v.item()
        else:
            raise TypeError(f"metric value {v!r} is not a number")
    v = float(v)
    return None if math.isnan(v) else v


def _metric_rows(trial_id: int, values: Mapping[str, Any], step: Optional[int]) -> List[Dict[str, Any]]:
    """Numeric values become rows (for one ``insert(MetricRow)`` of many); None and strings
    (e.g. Tune's bookkeeping) are skipped."""
    return [{"trial_id": trial_id, "name": name, "value": _number(v), "step": step}
            for name, v in values.items() if v is not None and not isinstance(v, str)]


def _insert_metrics(s: Union[Session, Connection], rows: List[Dict[str, Any]]) -> None:
    # one executemany, not an ORM object per value: a trial's 8 epochs are about 170 rows
    if rows:
        s.execute(insert(MetricRow), rows)


class Store:
    """The results store. ``Store(url)`` creates missing tables; ``readonly=True`` never writes."""

    # A study's tuning samples (``platform.runner.tuning``) are stored as a study of this name
    # after the study's own; ``studies()`` leaves them out.
    TUNING_SUFFIX = ".tune"

    def __init__(self, url: str, readonly: bool = False) -> None:
        self._args = (url, readonly)
        parsed = make_url(url)
        sqlite = parsed.get_backend_name() == "sqlite"
        db = parsed.database
        if sqlite and db and db != ":memory:" and not readonly:
            os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
        if sqlite and readonly and db and db != ":memory:":
            url = f"sqlite:///file:{os.path.abspath(db)}?mode=ro&uri=true"
        self.url = url
        self.engine = create_engine(url)
        if sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._gt_text: Optional[tuple] = None  # (the last val ground truth recorded, its digest, its text)
        # Ids of the rows this object wrote or looked up, kept once their transaction committed:
        # ("study", name), ("trial", study, config hash), ("ground_truth", digest). No such row is
        # ever deleted, so the writes of a running study look none up again (an epoch report is two
        # SQL statements, not five: the driver's time per trial, ``python -m platform.bench --scale``).
        self._ids: Dict[tuple, Any] = {}
        if not readonly:
            with creating(sqlite_file(url)):  # another driver may be creating them now (platform.track.locks)
                Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # Pickles as its URL (the engine holds connections and weak references), so an
    # object holding a Store, e.g. a Tune callback saved with the experiment, can be pickled.
    def __getstate__(self) -> dict:
        return {"url": self._args[0], "readonly": self._args[1]}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"], state["readonly"])

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[Session]:
        with self._session() as session, session.begin():
            yield session
        self._ids.update({k: v.id if isinstance(v, TrialRow) else v for k, v in session.info.get("ids", {}).items()})

    @staticmethod
    def _keep(s: Session, key: tuple, value: Any) -> None:
        """A row id to keep in ``_ids`` if ``s``'s transaction commits (a rolled-back row is not kept)."""
        s.info.setdefault("ids", {})[key] = value

    # ----------------------------------------------------------------- writes

    def upsert_study(self, name: str, description: str, spec: Mapping[str, Any], study_file: Optional[str],
                     mlflow_experiment_id: Optional[str] = None, last_parent_run_id: Optional[str] = None) -> int:
        """Insert or update a study; MLflow ids given as None keep their stored values. Returns its id."""
        with self._tx() as s:
            row = s.scalar(select(StudyRow).where(StudyRow.name == name))
            if row is None:
                row = StudyRow(name=name, created_at=_now())
                s.add(row)
            row.description, row.spec_json, row.study_file = description, json.dumps(spec, sort_keys=True), study_file
            row.updated_at = _now()
            if mlflow_experiment_id is not None:
                row.mlflow_experiment_id = str(mlflow_experiment_id)
            if last_parent_run_id is not None:
                row.last_parent_run_id = last_parent_run_id
            s.flush()
            self._keep(s, ("study", name), row.id)
            return row.id

    def _trial_row(self, s: Session, study_name: str, trial: Mapping[str, Any], status: str) -> TrialRow:
        study_id = self._ids.get(("study", study_name))
        if study_id is None:
            study_id = s.scalar(select(StudyRow.id).where(StudyRow.name == study_name))
            if study_id is None:
                raise KeyError(f"study '{study_name}' is not in the store (call upsert_study first)")
            self._keep(s, ("study", study_name), study_id)
        row = s.scalar(select(TrialRow).where(TrialRow.study_id == study_id,
                                              TrialRow.config_hash == trial["config_hash"]))
        if row is None:
            row = TrialRow(study_id=study_id, config_hash=trial["config_hash"], attempts=0)
            s.add(row)
        row.trial_key, row.variant, row.seed = trial["trial_key"], trial["variant"], int(trial["seed"])
        row.config_json, row.status = json.dumps(trial, sort_keys=True), status
        self._keep(s, ("trial", study_name, trial["config_hash"]), row)  # its id once flushed
        return row

    def mark_running(self, study_name: str, trial: Mapping[str, Any], mlflow_run_id: Optional[str],
                     started_at: Timestamp = None) -> None:
        """The trial started (again): status running, start time ``started_at`` (default now), attempts + 1."""
        with self._tx() as s:
            row = self._trial_row(s, study_name, trial, "running")
            row.started_at, row.finished_at, row.duration_s = _utc(started_at) or _now(), None, None
            row.mlflow_run_id, row.error, row.attempts = mlflow_run_id, None, (row.attempts or 0) + 1

    def record_finished(self, study_name: str, trial: Mapping[str, Any], final_metrics: Mapping[str, Any],
                        epoch_metrics: List[Mapping[str, Any]], data: Mapping[str, Any],
                        mlflow_run_id: Optional[str], started_at: Timestamp, finished_at: Timestamp,
                        val_ground_truth: Optional[Mapping[str, Any]] = None, keep_epochs: bool = False) -> None:
        """One transaction: the trial row (finished), its metrics and data replacing earlier ones.

        ``final_metrics``: name -> number (stored with step NULL). ``epoch_metrics``:
        dicts with ``"step"`` and name -> number. ``keep_epochs``: epoch rows stored before
        (:meth:`record_epochs`) stay, those of ``epoch_metrics``' steps replaced; else every
        earlier metric goes. ``data``: key -> JSON-able object.
        ``val_ground_truth``: the COCO-format dict the trial was evaluated on, stored
        once per content (see the module docstring).
        Non-numeric metric values other than None/str raise; so does non-JSON data,
        and then nothing of this call is written.
        """
        started, finished = _utc(started_at), _utc(finished_at) or _now()
        data = dict(data)
        gt_text = None
        if val_ground_truth is not None:
            data[GROUND_TRUTH_KEY], gt_text = self._ground_truth_text(val_ground_truth)
        with self._tx() as s:
            gt_key = ("ground_truth", data.get(GROUND_TRUTH_KEY))
            if gt_text is not None and gt_key not in self._ids:
                if s.get(GroundTruthRow, gt_key[1]) is None:
                    s.add(GroundTruthRow(digest=gt_key[1], json=gt_text))
                self._keep(s, gt_key, gt_key[1])
            row = self._trial_row(s, study_name, trial, "finished")
            s.flush()
            gone = MetricRow.trial_id == row.id
            if keep_epochs:
                steps = [int(e["step"]) for e in epoch_metrics]
                gone = gone & (MetricRow.step.is_(None) | MetricRow.step.in_(steps))
            s.execute(delete(MetricRow).where(gone))
            s.execute(delete(TrialDataRow).where(TrialDataRow.trial_id == row.id))
            rows = _metric_rows(row.id, final_metrics, None)
            for epoch in epoch_metrics:
                rows += _metric_rows(row.id, {k: v for k, v in epoch.items() if k != "step"}, int(epoch["step"]))
            _insert_metrics(s, rows)
            s.add_all([TrialDataRow(trial_id=row.id, key=k, json=v if isinstance(v, RawJSON) else json.dumps(v))
                       for k, v in data.items()])
            row.error, row.mlflow_run_id = None, mlflow_run_id
            row.started_at = started or row.started_at
            row.finished_at = finished
            row.duration_s = (finished - row.started_at).total_seconds() if row.started_at else None
            row.attempts = max(row.attempts or 0, 1)

    def _ground_truth_text(self, gt: Mapping[str, Any]) -> tuple:
        """``(digest, canonical JSON)`` of a val ground truth; the same object as the last call's
        (the driver passes one per val file, ``platform.runner.callbacks``) is not dumped again."""
        if self._gt_text is None or self._gt_text[0] is not gt:
            text = json.dumps(gt, sort_keys=True, separators=(",", ":"))
            self._gt_text = (gt, hashlib.sha256(text.encode()).hexdigest(), text)
        return self._gt_text[1:]

    def record_epoch(self, study_name: str, trial: Mapping[str, Any], step: int, values: Mapping[str, Any]) -> None:
        """One epoch report of a running trial (rows at ``step``, replacing that step's)."""
        self.record_epochs(study_name, [(trial, {step: values})])

    def record_epochs(self, study_name: str, epochs: List[tuple]) -> None:
        """Epoch reports of running trials in one transaction: ``[(trial, {step: {name: value}}), ...]``,
        each step's rows replacing that step's. A study whose driver dies keeps the epochs its trials
        reported, and the run that resumes them adds the rest (:meth:`trial_epochs`)."""
        for trial, _ in epochs:
            if ("trial", study_name, trial["config_hash"]) not in self._ids:  # not marked running by this object
                with self._tx() as s:
                    self._trial_row(s, study_name, trial, "running")
        # the driver's write per epoch report, inside Tune's loop: SQL statements, no ORM session
        with self.engine.begin() as conn:
            rows = []
            for trial, steps in epochs:
                trial_id = self._ids[("trial", study_name, trial["config_hash"])]
                conn.execute(delete(MetricRow).where(MetricRow.trial_id == trial_id,
                                                     MetricRow.step.in_([int(k) for k in steps])))
                for step, values in steps.items():
                    rows += _metric_rows(trial_id, values, int(step))
            _insert_metrics(conn, rows)

    def record_trial_data(self, study_name: str, config_hash: str, data: Mapping[str, Any]) -> bool:
        """Data keys of a finished trial (``{key: object}``, replacing their values), for what is derived
        from the trial after its record (``dashboards.errors.trial_errors``); False, writing nothing, if
        the trial is not finished."""
        with self._tx() as s:
            trial_id = s.scalar(select(TrialRow.id).join(StudyRow).where(
                StudyRow.name == study_name, TrialRow.config_hash == config_hash, TrialRow.status == "finished"))
            if trial_id is None:
                return False
            s.execute(delete(TrialDataRow).where(TrialDataRow.trial_id == trial_id, TrialDataRow.key.in_(list(data))))
            s.add_all([TrialDataRow(trial_id=trial_id, key=k, json=json.dumps(v)) for k, v in data.items()])
            return True

    def set_mlflow_run_id(self, study_name: str, config_hash: str, run_id: str) -> None:
        """The trial's MLflow run, after it was (re)made from the store (``platform.track.reconcile``)."""
        with self._tx() as s:
            row = s.scalar(select(TrialRow).join(StudyRow).where(StudyRow.name == study_name,
                                                                TrialRow.config_hash == config_hash))
            if row is not None:
                row.mlflow_run_id = run_id

    def record_failed(self, study_name: str, trial: Mapping[str, Any], error: str, mlflow_run_id: Optional[str],
                      attempts: int, started_at: Timestamp = None, finished_at: Timestamp = None) -> None:
        """The trial failed for good: status failed, the error text, its metrics and data removed.
        ``started_at`` defaults to the time :meth:`mark_running` recorded, ``finished_at`` to now."""
        started, finished = _utc(started_at), _utc(finished_at) or _now()
        with self._tx() as s:
            row = self._trial_row(s, study_name, trial, "failed")
            s.flush()
            s.execute(delete(MetricRow).where(MetricRow.trial_id == row.id))
            s.execute(delete(TrialDataRow).where(TrialDataRow.trial_id == row.id))
            row.error, row.mlflow_run_id, row.attempts = error, mlflow_run_id, attempts
            row.started_at = started or row.started_at
            row.finished_at = finished
            row.duration_s = (row.finished_at - row.started_at).total_seconds() if row.started_at else None

    def record_speed(self, study_name: str, digest: str, measurement: Optional[Mapping[str, Any]],
                     config_hashes: List[str], metrics: Mapping[str, Any]) -> None:
        """One transaction: the speed figure ``digest`` (written when ``measurement`` is given:
        ``key``, ``figures``, ``hardware``, ``method``, ``trial_hash``), and for each finished trial
        of the study in ``config_hashes`` its data key ``speed_key`` and final metrics ``metrics``
        (replacing values of the same names)."""
        with self._tx() as s:
            if measurement is not None:
                row = s.get(SpeedRow, digest) or SpeedRow(digest=digest)
                row.key_json = json.dumps(measurement["key"], sort_keys=True)
                row.figures_json = json.dumps(measurement["figures"])
                row.hardware_json = json.dumps(measurement["hardware"])
                row.method_json = json.dumps(measurement["method"])
                row.trial_hash, row.measured_at = measurement.get("trial_hash"), _now()
                s.add(row)
            elif s.get(SpeedRow, digest) is None:
                raise KeyError(f"no speed figure {digest[:12]} in the store")
            ids = list(s.scalars(select(TrialRow.id).join(StudyRow).where(
                StudyRow.name == study_name, TrialRow.config_hash.in_(list(config_hashes)),
                TrialRow.status == "finished")))
            if not ids:
                return
            s.execute(delete(TrialDataRow).where(TrialDataRow.trial_id.in_(ids), TrialDataRow.key == SPEED_KEY))
            s.execute(delete(MetricRow).where(MetricRow.trial_id.in_(ids), MetricRow.step.is_(None),
                                              MetricRow.name.in_(list(metrics))))
            for trial_id in ids:
                s.add(TrialDataRow(trial_id=trial_id, key=SPEED_KEY, json=json.dumps(digest)))
                _insert_metrics(s, _metric_rows(trial_id, metrics, None))

    # ----------------------------------------------------------------- reads

    def finished_hashes(self, study_name: str) -> Set[str]:
        with self._session() as s:
            q = select(TrialRow.config_hash).join(StudyRow).where(StudyRow.name == study_name,
                                                                  TrialRow.status == "finished")
            return set(s.scalars(q))

    def studies(self) -> List[Dict[str, Any]]:
        with self._session() as s:
            return [{"name": r.name, "description": r.description, "spec": json.loads(r.spec_json),
                     "study_file": r.study_file, "created_at": r.created_at, "updated_at": r.updated_at,
                     "mlflow_experiment_id": r.mlflow_experiment_id, "last_parent_run_id": r.last_parent_run_id}
                    for r in s.scalars(select(StudyRow).order_by(StudyRow.name))
                    if not r.name.endswith(self.TUNING_SUFFIX)]

    def trials(self, study_name: str) -> List[Dict[str, Any]]:
        """Every trial of the study (any status), in the order they were first recorded."""
        with self._session() as s:
            q = select(TrialRow).join(StudyRow).where(StudyRow.name == study_name).order_by(TrialRow.id)
            return [{"trial_key": r.trial_key, "variant": r.variant, "seed": r.seed, "config_hash": r.config_hash,
                     "config": json.loads(r.config_json), "status": r.status, "started_at": r.started_at,
                     "finished_at": r.finished_at, "duration_s": r.duration_s, "mlflow_run_id": r.mlflow_run_id,
                     "error": r.error, "attempts": r.attempts}
                    for r in s.scalars(q)]

    def _metrics(self, study_name: str, final: bool) -> List[Dict[str, Any]]:
        with self._session() as s:
            q = (select(TrialRow.trial_key, TrialRow.variant, TrialRow.seed, MetricRow.step, MetricRow.name,
                        MetricRow.value)
                 .join(TrialRow, MetricRow.trial_id == TrialRow.id).join(StudyRow)
                 .where(StudyRow.name == study_name, TrialRow.status == "finished",
                        MetricRow.step.is_(None) if final else MetricRow.step.is_not(None))
                 .order_by(TrialRow.id, MetricRow.step, MetricRow.name))
            rows = []
            for key, variant, seed, step, name, value in s.execute(q):
                row = {"trial_key": key, "variant": variant, "seed": seed, "name": name,
                       "value": math.nan if value is None else value}
                rows.append(row if final else {**row, "step": step})
            return rows

    def final_metrics(self, study_name: str) -> List[Dict[str, Any]]:
        """Finished trials' final metrics: dicts with trial_key, variant, seed, name, value."""
        return self._metrics(study_name, final=True)

    def epoch_metrics(self, study_name: str) -> List[Dict[str, Any]]:
        """Finished trials' per-epoch metrics: trial_key, variant, seed, step, name, value."""
        return self._metrics(study_name, final=False)

    def trial_epochs(self, study_name: str, config_hash: str) -> Dict[int, Dict[str, float]]:
        """``{step: {name: value}}`` of one trial's epoch rows, whatever its status."""
        with self._session() as s:
            q = (select(MetricRow.step, MetricRow.name, MetricRow.value)
                 .join(TrialRow, MetricRow.trial_id == TrialRow.id).join(StudyRow)
                 .where(StudyRow.name == study_name, TrialRow.config_hash == config_hash, MetricRow.step.is_not(None)))
            out: Dict[int, Dict[str, float]] = {}
            for step, name, value in s.execute(q):
                out.setdefault(int(step), {})[name] = math.nan if value is None else value
            return out

    def trial_final(self, study_name: str, config_hash: str) -> Dict[str, float]:
        """One trial's final metrics (rows with no step)."""
        with self._session() as s:
            q = (select(MetricRow.name, MetricRow.value).join(TrialRow, MetricRow.trial_id == TrialRow.id)
                 .join(StudyRow).where(StudyRow.name == study_name, TrialRow.config_hash == config_hash,
                                       MetricRow.step.is_(None)))
            return {name: math.nan if value is None else value for name, value in s.execute(q)}

    def trial_data(self, study_name: str, key: str, trial_keys: Optional[List[str]] = None) -> Dict[str, Any]:
        """``{trial_key: object}`` for one data key (per-class AP, PR curves...) of finished trials
        (those of ``trial_keys`` only, when given)."""
        with self._session() as s:
            q = (select(TrialRow.trial_key, TrialDataRow.json).join(TrialRow, TrialDataRow.trial_id == TrialRow.id)
                 .join(StudyRow).where(StudyRow.name == study_name, TrialRow.status == "finished",
                                       TrialDataRow.key == key).order_by(TrialRow.id))
            if trial_keys is not None:
                q = q.where(TrialRow.trial_key.in_(list(trial_keys)))
            return {k: json.loads(text) for k, text in s.execute(q)}

    def speed_figures(self, digests: Optional[Set[str]] = None) -> Dict[str, Dict[str, Any]]:
        """``{digest: {key, figures, hardware, method, trial_hash, measured_at}}`` of the isolated
        speed figures (those named in ``digests``; all when None). A store written before the
        table existed, opened read-only, has none."""
        from sqlalchemy import inspect

        if not inspect(self.engine).has_table(SpeedRow.__tablename__):
            return {}
        with self._session() as s:
            q = select(SpeedRow)
            if digests is not None:
                q = q.where(SpeedRow.digest.in_(list(digests)))
            return {r.digest: {"key": json.loads(r.key_json), "figures": json.loads(r.figures_json),
                               "hardware": json.loads(r.hardware_json), "method": json.loads(r.method_json),
                               "trial_hash": r.trial_hash, "measured_at": r.measured_at}
                    for r in s.scalars(q)}

    def record_pretraining(self, digest: str, settings: Mapping[str, Any], path: str, result: Mapping[str, Any],
                           study_name: str) -> None:
        """The pretraining stage's run with this digest (written once; a later study's cache hit keeps it)."""
        with self._tx() as s:
            if s.get(PretrainingRow, digest) is None:
                s.add(PretrainingRow(digest=digest, settings_json=json.dumps(dict(settings), sort_keys=True),
                                     path=path, result_json=json.dumps(dict(result)), study=study_name))

    def pretrainings(self) -> Dict[str, Dict[str, Any]]:
        """``{digest: {settings, path, result, study, trained_at}}`` of every pretraining run."""
        from sqlalchemy import inspect

        if not inspect(self.engine).has_table(PretrainingRow.__tablename__):
            return {}
        with self._session() as s:
            return {r.digest: {"settings": json.loads(r.settings_json), "path": r.path,
                               "result": json.loads(r.result_json), "study": r.study, "trained_at": r.trained_at}
                    for r in s.scalars(select(PretrainingRow))}

    def ground_truth(self, digest: str) -> Optional[Dict[str, Any]]:
        """The stored val ground truth with this digest (trial data ``val_ground_truth``), or None."""
        with self._session() as s:
            row = s.get(GroundTruthRow, digest)
            return None if row is None else json.loads(row.json)
