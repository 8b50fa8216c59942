"""The results store on a temporary SQLite file: writes, one-transaction records, the read API."""
import math
import os
import pickle
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy.exc import OperationalError

from platform.track.store import Store


def trial(key="gamma=2/seed=0", h="a" * 64, seed=0):
    return {"study": "s", "trial_key": key, "variant": key.split("/")[0], "seed": seed, "config_hash": h,
            "loss": {"name": "focal", "params": {"gamma": 2.0}}}


T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/sub/results.db")  # the parent directory is created
    s.upsert_study("s", "a study", {"name": "s", "sweep": {"seeds": [0]}}, "studies/s.yaml")
    yield s
    s.close()


def rows(tmp_path, sql):
    with sqlite3.connect(tmp_path / "sub" / "results.db") as con:
        return con.execute(sql).fetchall()


def finish(store, t=None, **kw):
    args = dict(final_metrics={"AP": 0.31, "AP50": 0.5, "speed/latency_ms": 12.5, "note": "skipped", "x": None},
                epoch_metrics=[{"step": 0, "train/loss": 1.5, "val/AP": 0.1}, {"step": 1, "train/loss": 0.9}],
                data={"per_class_ap": {"circle": 0.4, "square": 0.2}, "pr_curve": [[0.0, 1.0], [1.0, 0.5]]},
                mlflow_run_id="run1", started_at=T0, finished_at=T0 + timedelta(seconds=90))
    args.update(kw)
    store.record_finished("s", t or trial(), **args)


def test_tables_and_study_row(store, tmp_path):
    names = {r[0] for r in rows(tmp_path, "select name from sqlite_master where type='table'")}
    assert {"studies", "trials", "metrics", "trial_data"} <= names
    store.upsert_study("s", "changed", {"name": "s"}, "studies/s.yaml", mlflow_experiment_id="7",
                       last_parent_run_id="p1")
    store.upsert_study("s", "changed again", {"name": "s"}, "studies/s.yaml")  # None keeps the MLflow ids
    (study,) = store.studies()
    assert (study["name"], study["description"], study["spec"]) == ("s", "changed again", {"name": "s"})
    assert (study["mlflow_experiment_id"], study["last_parent_run_id"]) == ("7", "p1")
    assert study["created_at"].tzinfo is not None and study["updated_at"] >= study["created_at"]


def test_record_finished_and_read_back(store):
    store.mark_running("s", trial(), "run1")
    assert store.trials("s")[0]["status"] == "running" and store.finished_hashes("s") == set()
    finish(store)
    assert store.finished_hashes("s") == {"a" * 64}
    (t,) = store.trials("s")
    assert (t["trial_key"], t["variant"], t["seed"], t["status"]) == ("gamma=2/seed=0", "gamma=2", 0, "finished")
    assert t["config"]["loss"]["params"] == {"gamma": 2.0} and t["mlflow_run_id"] == "run1"
    assert t["started_at"] == T0 and t["finished_at"] == T0 + timedelta(seconds=90)
    assert t["started_at"].tzinfo == timezone.utc and t["duration_s"] == 90.0 and t["attempts"] == 1
    final = {r["name"]: r["value"] for r in store.final_metrics("s")}
    assert final == {"AP": 0.31, "AP50": 0.5, "speed/latency_ms": 12.5}  # strings and None are skipped
    assert store.final_metrics("s")[0].keys() == {"trial_key", "variant", "seed", "name", "value"}
    epochs = [(r["step"], r["name"], r["value"]) for r in store.epoch_metrics("s")]
    assert epochs == [(0, "train/loss", 1.5), (0, "val/AP", 0.1), (1, "train/loss", 0.9)]
    assert store.trial_data("s", "per_class_ap") == {"gamma=2/seed=0": {"circle": 0.4, "square": 0.2}}
    assert store.trial_data("s", "pr_curve") == {"gamma=2/seed=0": [[0.0, 1.0], [1.0, 0.5]]}
    assert store.trial_data("s", "nothing") == {}


def test_recording_again_replaces_rows(store, tmp_path):
    finish(store)
    finish(store, final_metrics={"AP": 0.4}, epoch_metrics=[], data={"per_class_ap": {"circle": 1.0}})
    assert [(r["name"], r["value"]) for r in store.final_metrics("s")] == [("AP", 0.4)]
    assert store.epoch_metrics("s") == []
    assert rows(tmp_path, "select count(*) from metrics") == [(1,)]
    assert rows(tmp_path, "select count(*) from trial_data") == [(1,)]
    assert rows(tmp_path, "select count(*) from trials") == [(1,)]


