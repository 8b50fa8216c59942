"""R-CNN, Fast R-CNN and Faster R-CNN as trials: every detector and training scheme trains and is
scored by pycocotools; proposals are cached and reused; the schemes send (or stop) gradient where
they say; alternating training freezes what each step says and resumes mid-step bit-identically."""
import os

import pytest
import torch

from detectors.models import proposals as proposals_module
from detectors.train import trial as trial_defaults
from detectors.build import build_detector, trial_phases
from detectors.train.checkpoint import load_checkpoint
from detectors.config import PhaseConfig
from detectors.data.coco import CocoDetection, collate
from detectors.data.resolve import PATH_KEYS
from detectors.data.synthetic import generate
from detectors.evaluation.speed import measure_speed
from detectors.train.run import run_trial, seed_everything

SOFTMAX = {"name": "softmax_ce", "params": {}}
NO_SPEED = {"speed": {"enabled": False}}
ALTERNATING = {"training": "alternating", "alternating_epochs": [1, 1, 2, 1]}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 train and 4 val images of 128 px; their proposals are computed once, by the first trial."""
    return generate({"num_train": 12, "num_val": 4, "seed": 5}, str(tmp_path_factory.mktemp("data")))


def make(data, tmp_path, name, params=None, **train):
    return trial_defaults.make_trial(
        data, str(tmp_path), detector={"name": name, "params": params or {}}, loss=SOFTMAX,
        train={"epochs": 1, "batch_size": 4, "warmup_iters": 1, "eval_every_epoch": False, "hflip_prob": 0.0,
               **train},
        evaluation=NO_SPEED)


def _batch(data, n=2):
    ds = CocoDetection(data["train_images"], data["train_annotations"])
    return collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("name,params", [
    ("rcnn", {"classifier": "svm"}),
    ("rcnn", {"classifier": "softmax"}),
    ("fast_rcnn", {"roi_op": "pool"}),
    ("faster_rcnn", {"training": "approximate_joint"}),
    ("faster_rcnn", {"training": "non_approximate_joint", "fpn": True}),
    ("faster_rcnn", {"training": "alternating", "fpn": True, "alternating_epochs": [1, 1, 1, 1]}),
], ids=["rcnn-svm", "rcnn-softmax", "fast-rcnn", "faster-approx", "faster-nonapprox-fpn", "faster-alt-fpn"])
def test_every_detector_and_scheme_trains_and_is_scored_by_pycocotools(data, tmp_path, name, params):
    trial = make(data, tmp_path, name, params, max_steps=2)
    final = run_trial(trial)
    phases = trial_phases(trial)
    assert final["step"] == sum(1 if p.kind == "fit" else 2 for p in phases)
    assert {"AP", "AP50", "AR100"} <= set(final) and 0.0 <= final["AP"] <= 1.0
    assert final["train/time_s"] > 0
    if len(phases) > 1:
        assert {f"train/time_s/{p.name}" for p in phases} <= set(final)
    assert os.path.exists(os.path.join(trial["trial_dir"], "final", "detections.json"))


def test_rcnn_fits_its_svms_in_a_phase_of_its_own(data, tmp_path):
    trial = make(data, tmp_path, "rcnn", {"classifier": "svm"}, max_steps=1)
    assert [(p.name, p.kind) for p in trial_phases(trial)] == [("finetune", "sgd"), ("svm", "fit")]
    reports = []
    run_trial(trial, lambda m, c: reports.append((m, c)))
    svm_epoch = reports[1][0]
    assert svm_epoch["phase"] == 1 and svm_epoch["train/svm/rounds"] >= 1
    assert svm_epoch["train/svm/cached_negatives"] > 0
    after_finetune = load_checkpoint(reports[0][1])["model"]
    after_svm = load_checkpoint(reports[1][1])["model"]
    assert not bool(after_finetune["svm_ready"]) and bool(after_svm["svm_ready"])
    for k, v in after_finetune.items():  # the SVM phase changes the SVMs and nothing else
        if not k.startswith("svm"):
            assert torch.equal(v, after_svm[k]), k
    assert after_svm["svm.weight"].abs().sum() > 0


def test_selective_search_ranks_an_image_the_same_whatever_ran_before(data):
    ds = CocoDetection(data["val_images"], data["val_annotations"])
    first, other = ds.load_image(ds.image_ids[0]), ds.load_image(ds.image_ids[1])
    a = proposals_module.selective_search(first)
    proposals_module.selective_search(other)  # advances the C library's rand() state, as another image would
    b = proposals_module.selective_search(first)
    assert len(a) > 0 and torch.equal(a, b)
    assert (a[:, 2] > a[:, 0]).all() and (a[:, 3] > a[:, 1]).all() and a.max() <= 128


def test_proposals_are_cached_and_a_second_trial_computes_none(tmp_path, monkeypatch):
    data = generate({"num_train": 6, "num_val": 2, "seed": 7}, str(tmp_path / "data"))
    calls = []
    real = proposals_module.selective_search
    monkeypatch.setattr(proposals_module, "selective_search", lambda *a, **k: calls.append(1) or real(*a, **k))
    run_trial(make(data, tmp_path / "a", "fast_rcnn", max_steps=1))
    assert len(calls) == 8  # 6 train + 2 val images, each segmented once
    cache = os.path.join(os.path.dirname(data["train_annotations"]), "proposals")
    assert len(os.listdir(cache)) == 8
    run_trial(make(data, tmp_path / "b", "rcnn", {"max_proposals": 20}, max_steps=1))  # same settings
    assert len(calls) == 8  # the second trial computed none
    # Other segmentation settings are another cache entry.
    model = build_detector(make(data, tmp_path / "c", "fast_rcnn", {"selective_search": "quality"}), 5, [1] * 5)
    model.attach_datasets([CocoDetection(data["val_images"], data["val_annotations"])])
    assert len(calls) == 10 and model.proposals.loaded == 0


def test_timing_computes_proposals_afresh_and_splits_the_stages(data, tmp_path, monkeypatch):
    ds = CocoDetection(data["val_images"], data["val_annotations"])
    model = build_detector(make(data, tmp_path, "fast_rcnn"), len(ds.cat_ids), ds.class_counts)
    model.attach_datasets([ds])
    calls = []
    real = proposals_module.selective_search
    monkeypatch.setattr(proposals_module, "selective_search", lambda *a, **k: calls.append(1) or real(*a, **k))
    speed = measure_speed(model, ds, torch.device("cpu"), latency_images=3, warmup=1, throughput_batch=2,
                          throughput_batches=1)
    assert len(calls) == 1 + 3 + 2  # warm-up 1, latency 3, throughput 2: all segmented (FLOPs: cached)
    stages = {k: v for k, v in speed.items() if k.startswith("stage_")}
    assert set(stages) == {"stage_proposals_ms", "stage_features_ms", "stage_regions_ms", "stage_detection_ms"}
    assert stages["stage_detection_ms"] >= max(stages["stage_features_ms"], stages["stage_regions_ms"])
    parts = stages["stage_proposals_ms"] + stages["stage_detection_ms"]
    assert parts <= speed["latency_ms_p95"] * 1.5 and all(v > 0 for v in stages.values())
    faster = build_detector(make(data, tmp_path, "faster_rcnn"), len(ds.cat_ids), ds.class_counts)
    faster.eval()
    with torch.no_grad():
        faster([ds[0][0]])
    assert set(faster.stage_times) == {"features", "proposals", "regions"}


@pytest.mark.parametrize("scheme,fpn", [("approximate_joint", False), ("non_approximate_joint", False),
                                        ("non_approximate_joint", True)])
def test_the_detection_loss_reaches_the_rpn_regression_only_without_approximation(data, tmp_path, scheme, fpn):
    images, targets = _batch(data)
    seed_everything(0)
    model = build_detector(make(data, tmp_path, "faster_rcnn", {"training": scheme, "fpn": fpn}), 5, [1] * 5)
    model.train()
    losses = model(images, targets)
    (losses["loss_roi_cls"] + losses["loss_roi_box"]).backward()  # the detection losses alone
    grad = model.rpn.head.bbox_pred.weight.grad
    if scheme == "approximate_joint":
        assert grad is None or not grad.any()
    else:
        assert grad is not None and grad.abs().sum() > 0
    assert model.rpn.head.cls_logits.weight.grad is None  # objectness never gets it: scores only rank


@pytest.fixture(scope="module")
def alternating_run(data, tmp_path_factory):
    """One uninterrupted alternating trial, steps of 1, 1, 2 and 1 epochs (2 optimiser steps each:
    12 images, batch 6), with the initial weights and every epoch's checkpoint."""
    tmp = tmp_path_factory.mktemp("alternating")
    trial = make(data, tmp / "trial", "faster_rcnn", ALTERNATING, batch_size=6)
    seed_everything(0)
    initial = {k: v.clone() for k, v in build_detector(trial, 5, [1] * 5).state_dict().items()}
    reports = []
    run_trial(trial, lambda m, c: reports.append((m, c)))
    final = torch.load(os.path.join(trial["trial_dir"], "final", "model.pt"), weights_only=True)
    return trial, initial, reports, final


