"""Sweep expansion: order, trial dicts, content hashes and what does (not) change them."""
import hashlib
import json
import os
import shutil

import pytest

import detectors

from platform.study.expand import (
    describe, detectors_code_version, expand, format_value, resolve_dataset_paths, short_names,
)
from platform.study.load import StudyError, load_study

HEAD = """\
name: ex
description: expansion test
dataset: {kind: synthetic, synthetic: {num_train: 8, num_val: 4}}
detector: {name: retinanet}
loss: {name: focal}
resources: {cpus_per_trial: 2, max_concurrent: 3}
"""
SWEEP = """\
sweep:
  variants:
    - {loss.params.gamma: 0, loss.params.alpha: 0.75}
    - {loss.params.gamma: 2, loss.params.alpha: 0.25}
  grid:
    train.lr: [0.01, 0.001]
    train.batch_size: [2, 4, 8]
  seeds: [0, 1]
"""


def study_from(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return load_study(str(path))


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative output dirs resolve here, not in the repo


@pytest.fixture
def trials(tmp_path):
    return expand(study_from(tmp_path, HEAD + SWEEP))


def test_count_and_order_variants_x_grid_x_seeds(trials):
    assert len(trials) == 2 * (2 * 3) * 2
    # variants outer (as written), then the grid over sorted keys (batch_size before lr), seeds inner
    assert [t["trial_key"] for t in trials[:6]] == [
        "gamma=0,alpha=0.75,batch_size=2,lr=0.01/seed=0",
        "gamma=0,alpha=0.75,batch_size=2,lr=0.01/seed=1",
        "gamma=0,alpha=0.75,batch_size=2,lr=0.001/seed=0",
        "gamma=0,alpha=0.75,batch_size=2,lr=0.001/seed=1",
        "gamma=0,alpha=0.75,batch_size=4,lr=0.01/seed=0",
        "gamma=0,alpha=0.75,batch_size=4,lr=0.01/seed=1",
    ]
    assert trials[-1]["trial_key"] == "gamma=2,alpha=0.25,batch_size=8,lr=0.001/seed=1"
    assert len({t["trial_key"] for t in trials}) == len({t["config_hash"] for t in trials}) == 24


def test_trial_dict_follows_the_contract(trials, tmp_path):
    t = trials[-1]
    assert set(t) >= {"study", "trial_key", "variant", "seed", "config_hash", "dataset", "detector", "loss",
                      "train", "eval", "num_threads", "trial_dir"}
    assert t["study"] == "ex" and t["variant"] == "gamma=2,alpha=0.25,batch_size=8,lr=0.001" and t["seed"] == 1
    # dotted-key overrides applied to the resolved config
    assert t["loss"] == {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}}
    assert (t["train"]["lr"], t["train"]["batch_size"], t["train"]["epochs"]) == (0.001, 8, 6)
    assert t["eval"]["speed"]["enabled"] is True and t["detector"]["scale"] == "tiny"
    assert t["num_threads"] == 2
    assert (t["workers"], t["cpus"]) == (1, 2.0)  # one worker of cpus_per_trial; not in the hash
    assert t["trial_dir"] == os.path.join(str(tmp_path), "runs", "ex", "trials", t["config_hash"][:12])
    ds = t["dataset"]
    assert ds["kind"] == "synthetic" and ds["train_images"] is None  # filled by resolve_dataset_paths
    assert ds["synthetic"]["num_train"] == 8 and "num_classes" in ds["synthetic"]  # merged over DEFAULTS
    assert len(t["config_hash"]) == 64 and int(t["config_hash"], 16) >= 0
    assert json.loads(json.dumps(t)) == t  # plain JSON types only: safe to hand to a Ray worker


def test_no_sweep_is_one_default_trial(tmp_path):
    (t,) = expand(study_from(tmp_path, HEAD))
    assert (t["trial_key"], t["variant"], t["seed"]) == ("default/seed=0", "default", 0)