def test_epochs_stored_before_stay_when_the_finished_record_keeps_them(store):
    other = trial("gamma=2/seed=1", "b" * 64, 1)
    # one transaction for two running trials' epochs; step 8 of the first is reported twice (a resumed
    # epoch): the second report replaces the first
    store.record_epochs("s", [(trial(), {8: {"loss": 2.0}, 16: {"loss": 1.0}}), (other, {8: {"loss": 3.0}})])
    store.record_epochs("s", [(trial(), {8: {"loss": 1.5}})])
    assert store.trial_epochs("s", "a" * 64) == {8: {"loss": 1.5}, 16: {"loss": 1.0}}
    assert [t["status"] for t in store.trials("s")] == ["running", "running"]
    finish(store, epoch_metrics=[{"step": 16, "loss": 0.9}, {"step": 24, "loss": 0.5}], keep_epochs=True)
    # 8 kept from before, 16 replaced by the record's, 24 added; the final metrics are the record's
    assert store.trial_epochs("s", "a" * 64) == {8: {"loss": 1.5}, 16: {"loss": 0.9}, 24: {"loss": 0.5}}
    assert store.trial_final("s", "a" * 64) == {"AP": 0.31, "AP50": 0.5, "speed/latency_ms": 12.5}
    assert store.trial_epochs("s", "b" * 64) == {8: {"loss": 3.0}}  # the other trial's untouched
    finish(store, epoch_metrics=[{"step": 8, "loss": 1.0}])  # without keep_epochs every earlier row goes
    assert store.trial_epochs("s", "a" * 64) == {8: {"loss": 1.0}}


def test_val_ground_truth_is_stored_once_per_content(store, tmp_path):
    gt = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [], "categories": [{"id": 1, "name": "a"}]}
    finish(store, val_ground_truth=gt)
    finish(store, t=trial("gamma=5/seed=0", "b" * 64), val_ground_truth=dict(reversed(list(gt.items()))))
    other = dict(gt, images=[{"id": 2, "width": 8, "height": 8}])
    finish(store, t=trial("gamma=0/seed=0", "c" * 64), val_ground_truth=other)
    finish(store, t=trial("gamma=1/seed=0", "d" * 64))  # none given: no data key
    digests = store.trial_data("s", "val_ground_truth")
    assert set(digests) == {"gamma=2/seed=0", "gamma=5/seed=0", "gamma=0/seed=0"}
    # the same content (key order aside) is one row; a different val set another
    assert digests["gamma=2/seed=0"] == digests["gamma=5/seed=0"] != digests["gamma=0/seed=0"]
    assert rows(tmp_path, "select count(*) from ground_truths") == [(2,)]
    assert store.ground_truth(digests["gamma=5/seed=0"]) == gt
    assert store.ground_truth(digests["gamma=0/seed=0"]) == other
    assert store.ground_truth("0" * 64) is None


def test_raw_json_data_is_stored_as_given_and_a_repeated_ground_truth_is_dumped_once(store, tmp_path, monkeypatch):
    import json

    from platform.track import store as store_module

    text = '[{"image_id": 1, "score": 0.5}]'
    gt = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [], "categories": []}
    dumps, seen = json.dumps, []
    monkeypatch.setattr(store_module.json, "dumps", lambda obj, **kw: seen.append(obj is gt) or dumps(obj, **kw))
    for i, h in enumerate(("a", "b")):
        finish(store, t=trial(f"gamma={i}/seed=0", h * 64), data={"detections": store_module.RawJSON(text)},
               val_ground_truth=gt)
    assert seen.count(True) == 1  # the second record's ground truth is the first's object: no second dump
    assert rows(tmp_path, "select json from trial_data where key = 'detections'") == [(text,), (text,)]
    assert store.trial_data("s", "detections")["gamma=1/seed=0"] == [{"image_id": 1, "score": 0.5}]
    (digest,) = set(store.trial_data("s", "val_ground_truth").values())
    assert store.ground_truth(digest) == gt


def test_trial_data_of_some_trials_and_data_derived_after_the_record(store):
    from dashboards.data import load_study

    for i, h in enumerate("abc"):
        finish(store, t=trial(f"gamma={i}/seed=0", h * 64), data={"detections": [i]})
    assert store.trial_data("s", "detections", trial_keys=["gamma=0/seed=0", "gamma=2/seed=0", "gone"]) == {
        "gamma=0/seed=0": [0], "gamma=2/seed=0": [2]}
    assert store.record_trial_data("s", "b" * 64, {"errors": {"AP50": 0.5}, "detections": [10]})
    assert store.trial_data("s", "detections") == {"gamma=0/seed=0": [0], "gamma=1/seed=0": [10],
                                                   "gamma=2/seed=0": [2]}
    sd = load_study(store, "s")
    assert sd.data_of("detections", ["gamma=1/seed=0"]) == {"gamma=1/seed=0": [10]}
    assert "detections" not in sd._cache  # the others were not read
    assert sd.data_of("errors", ["gamma=0/seed=0", "gamma=1/seed=0"]) == {"gamma=1/seed=0": {"AP50": 0.5}}


def test_nan_metric_survives(store):
    finish(store, final_metrics={"AP": float("nan")})
    assert math.isnan(store.final_metrics("s")[0]["value"])


