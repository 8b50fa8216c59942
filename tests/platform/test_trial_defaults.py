"""A hand-made trial (detectors.trial.make_trial) has the shape and defaults of one from a study file."""
from platform.expand import expand, resolve_dataset_paths
from platform.study import load_study

from detectors.trial import make_trial

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


def test_make_trial_matches_a_study_trial_with_the_schema_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ndataset: {kind: synthetic}\ndetector: {name: retinanet}\n"
                    "loss: {name: focal, params: {gamma: 2.0, alpha: 0.25}}\n")
    (from_study,) = resolve_dataset_paths(expand(load_study(str(path))), PATHS)
    made = make_trial(PATHS, str(tmp_path / "t"))
    assert set(made) == set(from_study)
    for section in ("detector", "loss", "losses", "train", "eval"):
        assert made[section] == from_study[section], section
    assert set(made["dataset"]) == set(from_study["dataset"])
    assert {k: made["dataset"][k] for k in PATHS} == PATHS
    assert (made["trial_key"], made["num_threads"], made["gpus"]) == ("default/seed=0", 1, 0)


def test_make_trial_overrides():
    t = make_trial(PATHS, "/tmp/t", detector={"name": "dense", "params": {"box": "dirac"}},
                   loss={"name": "qfl"}, train={"epochs": 2}, evaluation={"speed": {"enabled": False}},
                   seed=3, variant="v")
    assert t["detector"] == {"name": "dense", "scale": "tiny", "params": {"box": "dirac"}}
    assert t["loss"] == {"name": "qfl", "params": {}}  # focal's gamma and alpha mean nothing to qfl
    assert t["train"]["epochs"] == 2 and t["train"]["lr"] == 1e-3
    assert t["eval"]["speed"] == {"enabled": False, "isolated": True, "latency_images": 50, "warmup": 10,
                                  "throughput_batch": 8, "throughput_batches": 5, "repeats": 5, "train_steps": 5}
    assert t["trial_key"] == "v/seed=3"
    again = make_trial(PATHS, "/tmp/t")
    assert again["loss"]["params"] == {"gamma": 2.0, "alpha": 0.25}  # the defaults were not modified