def _changed(before, after):
    """Top-level parts whose parameters or buffers changed."""
    return {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}


def test_alternating_training_freezes_exactly_what_each_step_says(alternating_run):
    trial, initial, reports, _ = alternating_run
    assert [p.name for p in trial_phases(trial)] == ["rpn", "detector", "rpn_shared", "detector_shared"]
    assert [m["phase"] for m, _ in reports[:-1]] == [0, 1, 2, 2, 3]
    states = [initial] + [load_checkpoint(c)["model"] for _, c in reports[:-1]]
    step_end = {0: states[1], 1: states[2], 2: states[4], 3: states[5]}
    # 1: the RPN on its own backbone; 2: the detector on its own backbone, the step-1 RPN frozen;
    # 3: only the RPN's own layers, reading the (frozen) detector backbone; 4: only the detector's head.
    assert _changed(initial, step_end[0]) == {"rpn_backbone", "rpn"}
    assert _changed(step_end[0], step_end[1]) == {"backbone", "roi_heads"}
    assert _changed(step_end[1], step_end[2]) == {"rpn"}
    assert _changed(step_end[2], step_end[3]) == {"roi_heads"}
    # the epoch reports carry the losses each step trains: RPN losses in steps 1 and 3 only
    assert "train/loss_rpn_cls" in reports[0][0] and "train/loss_roi_cls" not in reports[0][0]
    assert "train/loss_roi_cls" in reports[1][0] and "train/loss_rpn_cls" not in reports[1][0]


