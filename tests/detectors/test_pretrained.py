"""Pretrained backbones: a file's weights reach exactly the backbone, the asked stages stay frozen
through a step, a wrong file is one clear error, and the pretraining stage runs once per settings."""
import os

import pytest
import torch
from torchvision.models import resnet50
from torchvision.ops.misc import FrozenBatchNorm2d

from detectors.build import build_detector, check_backbone
from detectors.config import PretrainConfig, TrialConfig
from detectors.data.resolve import PATH_KEYS
from detectors.models.pretrained import find_bodies
from detectors.registry import ConfigError
from detectors.train.phases import apply_phase, resolve_phases
from detectors.train.pretrain import ensure_pretrained, read_meta
from detectors.train.trial import make_trial

PATHS = {k: f"/data/{k}" for k in PATH_KEYS}
SMALL_PRETRAIN = {"images": 48, "epochs": 1, "batch_size": 16}


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory):
    """What torchvision's ResNet-50 saves, with recognisable values: every float tensor filled with
    its own index / 1000, so a loaded tensor shows which key it came from."""
    torch.manual_seed(0)
    state = resnet50(weights=None).state_dict()
    for i, v in enumerate(state.values()):
        if v.is_floating_point():
            v.fill_(i / 1000.0)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(state, path)
    return str(path), state


def _paper_trial(name, weights, params=None, **backbone):
    detector = {"name": name, "scale": "paper", "params": params or {},
                "backbone": {"weights": weights, **backbone}}
    return make_trial(PATHS, "/tmp/unused", detector=detector, loss={"name": "softmax_ce"} if "rcnn" in name else None)


@pytest.mark.parametrize("name,params,body", [
    ("retinanet", {"min_size": 128, "max_size": 128}, "backbone.body.body."),
    ("faster_rcnn", {"min_size": 128, "max_size": 128}, "backbone.body."),
])
def test_a_resnet50_file_loads_into_paper_scale_with_exactly_the_frozen_stages(resnet_file, name, params, body):
    path, state = resnet_file
    trial = _paper_trial(name, path, params, freeze_at=2, norm="frozen")
    if name == "retinanet":
        trial["loss"] = {"name": "focal", "params": {"gamma": 2.0, "alpha": 0.25}}
    model = build_detector(trial, 3, [1, 1, 1])
    assert find_bodies(model, "resnet50") == [body]
    sd = model.state_dict()
    # every weight of the body is the file's (layer3.0.conv1.weight came from its own key)
    assert torch.equal(sd[body + "layer3.0.conv1.weight"], state["layer3.0.conv1.weight"])
    assert torch.equal(sd[body + "bn1.running_var"], state["bn1.running_var"])
    # freeze_at 2 = the stem (conv1, bn1) and layer1, as Detectron2's FREEZE_AT=2 and torchvision's
    # trainable_backbone_layers=3; every batch norm of the body is frozen (no parameters left)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in model.named_parameters()
                      if n.startswith((body + "conv1.", body + "layer1."))}
    assert all(isinstance(m, FrozenBatchNorm2d) for n, m in model.named_modules()
               if n.startswith(body) and "bn" in n.rsplit(".", 1)[-1])
    # a phase that trains everything still leaves them frozen
    (phase,) = resolve_phases(TrialConfig.from_dict(trial).train)
    params_trained = apply_phase(model, phase)
    assert not frozen & {n for n, p in model.named_parameters() if p.requires_grad}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 70.0, 90.0]]), "labels": torch.tensor([1])}]
    loss = sum(model([torch.rand(3, 128, 128)], targets).values())
    optimizer = torch.optim.SGD(params_trained, lr=0.1)
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    for key in (body + "conv1.weight", body + "layer1.0.conv1.weight", body + "bn1.running_mean",
                body + "layer3.0.bn1.running_var", body + "layer3.0.bn1.weight"):
        assert torch.equal(before[key], after[key]), key  # frozen weights and batch-norm statistics
    assert not torch.equal(before[body + "layer3.0.conv1.weight"], after[body + "layer3.0.conv1.weight"])