def test_failure_inside_record_finished_writes_nothing(store, tmp_path):
    store.mark_running("s", trial(), "run1")
    with pytest.raises(TypeError):
        finish(store, data={"per_class_ap": {"a": 1.0}, "bad": {1, 2, 3}})  # a set is not JSON
    (t,) = store.trials("s")
    assert t["status"] == "running" and t["finished_at"] is None
    assert rows(tmp_path, "select count(*) from metrics") == [(0,)]
    assert rows(tmp_path, "select count(*) from trial_data") == [(0,)]
    assert store.finished_hashes("s") == set()


def test_a_trial_row_rolled_back_is_not_taken_for_stored_by_the_next_epoch_write(store, tmp_path):
    # record_finished of a new trial fails: its row, flushed inside the transaction, is rolled back, and the
    # trial id the store keeps for epoch writes is kept only once committed; the next epoch write makes the row
    with pytest.raises(TypeError):
        finish(store, data={"bad": {1, 2, 3}})
    assert rows(tmp_path, "select count(*) from trials") == [(0,)]
    store.record_epochs("s", [(trial(), {8: {"loss": 2.0}})])
    store.record_epochs("s", [(trial(), {16: {"loss": 1.0}})])  # the id is known now: no lookup
    assert store.trial_epochs("s", "a" * 64) == {8: {"loss": 2.0}, 16: {"loss": 1.0}}
    assert [(t["status"], t["trial_key"]) for t in store.trials("s")] == [("running", "gamma=2/seed=0")]


def test_a_running_trials_epoch_write_is_two_statements(store):
    # the driver writes each epoch report inside Tune's loop: once the trial is marked running, the study and
    # trial ids are known, and a report is one DELETE of its steps and one INSERT of its rows, nothing looked up
    from sqlalchemy import event

    seen = []
    event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2].split()[0]))
    store.mark_running("s", trial(), "run1")
    assert seen == ["SELECT", "INSERT"]  # the trial looked up (new: inserted); the study id kept from upsert_study
    seen.clear()
    store.record_epochs("s", [(trial(), {8: {"loss": 2.0, "AP": 0.1}})])
    assert seen == ["DELETE", "INSERT"]
    seen.clear()
    finish(store, val_ground_truth={"images": [], "annotations": [], "categories": []})
    finish(store, val_ground_truth={"images": [], "annotations": [], "categories": []})
    assert seen.count("SELECT") == 3  # the ground truth looked up once, the trial row once per record


def test_failure_keeps_an_earlier_result_intact(store):
    finish(store)
    with pytest.raises(TypeError):
        finish(store, final_metrics={"AP": "0.9x", "AP50": [1]})  # a list is not a number
    assert {r["name"]: r["value"] for r in store.final_metrics("s")}["AP"] == 0.31
    assert len(store.epoch_metrics("s")) == 3 and store.finished_hashes("s") == {"a" * 64}


def test_record_failed(store):
    other = trial("gamma=5/seed=0", "b" * 64)
    store.mark_running("s", other, "run2")
    store.mark_running("s", other, "run2")  # a retry
    assert store.trials("s")[0]["attempts"] == 2
    store.record_failed("s", other, "NonFiniteLossError: non-finite loss at step 3", "run2", attempts=2)
    finish(store)
    by_key = {t["trial_key"]: t for t in store.trials("s")}
    failed = by_key["gamma=5/seed=0"]
    assert (failed["status"], failed["attempts"], failed["mlflow_run_id"]) == ("failed", 2, "run2")
    assert failed["error"].startswith("NonFiniteLossError") and failed["finished_at"].tzinfo is not None
    assert store.finished_hashes("s") == {"a" * 64}  # failed trials are not cached
    assert {r["trial_key"] for r in store.final_metrics("s")} == {"gamma=2/seed=0"}


def test_unknown_study(store):
    assert store.finished_hashes("nope") == set() and store.trials("nope") == []
    with pytest.raises(KeyError, match="upsert_study"):
        store.mark_running("nope", trial(), None)


def test_readonly_store_writes_nothing(tmp_path, store):
    finish(store)
    store.close()
    path = tmp_path / "sub" / "results.db"
    before = sorted(os.listdir(path.parent))
    ro = Store(f"sqlite:///{path}", readonly=True)
    assert ro.finished_hashes("s") == {"a" * 64}
    ro.close()
    assert sorted(os.listdir(path.parent)) == before
    with pytest.raises(OperationalError):  # sqlite cannot open a file in a missing directory read-only
        Store(f"sqlite:///{tmp_path}/absent/results.db", readonly=True).finished_hashes("s")
    assert not (tmp_path / "absent").exists()


def test_store_pickles_as_its_url(store):
    finish(store)
    copy = pickle.loads(pickle.dumps(store))
    assert copy.finished_hashes("s") == {"a" * 64}
    copy.close()