def test_alternating_training_resumed_in_the_middle_of_step_3_matches(alternating_run, data, tmp_path):
    trial, _, _, straight = alternating_run
    trial2 = dict(trial, trial_dir=str(tmp_path / "resumed"))
    seen = []

    class Interrupt(Exception):
        pass

    def stop(metrics, ckpt):
        seen.append(ckpt)
        if len(seen) == 3:  # epochs 0 (step 1), 1 (step 2), 2 (first of step 3's two), then "killed"
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(trial2, stop)
    state = load_checkpoint(seen[-1])
    assert (state["phase"], state["phase_epoch"]) == (2, 0)  # in the middle of step 3
    run_trial(trial2, resume_from=seen[-1])
    resumed = torch.load(os.path.join(trial2["trial_dir"], "final", "model.pt"), weights_only=True)
    assert straight.keys() == resumed.keys()
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


def test_alternating_steps_and_checks():
    from detectors.build import check_components
    from detectors.registry import ConfigError

    with pytest.raises(ConfigError, match="roi_op: align"):
        check_components({"name": "faster_rcnn", "params": {"training": "non_approximate_joint", "roi_op": "pool"}},
                         None, {})
    with pytest.raises(ConfigError, match="one number per step"):
        check_components({"name": "faster_rcnn", "params": {"alternating_epochs": [1, 2]}}, None, {})
    trial = trial_defaults.make_trial({k: "/x" for k in PATH_KEYS}, "/tmp/unused", loss=SOFTMAX, train={"epochs": 5},
                                      detector={"name": "faster_rcnn", "params": {"training": "alternating"}})
    # default: train.epochs for the RPN steps, half of it (rounded up) for the detector steps
    assert [p.epochs for p in trial_phases(trial)] == [5, 3, 5, 3]
    model = build_detector(trial, 2, [1, 1])
    with pytest.raises(ValueError, match="phase 'warmup' is none of them"):
        model.begin_phase(PhaseConfig(name="warmup", epochs=1))
