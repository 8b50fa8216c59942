"""The pretraining stage through the real driver: the first study that asks for a pretrained tiny
backbone trains it once (progress lines, an MLflow run, a store row), a second study with the same
settings finds it cached, and the trials of both start from its weights."""
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from platform.track.store import Store
from tests.platform.test_study_e2e import run_cli, write_study

pytestmark = pytest.mark.slow  # two studies through `python -m platform.run` on a local Ray

PRETRAIN = {"images": 48, "epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretraining")
    backbone = {"weights": "pretrain", "freeze_at": 1, "pretrain": PRETRAIN}
    detector = {"name": "retinanet", "scale": "tiny", "backbone": backbone}
    first = run_cli(write_study(root / "a.yaml", root, [2], name="pretrained_a", detector=detector))
    second = run_cli(write_study(root / "b.yaml", root, [0, 2], name="pretrained_b", detector=detector))
    return root, first, second


def test_the_first_study_pretrains_and_the_second_finds_it_cached(two_studies):
    root, first, second = two_studies
    assert first.returncode == 0, first.stdout + first.stderr
    assert second.returncode == 0, second.stdout + second.stderr
    assert "pretraining the tiny backbone: 48 generated images, 2 epochs" in first.stdout
    assert "pretraining: epoch 2/2" in first.stdout and "pretraining: done in" in first.stdout
    assert "pretraining:" not in second.stdout and "pretraining the" not in second.stdout  # no stage ran again
    assert "pretrained backbone" in second.stdout and ": cached (held-out accuracy" in second.stdout
    store = Store(f"sqlite:///{root}/runs/results.db")
    (row,) = store.pretrainings().values()  # one run for both studies
    assert row["study"] == "pretrained_a" and row["settings"]["images"] == 48
    assert [f["epoch"] for f in row["result"]["history"]] == [1, 2]
    assert os.path.isfile(row["path"]) and row["path"].startswith(str(root / "runs" / "datasets"))


def test_the_stage_has_its_own_mlflow_run_beside_the_trials(two_studies):
    root, _, _ = two_studies
    client = MlflowClient(f"sqlite:///{root}/runs/mlflow.db")
    runs = {}
    for name in ("pretrained_a", "pretrained_b"):
        exp = client.get_experiment_by_name(name)
        runs[name] = client.search_runs([exp.experiment_id], max_results=100)
    kinds = [r.data.tags.get("detbench.kind") for r in runs["pretrained_a"]]
    assert kinds.count("pretraining") == 1 and len(runs["pretrained_a"]) == 3  # parent, 1 trial, the stage
    stage = next(r for r in runs["pretrained_a"] if r.data.tags.get("detbench.kind") == "pretraining")
    assert set(stage.data.metrics) >= {"loss", "val_accuracy"} and stage.data.params["pretrain.images"] == "48"
    assert len(client.get_metric_history(stage.info.run_id, "val_accuracy")) == 2  # one point per epoch
    assert "mlflow.parentRunId" in stage.data.tags
    assert not [r for r in runs["pretrained_b"] if r.data.tags.get("detbench.kind") == "pretraining"]


def test_the_trials_start_from_the_pretrained_weights_with_the_first_stage_frozen(two_studies):
    root, _, _ = two_studies
    store = Store(f"sqlite:///{root}/runs/results.db")
    (row,) = store.pretrainings().values()
    pretrained = torch.load(row["path"], weights_only=True)
    trials = [t for t in store.trials("pretrained_b") if t["status"] == "finished"]
    assert len(trials) == 2
    for t in trials:
        final = torch.load(os.path.join(t["config"]["trial_dir"], "final", "model.pt"), weights_only=True)
        # freeze_at 1: layer1 is the file's after training, layer2 moved away from it
        assert torch.equal(final["backbone.body.body.layer1.0.weight"], pretrained["layer1.0.weight"])
        assert not torch.equal(final["backbone.body.body.layer2.0.0.weight"], pretrained["layer2.0.0.weight"])
        assert t["config"]["backbone_digest"] == next(iter(store.pretrainings()))
