"""platform.runner.speed_phase with the real store: one measurement per speed key, shared by its trials."""
import pytest

from detectors.train.trial import make_trial
from platform.runner import speed_phase
from platform.runner.speed_phase import pending, run_speed_phase, speed_groups
from platform.track.store import Store

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}
STUDY = "s"


def trial(gamma, seed, threads=1):
    return make_trial(PATHS, f"/tmp/t{gamma}{seed}{threads}", loss={"params": {"gamma": gamma}}, seed=seed,
                      variant=f"gamma={gamma},threads={threads}", study=STUDY, num_threads=threads,
                      config_hash=f"{gamma}-{seed}-{threads}".ljust(64, "0"))


@pytest.fixture
def store(tmp_path):
    s = Store(f"sqlite:///{tmp_path}/r.db")
    s.upsert_study(STUDY, "", {}, None)
    yield s
    s.close()


def finish(store, t):
    store.record_finished(STUDY, t, {"AP": 0.5, "speed/train_img_s": 40.0 + t["seed"]}, [], {}, None, 0.0, 1.0)


@pytest.fixture
def measured(monkeypatch):
    """Stands in for the Ray task: records which groups were measured and returns fixed figures."""
    calls = []

    def fake(groups, say):
        calls.append([g["key"]["threads"] for g in groups])
        return {g["digest"]: {"figures": {"latency_ms_p50": 10.0 * g["key"]["threads"], "latency_ms_p95": 12.0,
                                          "throughput_img_s": 90.0, "train_img_s": 50.0, "peak_rss_mb": 800.0},
                              "hardware": {"cpu": "test", "cpu_cores": 2}, "method": {"repeats": 5},
                              "key": g["key"], "trial_hash": g["trials"][0]["config_hash"]} for g in groups}

    monkeypatch.setattr(speed_phase, "_measure", fake)
    return calls


def test_one_measurement_per_key_shared_by_its_trials(store, measured):
    trials = [trial(0, 0), trial(2, 0), trial(2, 1), trial(2, 0, threads=2)]
    for t in trials[:3]:
        finish(store, t)  # the threads=2 trial has not finished: not grouped
    groups = speed_groups(store, STUDY, trials, "v1")
    assert [len(g["trials"]) for g in groups] == [3] and groups[0]["measure"]
    assert run_speed_phase(store, STUDY, groups, say=lambda s: None) == 1
    assert measured == [[1]]
    # every trial of the key names the figure and has its numbers as final metrics
    keys = store.trial_data(STUDY, "speed_key")
    assert set(keys) == {t["trial_key"] for t in trials[:3]} and len(set(keys.values())) == 1
    finals = {(r["trial_key"], r["name"]): r["value"] for r in store.final_metrics(STUDY)}
    for t in trials[:3]:
        assert finals[(t["trial_key"], "speed/latency_ms_p50")] == 10.0
        assert finals[(t["trial_key"], "speed/train_img_s_alone")] == 50.0
        # the trial's own training speed stays its own
        assert finals[(t["trial_key"], "speed/train_img_s")] == 40.0 + t["seed"]
    (fig,) = store.speed_figures().values()
    assert fig["hardware"]["cpu"] == "test" and fig["trial_hash"] == trials[0]["config_hash"]

    # nothing new: nothing to measure or link (a cached re-run starts no Ray)
    assert not pending(speed_groups(store, STUDY, trials, "v1"))
    # a new seed of the same key is linked without measuring; a new key is measured
    finish(store, trials[3])
    extra = trial(5, 4)
    finish(store, extra)
    groups = speed_groups(store, STUDY, trials + [extra], "v1")
    by_threads = {g["key"]["threads"]: g for g in groups}
    assert not by_threads[1]["measure"] and [t["seed"] for t in by_threads[1]["link"]] == [4]
    assert by_threads[2]["measure"]
    run_speed_phase(store, STUDY, groups, say=lambda s: None)
    assert measured == [[1], [2]]
    assert len(store.trial_data(STUDY, "speed_key")) == 5
    # --force with a trial that just ran measures its key again
    again = speed_groups(store, STUDY, trials + [extra], "v1", ran={trials[0]["config_hash"]}, force=True)
    assert [g["key"]["threads"] for g in again if g["measure"]] == [1]


def test_a_rerun_trial_loses_its_link_until_the_phase_runs_again(store, measured):
    t = trial(0, 0)
    finish(store, t)
    run_speed_phase(store, STUDY, speed_groups(store, STUDY, [t], "v1"), say=lambda s: None)
    finish(store, t)  # record_finished replaces the trial's data and metrics
    assert store.trial_data(STUDY, "speed_key") == {}
    groups = speed_groups(store, STUDY, [t], "v1")
    assert not groups[0]["measure"] and groups[0]["link"] == [t]


def test_a_read_only_store_from_before_the_table_has_no_figures(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    sqlite3.connect(path).execute("create table studies (id integer primary key)").connection.commit()
    old = Store(f"sqlite:///{path}", readonly=True)
    assert old.speed_figures() == {}
    old.close()


def test_stage_times_become_trial_metrics_and_a_link_missing_them_is_made_again(store, monkeypatch):
    def fake(groups, say):  # a two-stage detector's figures: per-image time split into stages
        return {g["digest"]: {"figures": {"latency_ms_p50": 60.0, "latency_ms_p95": 64.0, "throughput_img_s": 17.0,
                                          "train_img_s": 16.0, "stage_proposals_ms": 55.0,
                                          "stage_detection_ms": 4.5},
                              "hardware": {"cpu": "test", "cpu_cores": 2}, "method": {}, "key": g["key"],
                              "trial_hash": g["trials"][0]["config_hash"]} for g in groups}

    monkeypatch.setattr(speed_phase, "_measure", fake)
    a, b = trial(0, 0), trial(0, 1)
    for t in (a, b):
        finish(store, t)
    run_speed_phase(store, STUDY, speed_groups(store, STUDY, [a, b], "v1"), say=lambda s: None)
    finals = {(r["trial_key"], r["name"]): r["value"] for r in store.final_metrics(STUDY)}
    assert finals[(a["trial_key"], "speed/stage_proposals_ms")] == 55.0
    assert finals[(b["trial_key"], "speed/stage_detection_ms")] == 4.5
    assert not pending(speed_groups(store, STUDY, [a, b], "v1"))
    # a store whose trials were linked before stage times were handed on: b lacks them -> linked again
    (digest,) = store.speed_figures()
    finish(store, b)
    store.record_speed(STUDY, digest, None, [b["config_hash"]], {"speed/latency_ms_p50": 60.0})
    groups = speed_groups(store, STUDY, [a, b], "v1")
    assert not groups[0]["measure"] and groups[0]["link"] == [b]
    run_speed_phase(store, STUDY, groups, say=lambda s: None)
    finals = {(r["trial_key"], r["name"]): r["value"] for r in store.final_metrics(STUDY)}
    assert finals[(b["trial_key"], "speed/stage_detection_ms")] == 4.5
    assert not pending(speed_groups(store, STUDY, [a, b], "v1"))