def test_hash_is_stable_across_calls_and_key_order(tmp_path, trials):
    again = expand(study_from(tmp_path, HEAD + SWEEP))
    assert [t["config_hash"] for t in again] == [t["config_hash"] for t in trials]
    # The same study with every mapping written in another order.
    reordered = """\
sweep:
  seeds: [0, 1]
  grid:
    train.batch_size: [2, 4, 8]
    train.lr: [0.01, 0.001]
  variants:
    - {loss.params.gamma: 0, loss.params.alpha: 0.75}
    - {loss.params.gamma: 2, loss.params.alpha: 0.25}
resources: {max_concurrent: 3, cpus_per_trial: 2}
loss: {name: focal}
detector: {name: retinanet}
dataset: {synthetic: {num_val: 4, num_train: 8}, kind: synthetic}
description: expansion test
name: ex
"""
    other = expand(study_from(tmp_path, reordered, "r.yaml"))
    assert {t["trial_key"]: t["config_hash"] for t in other} == {t["trial_key"]: t["config_hash"] for t in trials}


def test_resources_tracking_output_and_description_do_not_change_hashes(tmp_path, trials):
    text = (HEAD + SWEEP).replace("max_concurrent: 3", "max_concurrent: 1, max_failures: 4") \
        .replace("description: expansion test", "description: something else")
    text += "tracking: {store_url: 'sqlite:////tmp/elsewhere.db'}\noutput: {runs_dir: other_runs}\n"
    other = expand(study_from(tmp_path, text))
    assert [t["config_hash"] for t in other] == [t["config_hash"] for t in trials]


def test_changing_one_grid_value_changes_only_its_trials(tmp_path, trials):
    other = expand(study_from(tmp_path, HEAD + SWEEP.replace("[2, 4, 8]", "[2, 4, 16]")))
    before = {t["trial_key"]: t["config_hash"] for t in trials}
    after = {t["trial_key"]: t["config_hash"] for t in other}
    kept = {k for k in after if k in before and after[k] == before[k]}
    assert kept == {k for k in before if "batch_size=8," not in k}
    assert len(kept) == 16 and all("batch_size=16," in k for k in set(after) - kept)


def test_config_changes_outside_the_sweep_change_every_hash(tmp_path, trials):
    other = expand(study_from(tmp_path, HEAD + SWEEP + "eval: {score_thresh: 0.1}\n"))
    assert not {t["config_hash"] for t in other} & {t["config_hash"] for t in trials}


def test_int_and_float_spellings_of_a_float_param_hash_the_same(tmp_path):
    a = expand(study_from(tmp_path, HEAD.replace("{name: focal}", "{name: focal, params: {gamma: 2}}")))
    b = expand(study_from(tmp_path, HEAD.replace("{name: focal}", "{name: focal, params: {gamma: 2.0}}"), "b.yaml"))
    assert a[0]["config_hash"] == b[0]["config_hash"]


def test_equal_configs_from_a_sweep_are_an_error(tmp_path):
    text = HEAD + "sweep: {variants: [{loss.params.gamma: 2}, {loss.params.gamma: 2.0}]}\n"
    with pytest.raises(StudyError, match="same config hash"):
        expand(study_from(tmp_path, text))


def test_an_invalid_combination_is_reported_by_expand(tmp_path):
    text = HEAD + "sweep: {grid: {loss.name: [ce, focal], loss.params.gamma: [1]}}\n"
    study = study_from(tmp_path, text)  # each value is fine on its own
    with pytest.raises(StudyError) as info:
        expand(study)
    assert str(info.value) == (f"{tmp_path / 's.yaml'}: sweep: trial 'name=ce,gamma=1': loss.params.gamma: "
                               "unknown parameter of classification loss 'ce' (known: none)")


def test_short_names_and_value_format():
    assert short_names(["loss.params.gamma", "train.lr", "detector.params.lr"]) == {
        "loss.params.gamma": "gamma", "train.lr": "train.lr", "detector.params.lr": "detector.params.lr"}
    assert [format_value(v) for v in (2.0, 0.25, 3, True, None, "sgd", 1e-4)] == \
        ["2", "0.25", "3", "true", "null", "sgd", "0.0001"]