def test_norm_train_and_freeze_at_zero_train_the_whole_body(resnet_file):
    path, _ = resnet_file
    trial = _paper_trial("faster_rcnn", path, {"min_size": 128, "max_size": 128}, freeze_at=0, norm="train")
    model = build_detector(trial, 3, [1, 1, 1])
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("mutate,message", [
    (lambda s: s.pop("layer2.0.conv1.weight"), "a resnet50 state dict without 'layer2.0.conv1.weight'"),
    (lambda s: s.update(extra=torch.zeros(1)), "unexpected key 'extra' for a resnet50 state dict"),
    (lambda s: s.update({"layer1.0.conv1.weight": torch.zeros(3, 3)}),
     r"'layer1.0.conv1.weight' has shape \[3, 3\]; resnet50 expects \[64, 64, 1, 1\]"),
])
def test_a_wrong_file_is_one_line_naming_the_file_and_key(resnet_file, tmp_path, mutate, message):
    _, state = resnet_file
    state = dict(state)
    mutate(state)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError, match=f"^{path}: {message}$") as info:
        check_backbone({"name": "retinanet", "scale": "paper", "backbone": {"weights": str(path)}})
    assert info.value.loc == ("detector", "backbone", "weights")


def test_files_that_are_no_weights_and_weights_that_fit_no_backbone(resnet_file, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a tensor file")
    with pytest.raises(ConfigError, match=f"^{text}: "):
        check_backbone({"name": "retinanet", "scale": "paper", "backbone": {"weights": str(text)}})
    with pytest.raises(ConfigError, match="no such file"):
        check_backbone({"name": "retinanet", "backbone": {"weights": str(tmp_path / "missing.pth")}})
    # ResNet-50 weights into the tiny RetinaNet (its body is the tiny one)
    with pytest.raises(ConfigError, match="resnet50 weights fit no backbone of detector 'retinanet' at scale 'tiny'"):
        check_backbone({"name": "retinanet", "scale": "tiny", "backbone": {"weights": resnet_file[0]}})
    with pytest.raises(ConfigError, match="pretrains the tiny body"):
        check_backbone({"name": "retinanet", "scale": "paper", "backbone": {"weights": "pretrain"}})


def test_the_pretraining_stage_runs_once_and_every_tiny_detector_loads_it(tmp_path):
    settings = PretrainConfig(**SMALL_PRETRAIN)
    seen = []
    path = ensure_pretrained(settings, str(tmp_path), seen.append)
    assert [f["epoch"] for f in seen] == [1]  # 1 epoch, reported once
    stamp = os.stat(path).st_mtime_ns
    assert ensure_pretrained(settings, str(tmp_path), seen.append) == path and len(seen) == 1  # a cache hit
    assert os.stat(path).st_mtime_ns == stamp
    assert read_meta(path)["train_images"] == 48 and 0.0 <= read_meta(path)["val_accuracy"] <= 1.0
    saved = torch.load(path, weights_only=True)
    for name in ("retinanet", "gfl", "ssd", "yolov1", "fast_rcnn", "faster_rcnn", "rcnn"):
        trial = make_trial(PATHS, str(tmp_path / "t"), detector={
            "name": name, "backbone": {"weights": "pretrain", "pretrain": SMALL_PRETRAIN}})
        trial["loss"] = None  # each detector's own default losses
        trial["dataset"]["cache_dir"] = str(tmp_path)
        model = build_detector(trial, 5, [1] * 5)
        (body,) = find_bodies(model, "tiny") if name != "faster_rcnn" else find_bodies(model, "tiny")[:1]
        assert torch.equal(model.state_dict()[body + "layer2.0.0.weight"], saved["layer2.0.0.weight"]), name


def test_alternating_training_starts_both_backbones_from_the_same_weights(tmp_path):
    ensure_pretrained(PretrainConfig(**SMALL_PRETRAIN), str(tmp_path))
    trial = make_trial(PATHS, str(tmp_path / "t"), loss={"name": "softmax_ce"}, detector={
        "name": "faster_rcnn", "params": {"training": "alternating"},
        "backbone": {"weights": "pretrain", "pretrain": SMALL_PRETRAIN}})
    trial["dataset"]["cache_dir"] = str(tmp_path)
    model = build_detector(trial, 5, [1] * 5)
    assert find_bodies(model, "tiny") == ["backbone.body.", "rpn_backbone.body."]
    sd = model.state_dict()
    assert torch.equal(sd["backbone.body.layer3.0.0.weight"], sd["rpn_backbone.body.layer3.0.0.weight"])
    assert model.backbone.body.layer3[0][0].weight is not model.rpn_backbone.body.layer3[0][0].weight  # two copies
