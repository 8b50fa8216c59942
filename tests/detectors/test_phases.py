"""Phases as data: resolution, freezing, loss selection, and resume in the middle of a phase."""
import os

import pytest
import torch

from detectors.build import build_detector, check_phase_parts
from detectors.train.checkpoint import load_checkpoint
from detectors.train import trial as trial_defaults
from detectors.config import PhaseConfig, TrainConfig, parse
from detectors.data.resolve import PATH_KEYS
from detectors.train.phases import apply_phase, counts, resolve_phases
from detectors.registry import ConfigError
from detectors.train.run import run_trial, seed_everything
from tests.detectors.test_train import SMALL, Interrupt, make_trial

TWO_PHASES = [
    # head only, on the classification loss alone, with its own learning rate
    {"name": "head", "epochs": 2, "trainable": ["head"], "losses": ["cls"], "lr": 5e-3},
    # then everything, both losses, the train section's optimizer settings
    {"name": "all", "epochs": 2},
]


def test_no_phases_is_one_phase_with_the_train_settings():
    train = TrainConfig(epochs=7, optimizer="adamw", lr=1e-3, warmup_iters=5, batch_size=4)
    (phase,) = resolve_phases(train)
    # every optimizer setting the phase leaves unset is train's (its defaults included)
    assert phase == PhaseConfig(name="train", epochs=7, optimizer="adamw", lr=1e-3, warmup_iters=5, momentum=0.9,
                                weight_decay=1e-4, schedule="cosine", milestones=(0.67, 0.89), lr_decay=0.1)
    assert (phase.trainable, phase.frozen, phase.losses, phase.kind) == (None, (), None, "sgd")
    with_phases = parse(TrainConfig, {"epochs": 7, "lr": 1e-3, "warmup_iters": 5, "phases": TWO_PHASES})
    head, everything = resolve_phases(with_phases)
    assert (head.lr, head.warmup_iters, head.losses) == (5e-3, 5, ("cls",))
    assert (everything.lr, everything.trainable, everything.losses) == (1e-3, None, None)
    assert counts("loss_cls", head) and not counts("loss_box", head) and counts("loss_box", everything)
    # a detector's declared scheme comes as plain dicts: parsed, unknown keys refused
    with pytest.raises(ValueError, match="unknown keys"):
        resolve_phases(train, [{"name": "x", "epochs": 1, "lr_decay_typo": 1}])
    # a phase the model fits itself (R-CNN's SVMs); a kind the loop does not know is an error
    (fit,) = resolve_phases(train, [{"name": "svm", "epochs": 1, "kind": "fit"}])
    assert fit.kind == "fit" and phase.kind == "sgd"
    with pytest.raises(ValueError, match="unknown kind 'lbfgs'"):
        resolve_phases(train, [{"name": "x", "epochs": 1, "kind": "lbfgs"}])


def test_apply_phase_sets_exactly_what_trains():
    model = build_detector(trial_defaults.make_trial({k: "/x" for k in PATH_KEYS}, "/tmp/unused"), 2, [1, 1])
    params = apply_phase(model, PhaseConfig(name="p", epochs=1, trainable=("head",), frozen=("head.box_subnet",)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") and not n.startswith("head.box_subnet.") for n in trainable)
    assert len(params) == len(trainable)
    assert any(n.startswith("head.box_out") for n in trainable)  # a prefix matches whole name parts only
    message = r"'hed' names no parameters of the model; did you mean 'head'\? \(at that depth: backbone, head\)"
    with pytest.raises(ValueError, match=message):
        apply_phase(model, PhaseConfig(name="p", epochs=1, trainable=("hed",)))
    with pytest.raises(ConfigError, match="fits no phase itself") as info:  # RetinaNet has no fit_phase
        check_phase_parts({"name": "retinanet"}, [{"name": "p", "epochs": 1, "kind": "fit"}])
    assert info.value.loc == ("train", "phases", 0, "kind")


def test_two_phases_freeze_what_they_say_and_count_their_losses(tmp_path):
    trial = make_trial(tmp_path, SMALL, phases=TWO_PHASES)
    seed_everything(0)
    initial = build_detector(trial, 5, [1] * 5).state_dict()  # run_trial builds the same model from seed 0
    reports = []
    final = run_trial(trial, lambda m, c: reports.append((m, c)))
    epochs = [m for m, _ in reports[:-1]]
    assert [(m["phase"], m["epoch"]) for m in epochs] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    steps = [m["step"] for m in epochs]
    assert steps == sorted(set(steps)) and steps[-1] == final["step"] == 4 * 3  # 12 images / batch 4, 4 epochs
    # Phase "head" counts only loss_cls: the weighted total is that loss alone.
    for m in epochs[:2]:
        assert m["train/loss"] == pytest.approx(m["train/loss_cls"])
        assert m["train/loss"] != pytest.approx(m["train/loss_cls"] + m["train/loss_box"])
    # After phase "head" the backbone is bit-identical to its initialisation (batch-norm
    # statistics too: frozen layers run in eval mode), the head is not.
    after_head = load_checkpoint(reports[1][1])["model"]
    assert load_checkpoint(reports[1][1])["phase"] == 0
    for name, value in initial.items():
        if name.startswith("backbone."):
            assert torch.equal(after_head[name], value), name
    assert not torch.equal(after_head["head.cls_out.weight"], initial["head.cls_out.weight"])
    final_weights = torch.load(os.path.join(trial["trial_dir"], "final", "model.pt"), weights_only=True)
    assert not torch.equal(final_weights["backbone.body.body.layer1.0.weight"],
                           initial["backbone.body.body.layer1.0.weight"])
    assert set(final) >= {"train/time_s/head", "train/time_s/all"}


@pytest.mark.parametrize("stop_after", [1, 2], ids=["at-phase-end", "mid-phase"])
def test_resume_continues_in_the_right_phase_bit_identically(tmp_path, stop_after):
    trial = make_trial(tmp_path, SMALL, phases=[{"name": "head", "epochs": 2, "trainable": ["head"]},
                                                {"name": "all", "epochs": 3, "lr": 2e-3}])
    run_trial(trial)
    straight = torch.load(os.path.join(trial["trial_dir"], "final", "model.pt"), weights_only=True)

    trial2 = dict(trial, trial_dir=str(tmp_path / "trial2"))
    seen = []

    def stop(metrics, ckpt):
        seen.append(ckpt)
        if len(seen) > stop_after:  # epochs 0..stop_after done, then "killed"
            raise Interrupt

    with pytest.raises(Interrupt):
        run_trial(trial2, stop)
    state = load_checkpoint(seen[-1])
    # epoch 1 is phase "head"'s last (the next run starts phase "all" afresh); epoch 2 is
    # the first of "all" (the next run continues it, optimizer and schedule included).
    assert (state["phase"], state["phase_epoch"]) == ((0, 1) if stop_after == 1 else (1, 0))
    resumed_reports = []
    run_trial(trial2, lambda m, c: resumed_reports.append(m), resume_from=seen[-1])
    assert [m["epoch"] for m in resumed_reports[:-1]] == list(range(stop_after + 1, 5))
    resumed = torch.load(os.path.join(trial2["trial_dir"], "final", "model.pt"), weights_only=True)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