def test_coco_hash_follows_annotation_bytes(tmp_path):
    for d in ("train", "val"):
        (tmp_path / d).mkdir()
        (tmp_path / f"{d}.json").write_text('{"images": []}')
    text = HEAD.replace("{kind: synthetic, synthetic: {num_train: 8, num_val: 4}}",
                        f"{{kind: coco, train_images: {tmp_path}/train, train_annotations: {tmp_path}/train.json, "
                        f"val_images: {tmp_path}/val, val_annotations: {tmp_path}/val.json}}")
    (first,) = expand(study_from(tmp_path, text))
    assert first["dataset"]["train_annotations"] == str(tmp_path / "train.json")
    assert first["dataset"]["synthetic"] is None
    assert expand(study_from(tmp_path, text))[0]["config_hash"] == first["config_hash"]
    (tmp_path / "val.json").write_text('{"images": [], "annotations": []}')
    assert expand(study_from(tmp_path, text))[0]["config_hash"] != first["config_hash"]


def test_detectors_code_version_covers_py_files_only(tmp_path):
    (tmp_path / "pkg" / "__pycache__").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    v1 = detectors_code_version(str(tmp_path))
    (tmp_path / "pkg" / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "notes.txt").write_text("ignored")
    assert detectors_code_version(str(tmp_path)) == v1
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    assert detectors_code_version(str(tmp_path)) != v1
    assert len(detectors_code_version()) == 64  # the real detectors/ package


def test_trial_hashes_follow_detectors_code_and_not_the_benchmarks(tmp_path, monkeypatch):
    """Benchmarks are driver code (platform/bench/): editing one re-runs no cached trial;
    editing a loss changes every trial's hash (the whole detectors/ tree is hashed)."""
    import platform.bench
    import platform.study.expand
    from platform.bench import measurements, threads

    real_root = os.path.dirname(os.path.abspath(detectors.__file__))
    for module in (platform.bench, measurements, threads):
        assert os.path.commonpath([real_root, os.path.abspath(module.__file__)]) != real_root, module.__name__
    # a copy of the repository's two trees: detectors/ (hashed) and platform/bench/ beside it
    skip = shutil.ignore_patterns("__pycache__")
    root = tmp_path / "repo"
    shutil.copytree(real_root, root / "detectors", ignore=skip)
    shutil.copytree(os.path.dirname(measurements.__file__), root / "platform" / "bench", ignore=skip)
    hashed = str(root / "detectors")
    assert detectors_code_version(hashed) == detectors_code_version()  # the copy hashes as the package
    monkeypatch.setattr(platform.study.expand, "detectors_code_version", lambda: detectors_code_version(hashed))

    def hashes():  # 2 variants x 6 grid points x 2 seeds = 24 trials
        return {t["trial_key"]: t["config_hash"] for t in expand(study_from(tmp_path, HEAD + SWEEP))}

    before = hashes()
    assert len(before) == 24
    with open(root / "platform" / "bench" / "measurements.py", "a") as f:
        f.write("\nREPEATS = 99  # a benchmark edited\n")
    assert hashes() == before
    with open(root / "detectors" / "losses" / "classification.py", "a") as f:
        f.write("\nFOCAL_EPS = 1e-9  # a loss edited\n")
    after = hashes()
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)


def test_resolve_dataset_paths_fills_synthetic_trials(trials):
    paths = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}
    filled = resolve_dataset_paths(trials, paths)
    assert all(t["dataset"]["val_annotations"] == "/data/val_annotations" for t in filled)
    assert trials[0]["dataset"]["val_annotations"] is None  # the input is not modified
    calls = []
    resolve_dataset_paths(trials, lambda params: calls.append(params) or paths)
    assert len(calls) == 1 and calls[0]["num_train"] == 8  # once per distinct generator params


def test_describe_marks_cached_trials(trials):
    text = describe(trials[:3], {trials[1]["config_hash"]})
    lines = text.splitlines()
    assert lines[0].split() == ["trial", "hash", "cached"]
    assert lines[2].split() == [trials[1]["trial_key"], trials[1]["config_hash"][:12], "yes"]
    assert lines[1].split()[-1] == lines[3].split()[-1] == "no"
    assert lines[-1] == "3 trials: 1 cached, 2 to run"
    assert describe(trials[:3], {trials[1]["config_hash"]}, force=True).endswith(
        "3 trials: 1 cached, 3 to run (--force: cached trials run again)")


REPO_STUDIES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "studies")


