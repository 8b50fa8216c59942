"""What keeps the driver's cost per trial flat as a study grows (``python -m platform.bench --scale``):
the store's statements per trial and per report read do not grow with the trials, and the study
callback holds no per-trial epochs once a trial is stored."""
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from sqlalchemy import event

from dashboards.data import load_study
from dashboards.fingerprint import fingerprint
from platform.runner.callbacks import StudyCallback
from platform.track.store import Store


@contextmanager
def statements(store):
    """Every SQL statement the store's engine runs inside the block, in a list."""
    seen = []

    def count(conn, cursor, statement, *args):
        seen.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", count)


def trial(i):
    return {"study": "s", "trial_key": f"default/seed={i}", "variant": "default", "seed": i,
            "config_hash": f"{i:064d}", "loss": {"name": "focal"}, "train": {"epochs": 2}}


def finish(store, i):
    epochs = [{"step": 8 * (e + 1), "epoch": e, "train/loss": 1.0 / (e + 1), "val/AP": 0.1 * e} for e in range(2)]
    store.record_finished("s", trial(i), {"AP": 0.3, "AP50": 0.5}, epochs, {"per_class_ap": {"circle": 0.3}},
                          f"run{i}", 0.0, 60.0)


def test_store_statements_per_trial_and_per_report_read_do_not_grow_with_the_trials(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("s", "", {"name": "s"}, None)
    per_trial, per_read = [], []
    for n in (3, 30):
        for i in range(len(store.trials("s")), n - 1):
            finish(store, i)
        with statements(store) as seen:
            finish(store, n - 1)                     # the n-th trial's record
        per_trial.append(len(seen))
        assert len(store.trials("s")) == n
        with statements(store) as seen:
            load_study(store, "s")
            fingerprint(store, "s")
        per_read.append(len(seen))
    # the 3rd and the 30th trial's record, and the pages' read of 3 and of 30 trials: the same statements
    assert per_trial[0] == per_trial[1]
    assert per_read[0] == per_read[1]
    store.close()


class _Tracker:
    def start_child(self, spec, reuse=True, start_time=None):
        return "run-" + spec["config_hash"][-2:]

    def __getattr__(self, name):  # set_tags, log_metrics, log_dict, log_artifacts, end_child: nothing to check
        return lambda *args, **kwargs: None


def test_study_callback_keeps_no_epochs_of_finished_or_failed_trials(tmp_path):
    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("s", "", {"name": "s"}, None)
    cb = StudyCallback("s", _Tracker(), store)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"trial": trial(i)}, checkpoint=None, last_result=None,
                              error_file=None) for i in range(3)]
    for t in trials:
        cb.on_trial_start(0, trials, t)
        for e in range(2):
            cb.on_trial_result(0, trials, t, {"epoch": e, "step": 8 * (e + 1), "train/loss": 1.0 / (e + 1)})
    assert cb.epochs == {}  # each epoch stored as it came (EPOCH_WRITE_S 0), none held
    assert sorted(store.trial_epochs("s", trial(2)["config_hash"])) == [8, 16]
    cb.on_trial_complete(0, trials, trials[0])
    cb.on_trial_error(0, trials, trials[1])
    assert cb.epochs == {}
    # the finished trial's two epochs reached the store all the same: steps 8 and 16
    assert sorted(store.trial_epochs("s", trial(0)["config_hash"])) == [8, 16]
    assert [t["status"] for t in store.trials("s")] == ["finished", "failed", "running"]
    store.close()


def test_running_trials_epochs_reach_the_store_in_one_transaction_every_epoch_write_s(tmp_path, monkeypatch):
    from platform.runner import callbacks

    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("s", "", {"name": "s"}, None)
    writes = []
    record = store.record_epochs
    monkeypatch.setattr(store, "record_epochs", lambda *a: writes.append(len(a[1])) or record(*a))
    now = [100.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(callbacks, "EPOCH_WRITE_S", 10.0)  # the default, 0, writes each epoch as it comes
    cb = StudyCallback("s", _Tracker(), store)
    trials = [SimpleNamespace(trial_id=f"t{i}", config={"trial": trial(i)}, checkpoint=None, last_result=None,
                              error_file=None) for i in range(2)]
    for t in trials:
        cb.on_trial_start(0, trials, t)
        cb.on_trial_result(0, trials, t, {"epoch": 0, "step": 8, "train/loss": 1.0})
    cb.on_step_end(0, trials)
    assert writes == [] and store.trial_epochs("s", trial(0)["config_hash"]) == {}  # held: 0 s < EPOCH_WRITE_S
    now[0] += callbacks.EPOCH_WRITE_S
    cb.on_step_end(0, trials)
    assert writes == [2] and cb.epochs == {}  # both trials' epochs, one transaction
    assert store.trial_epochs("s", trial(1)["config_hash"]) == {8: {"epoch": 0.0, "step": 8.0, "train/loss": 1.0}}
    cb.on_trial_result(0, trials, trials[0], {"epoch": 1, "step": 16, "train/loss": 0.5})
    cb.on_trial_complete(0, trials, trials[0])  # its held epoch goes with the finished record
    assert writes == [2] and sorted(store.trial_epochs("s", trial(0)["config_hash"])) == [8, 16]
    store.close()


def test_growth_is_the_slope_on_log_log_axes():
    from platform.bench.scale import growth

    rows = [{"trials": 10, "x": 2.0}, {"trials": 100, "x": 20.0}, {"trials": 1000, "x": 20.0},
            {"trials": 10_000, "x": 2000.0}]
    # log(20 / 2) / log(10) = 1 (grows with the trials); 20 -> 20: 0 (flat); 20 -> 2000: log(100) / log(10) = 2
    assert growth(rows, "x") == [None, 1.0, 0.0, 2.0]


@pytest.mark.slow  # Ray, MLflow, a whole study of 10 stand-in trials, a cached re-run and Chromium
def test_scale_bench_runs_ten_stand_in_trials_through_the_driver(tmp_path):
    import json

    from platform.bench import main

    assert main(["--scale", "--sizes", "10", "--backends", "sqlite", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "scale.json").read_text())["results"]["sqlite"][0]
    # per trial: a store row started, each of its 8 epochs stored as reported (EPOCH_WRITE_S 0), and
    # finished: 1 + 8 + 1 = 10, so 100 for 10 trials.
    # MLflow: the child run, 8 epochs' and the final metrics (fewer calls where the writer thread had
    # several of a run queued: one batch), the config and per-class AP, the artifacts, the end
    # (1 + 9 + 2 + 1 + 1 = 14 at most)
    assert r["trials"] == 10 and r["store_calls"] == 10 * (1 + 8 + 1)
    assert 10 * (1 + 1 + 2 + 1 + 1) <= r["mlflow_calls"] <= 140
    # the synthetic val images are on disk: the gallery is built too
    assert sorted(r["pages"]) == ["index.html", "scale10/accuracy.html", "scale10/gallery.html", "scale10/index.html",
                                  "scale10/loss.html", "scale10/speed.html"]
    assert all(p["mb"] > 0 and p["tti_s"] > 0 for p in r["pages"].values())
    assert r["cached_s"] > 0 and r["report_s"] > 0 and r["rss_mb"] > 0
    assert "| growth" not in (tmp_path / "scale.md").read_text()  # one size: nothing to grow from
    assert (tmp_path / "scale.html").stat().st_size > 1_000_000  # the plot, plotly.js included
