"""A study with sweep.tune end to end: each variant's search on Ray Tune (Optuna + ASHA), the
samples in the store and MLflow, the trials with the chosen values; a rerun is cached, and more
samples asked run only the new ones."""
import json
import os
import sqlite3

import pytest
import yaml
from mlflow.tracking import MlflowClient

from platform.track.store import Store

pytestmark = pytest.mark.slow  # runs `python -m platform.run` on a local Ray

from tests.platform.test_study_e2e import REPO, run_cli  # noqa: E402


def write(root, samples):
    with open(os.path.join(REPO, "studies", "smoke.yaml")) as f:
        study = yaml.safe_load(f)
    study["name"] = "tuned"
    study["train"].update(epochs=2, max_steps=6)
    study["sweep"] = {"grid": {"loss.params.gamma": [0, 2]}, "seeds": [0],
                      "tune": {"space": {"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
                               "samples": samples, "grace_epochs": 1, "reduction_factor": 2, "holdout": 0.25}}
    study["output"] = {"runs_dir": str(root / "runs"), "reports_dir": str(root / "reports")}
    path = root / "tuned.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def test_each_variant_is_searched_with_the_same_budget_then_trained_with_its_best_values(tmp_path):
    proc = run_cli(write(tmp_path, 2))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "tuning 1/2: gamma=0: 2 samples, 0 cached, 2 to run" in out and "tuned gamma=2: train.lr=" in out

    store = Store(f"sqlite:///{tmp_path}/runs/results.db")
    samples = store.trial_data("tuned.tune", "tuning")
    assert sorted(samples) == ["gamma=0/sample=0", "gamma=0/sample=1", "gamma=2/sample=0", "gamma=2/sample=1"]
    assert all(r["score"] is not None and 1 <= r["epochs"] <= 2 for r in samples.values())
    tuned = store.trial_data("tuned", "tuned")
    assert sorted(tuned) == ["gamma=0/seed=0", "gamma=2/seed=0"]
    for key, choice in tuned.items():  # each trial took its variant's best sample (earliest on a tie)
        variant = key.split("/")[0]
        own = [r for k, r in samples.items() if k.startswith(variant + "/")]
        best = min(own, key=lambda r: (-r["score"], r["sample"]))
        assert choice == {"sample": best["sample"], "values": best["values"], "score": best["score"], "samples": 2}
        config = [t for t in store.trials("tuned") if t["trial_key"] == key][0]["config"]
        assert config["train"]["lr"] == best["values"]["train.lr"]
    assert [s["name"] for s in store.studies()] == ["tuned"]  # the samples are no study of their own
    # the held-out images scored the search, never the val set
    held = json.load(open([t for t in store.trials("tuned.tune")][0]["config"]["dataset"]["val_annotations"]))
    assert len(held["images"]) == 4  # round(0.25 * 16 training images)

    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("tuned").experiment_id], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert sorted(r.data.tags.get("detbench.stage", "trial") for r in children) == ["trial"] * 2 + ["tune"] * 4

    again = run_cli(write(tmp_path, 2))
    assert again.returncode == 0 and "4 of 4 samples done" in again.stdout
    assert "everything was cached" in again.stdout

    more = run_cli(write(tmp_path, 3))  # one more sample per variant: only those run
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-3000:]
    assert more.stdout.count("3 samples, 2 cached, 1 to run") == 2
    assert len(Store(f"sqlite:///{tmp_path}/runs/results.db").trial_data("tuned.tune", "tuning")) == 6
    with sqlite3.connect(f"{tmp_path}/runs/mlflow.db") as db:
        tune_runs = db.execute("select count(*) from tags where key='detbench.stage' and value='tune'").fetchone()[0]
    assert tune_runs == 6