def test_labelled_variants_switching_the_loss_start_from_empty_params(tmp_path):
    trials = expand(load_study(os.path.join(REPO_STUDIES, "loss_ablation.yaml")))
    assert len(trials) == 12  # 4 variants x 3 seeds
    by_key = {t["trial_key"]: t for t in trials}
    assert sorted({t["variant"] for t in trials}) == ["balanced_ce", "ce", "focal", "gfl"]
    assert by_key["ce/seed=0"]["loss"] == {"name": "ce", "params": {}}
    assert by_key["focal/seed=1"]["loss"] == {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}}
    gfl = by_key["gfl/seed=2"]
    assert gfl["loss"] == {"name": "qfl", "params": {"beta": 2.0}}
    assert gfl["detector"]["params"]["quality"] == "joint" and gfl["detector"]["params"]["box"] == "general_dfl"
    # the other variants keep the base detector params
    assert by_key["ce/seed=0"]["detector"]["params"]["quality"] == "none"


def test_a_param_of_the_switched_loss_is_checked_against_the_new_loss(tmp_path):
    with pytest.raises(StudyError, match=r"sweep\.variants\[0\]\.loss\.params\.gamma"):
        study_from(tmp_path, HEAD + """
sweep:
  variants:
    - {label: x, loss.name: ce, loss.params.gamma: 2.0}
""")


def test_gfl_ablation_expands_to_its_16_variants():
    trials = expand(load_study(os.path.join(REPO_STUDIES, "gfl_ablation.yaml")))
    assert len({t["variant"] for t in trials}) == 16 and len(trials) == 32
    assert len({t["config_hash"] for t in trials}) == 32


def _with_backbone(backbone: str) -> str:
    return HEAD.replace("detector: {name: retinanet}", f"detector: {{name: retinanet, backbone: {backbone}}}")


def test_a_weights_file_counts_by_its_content_not_its_path(tmp_path):
    import torch

    from detectors.models.backbones import TINY_WIDTHS, TinyBody

    torch.save(TinyBody(TINY_WIDTHS).state_dict(), tmp_path / "a.pt")
    shutil.copy(tmp_path / "a.pt", tmp_path / "copy.pt")
    (first,) = expand(study_from(tmp_path, _with_backbone("{weights: a.pt}")))
    (copied,) = expand(study_from(tmp_path, _with_backbone("{weights: copy.pt}")))
    assert first["detector"]["backbone"]["weights"] == str(tmp_path / "a.pt")  # the worker reads this path
    assert copied["config_hash"] == first["config_hash"]  # same bytes elsewhere: the same trial
    assert first["backbone_digest"] == hashlib.sha256((tmp_path / "a.pt").read_bytes()).hexdigest()
    torch.save(TinyBody(TINY_WIDTHS).state_dict(), tmp_path / "copy.pt")  # other random weights
    (changed,) = expand(study_from(tmp_path, _with_backbone("{weights: copy.pt}")))
    assert changed["config_hash"] != first["config_hash"]
    (frozen_more,) = expand(study_from(tmp_path, _with_backbone("{weights: a.pt, freeze_at: 3}")))
    assert frozen_more["config_hash"] != first["config_hash"]


def test_random_weights_ignore_the_fine_tuning_settings_and_the_stage_counts_its_own(tmp_path):
    (scratch,) = expand(study_from(tmp_path, HEAD))
    (scratch_other,) = expand(study_from(tmp_path, _with_backbone("{freeze_at: 4, norm: train}")))
    assert scratch["config_hash"] == scratch_other["config_hash"] and scratch["backbone_digest"] is None
    (pre,) = expand(study_from(tmp_path, _with_backbone("{weights: pretrain}")))
    (longer,) = expand(study_from(tmp_path, _with_backbone("{weights: pretrain, pretrain: {epochs: 30}}")))
    assert len({scratch["config_hash"], pre["config_hash"], longer["config_hash"]}) == 3
    assert pre["detector"]["backbone"]["weights"] == "pretrain" and len(pre["backbone_digest"]) == 64
    assert pre["backbone_digest"] != longer["backbone_digest"]


def test_from_scratch_is_one_swept_value_away(tmp_path):
    text = _with_backbone("{weights: pretrain}") + "sweep: {grid: {detector.backbone.weights: [null, pretrain]}}\n"
    scratch, pre = expand(study_from(tmp_path, text))
    assert (scratch["variant"], pre["variant"]) == ("weights=null", "weights=pretrain")
    assert scratch["backbone_digest"] is None and pre["backbone_digest"] is not None
