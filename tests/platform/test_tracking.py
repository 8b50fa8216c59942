"""What a trainer sees in MLflow, read back through the MLflow client (no Ray): the experiment
opens on its training runs, every child run names its dataset, the parent run says what the
study compares; and one duration for a trial in the progress line, the store and MLflow."""
import hashlib
import io
import json
import os
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from platform.study.expand import expand, resolve_dataset_paths
from platform.study.load import load_study
from platform.track.store import Store
from platform.runner.timing import TrialClock
from platform.track.tracking import StudyTracker, study_description

STUDY = """\
name: tr
description: Focal loss gamma 0 against gamma 2.
dataset: {kind: synthetic, synthetic: {num_train: 8, num_val: 4}}
detector: {name: retinanet}
loss: {name: focal, params: {alpha: 0.25}}
train: {epochs: 3}
sweep:
  grid: {loss.params.gamma: [0, 2]}
  seeds: [0, 1]
"""


@pytest.fixture
def study_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output dirs (runs/, reports/) resolve here
    path = tmp_path / "tr.yaml"
    path.write_text(STUDY)
    study = load_study(str(path))
    paths = {k: f"/data/set/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}
    return str(path), study, resolve_dataset_paths(expand(study), paths)


def tracker_for(tmp_path, name="tr"):
    return StudyTracker(f"sqlite:///{tmp_path}/mlflow.db", name, str(tmp_path / "mlartifacts"))


def test_experiment_dataset_input_and_description_read_back(tmp_path, study_trials):
    study_file, study, trials = study_trials
    tracker = tracker_for(tmp_path)
    report = os.path.join("reports", "tr", "index.html")
    parent = tracker.start_parent(study_file, str(tmp_path), {"trials": 4}, "v1",
                                  description=study_description(study, trials, report), trials=trials)
    child = tracker.start_child(trials[0])
    client = MlflowClient(tracker.tracking_uri)

    # The UI opens a "custom_model_development" experiment on its training runs table; MLflow
    # 3.17's own UI follows a global switch instead, which the printed URL sets.
    assert client.get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    runs_table = f"/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning"
    assert tracker.experiment_url() == "http://127.0.0.1:5000" + runs_table

    (inp,) = client.get_run(child).inputs.dataset_inputs
    ds = trials[0]["dataset"]
    # The digest is the dataset's part of the config hash: sha256 of {"kind", "identity"} in
    # canonical JSON, where a synthetic set's identity is its merged generator parameters.
    identity = json.dumps({"kind": "synthetic", "identity": ds["synthetic"]}, sort_keys=True, separators=(",", ":"))
    assert inp.dataset.digest == hashlib.sha256(identity.encode()).hexdigest()[:12]
    # The name is the cache directory the driver prints ("dataset: synthetic-<12 hex> ready in ..."):
    # sha256 over the merged parameters and the generator version.
    from detectors.data.synthetic import GENERATOR_VERSION, resolve_params

    named = json.dumps({"params": resolve_params(ds["synthetic"]), "version": GENERATOR_VERSION},
                       sort_keys=True, separators=(",", ":"))
    assert inp.dataset.name == "synthetic-" + hashlib.sha256(named.encode()).hexdigest()[:12]
    assert json.loads(inp.dataset.source) == {"uri": "/data/set/train_annotations"}
    assert inp.dataset.source_type == "local"
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "training"}
    # every trial of this study trained on the same set: one dataset, one digest, listed once
    # on the parent too (the runs table shows it while the child runs are folded away)
    assert len({t["dataset"]["digest"] for t in trials}) == 1 and len({t["config_hash"] for t in trials}) == 4
    (on_parent,) = client.get_run(parent).inputs.dataset_inputs
    assert (on_parent.dataset.name, on_parent.dataset.digest) == (inp.dataset.name, inp.dataset.digest)

    note = client.get_run(parent).data.tags["mlflow.note.content"]
    assert note.startswith("Focal loss gamma 0 against gamma 2.")
    assert "- Compares 2 variants x 2 seeds = 4 trials: `gamma=0`, `gamma=2`\n" in note
    assert "`loss.params.gamma`" in note and inp.dataset.name in note
    url = "file://" + str(tmp_path / "reports" / "tr" / "index.html")
    assert f"\n\nReport: {url}\n\n" in note  # second paragraph: shown before the UI's "Show more"


