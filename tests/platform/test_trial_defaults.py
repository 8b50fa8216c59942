"""A hand-made trial (detectors.train.trial.make_trial) has the shape and defaults of one from a study file."""
from platform.study.expand import expand, resolve_dataset_paths
from platform.study.load import load_study

from detectors.train.trial import make_trial

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
    assert {k: v for k, v in t["detector"].items() if k != "backbone"} == {
        "name": "dense", "scale": "tiny", "params": {"box": "dirac"}}
    assert t["detector"]["backbone"]["weights"] is None  # random weights unless a trial names some
    assert t["loss"] == {"name": "qfl", "params": {}}  # focal's gamma and alpha mean nothing to qfl
    assert t["train"]["epochs"] == 2 and t["train"]["lr"] == 1e-3
    assert t["eval"]["speed"] == {"enabled": False, "isolated": True, "latency_images": 50, "warmup": 10,
                                  "throughput_batch": 8, "throughput_batches": 5, "repeats": 5, "train_steps": 5}
    assert t["trial_key"] == "v/seed=3"
    again = make_trial(PATHS, "/tmp/t")
    assert again["loss"]["params"] == {"gamma": 2.0, "alpha": 0.25}  # the defaults were not modified


# The study schema (platform.study.spec, with ranges and the study file's wording) and the typed
# trial config (detectors.config, what the worker reads) declare the same sections: every
# key of one is a key of the other, with the same default. A default changed in one place
# only (a schema saying hflip 0.5 while the worker falls back to 0.0) fails here.
SECTIONS = [("TrainSpec", "TrainConfig"), ("PhaseSpec", "PhaseConfig"), ("EvalSpec", "EvalConfig"),
            ("SpeedSpec", "SpeedConfig"), ("DetectorSpec", "DetectorConfig"), ("LossSpec", "LossConfig"),
            ("BackboneSpec", "BackboneConfig"), ("PretrainSpec", "PretrainConfig")]


def _schema_defaults(model):
    out = {}
    for name, f in model.model_fields.items():
        if f.is_required():
            out[name] = "<required>"
        else:
            value = f.get_default(call_default_factory=True)
            out[name] = value.model_dump(mode="json") if hasattr(value, "model_dump") else value
    return out


def _config_defaults(cls):
    import dataclasses
    import json

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            out[f.name] = "<required>"
            continue
        out[f.name] = json.loads(json.dumps(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value))
    return out


def test_study_schema_and_trial_config_declare_the_same_keys_and_defaults():
    import detectors.config as config
    import platform.study.spec as spec

    for schema_name, config_name in SECTIONS:
        schema, typed = getattr(spec, schema_name), getattr(config, config_name)
        assert _schema_defaults(schema) == _config_defaults(typed), (schema_name, config_name)


def test_the_equality_check_sees_a_changed_default():
    # The walk above compares values, not just names: hflip 0.5 against 0.0 is a difference.
    import dataclasses

    from detectors.config import TrainConfig
    import platform.study.spec as spec

    @dataclasses.dataclass(frozen=True)
    class Drifted(TrainConfig):
        hflip_prob: float = 0.0

    assert _schema_defaults(spec.TrainSpec)["hflip_prob"] == 0.5
    assert _config_defaults(Drifted)["hflip_prob"] == 0.0
    assert _schema_defaults(spec.TrainSpec) != _config_defaults(Drifted)


def test_a_study_trial_parses_into_the_typed_config(tmp_path, monkeypatch):
    from detectors.config import TrialConfig, to_dict

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "d.yaml"
    path.write_text("name: d\ndataset: {kind: synthetic}\ndetector: {name: faster_rcnn}\n"
                    "losses: {rpn_box: {name: l1}}\n"
                    "train: {phases: [{name: a, epochs: 2, lr: 0.01}, {name: b, epochs: 1, frozen: [backbone]}]}\n")
    (trial,) = resolve_dataset_paths(expand(load_study(str(path))), PATHS)
    cfg = TrialConfig.from_dict(trial)
    assert cfg.train.epochs == 3  # 2 + 1: the phases' epochs
    assert [p.lr for p in cfg.train.phases] == [0.01, None]  # None: the phase takes train.lr
    assert cfg.train.phases[1].frozen == ("backbone",)
    assert (cfg.losses["rpn_box"].name, cfg.loss) == ("l1", None)
    # nothing lost or added on the way; the driver sets the others later, if at all (tuning: sweep.tune)
    assert {k: v for k, v in to_dict(cfg).items() if k in trial} == trial
    assert set(to_dict(cfg)) - set(trial) == {"speed_phase", "loader_workers", "tuning", "tuned"}


def test_the_typed_config_rejects_an_unknown_key():
    import pytest

    from detectors.config import TrialConfig

    trial = make_trial(PATHS, "/tmp/t", train={"epochs": 2})
    trial["train"]["lr_decay_typo"] = 0.5
    with pytest.raises(ValueError, match=r"trial.train: unknown keys \['lr_decay_typo'\]"):
        TrialConfig.from_dict(trial)