def test_a_resumed_run_keeps_its_dataset_input_once(tmp_path, study_trials):
    _, _, trials = study_trials
    tracker = tracker_for(tmp_path)
    tracker.start_parent(study_trials[0], str(tmp_path), {}, "v1")
    first = tracker.start_child(trials[1])
    tracker.end_child(first, "KILLED")
    again = tracker_for(tmp_path)
    again.start_parent(study_trials[0], str(tmp_path), {}, "v1")
    assert again.start_child(trials[1]) == first  # found by its config hash
    assert len(MlflowClient(tracker.tracking_uri).get_run(first).inputs.dataset_inputs) == 1


def test_after_reconcile_a_trial_finds_its_earlier_run_without_a_search_of_its_own(tmp_path, study_trials, monkeypatch):
    from platform.track.reconcile import reconcile

    _, _, trials = study_trials
    tracker = tracker_for(tmp_path)
    tracker.start_parent(study_trials[0], str(tmp_path), {}, "v1")
    first = tracker.start_child(trials[1])
    tracker.end_child(first, "KILLED")
    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("tr", "", {"name": "tr"}, None)
    again = tracker_for(tmp_path)
    reconcile(again, store, "tr", str(tmp_path))  # lists the experiment's runs once
    searches = []
    search = again.client.search_runs
    monkeypatch.setattr(again.client, "search_runs", lambda *a, **k: searches.append(a) or search(*a, **k))
    again.start_parent(study_trials[0], str(tmp_path), {}, "v1")
    assert again.start_child(trials[1]) == first  # found by its config hash, as with a search
    fresh = again.start_child(trials[2])
    assert fresh != first and again.start_child(trials[2]) == fresh  # a run made now is known at once
    assert searches == []  # a thousand trials: no query each
    store.close()


def test_an_existing_experiment_gets_the_kind_unless_one_was_set(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    old = client.create_experiment("old")
    mine = client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    tracker_for(tmp_path, "old"), tracker_for(tmp_path, "mine")
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment(mine).tags["mlflow.experimentKind"] == "genai_development"


class FakeTime:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def fake_trial(tid, spec):
    return SimpleNamespace(trial_id=tid, config={"trial": spec}, last_result={"AP50": 0.5, "final": 1},
                           checkpoint=None, error_file=None)


def test_one_duration_covers_every_attempt_in_progress_store_and_mlflow(tmp_path, study_trials):
    from platform.runner.callbacks import ProgressCallback, StudyCallback

    _, _, trials = study_trials
    tracker = tracker_for(tmp_path)
    tracker.start_parent(study_trials[0], str(tmp_path), {}, "v1")
    store = Store(f"sqlite:///{tmp_path}/results.db")
    store.upsert_study("tr", "", {}, None)
    now = FakeTime(1_000_000.0)
    clock = TrialClock(now)
    out = io.StringIO()
    callbacks = [StudyCallback("tr", tracker, store, clock=clock), ProgressCallback(2, 2, out=out, clock=clock)]

    def event(name, trial, t):
        now.t = t
        for cb in callbacks:
            getattr(cb, name)(0, [], trial)

    ok, bad = fake_trial("a", trials[0]), fake_trial("b", trials[1])
    event("on_trial_start", ok, 1_000_000.0)
    event("on_trial_start", bad, 1_000_002.0)
    event("on_trial_recover", bad, 1_000_010.0)
    event("on_trial_start", bad, 1_000_011.0)
    event("on_trial_error", bad, 1_000_014.5)    # failed for good after its retry
    event("on_trial_recover", ok, 1_000_030.0)   # the first attempt crashed
    event("on_trial_start", ok, 1_000_040.0)     # the retry: the clock keeps the first start
    event("on_trial_complete", ok, 1_000_081.25)
    callbacks[0].flush()  # MLflow's writes are the writer thread's (platform.track.writer)

    # ok: 1_000_081.25 - 1_000_000.0 = 81.25 s over both attempts; bad: 1_000_014.5 - 1_000_002.0 = 12.5 s
    rows = {t["trial_key"]: t for t in store.trials("tr")}
    assert rows["gamma=0/seed=0"]["duration_s"] == 81.25 and rows["gamma=0/seed=1"]["duration_s"] == 12.5
    assert rows["gamma=0/seed=0"]["status"] == "finished" and rows["gamma=0/seed=1"]["status"] == "failed"
    client = MlflowClient(tracker.tracking_uri)
    for key, ms in (("gamma=0/seed=0", 81_250), ("gamma=0/seed=1", 12_500)):
        run = client.get_run(rows[key]["mlflow_run_id"])
        assert run.info.end_time - run.info.start_time == ms
        assert run.data.metrics["duration_s"] == ms / 1000
    assert "done   gamma=0/seed=0: AP50 0.500 in 1m21s" in out.getvalue()  # 81.25 s -> 1m21s
    assert callbacks[1].durations == [81.25]
