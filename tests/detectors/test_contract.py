"""Every registered detector's declarations hold against what it really does."""
import itertools

import pytest
import torch

from detectors.build import (active_loss_names, build_detector, check_components, check_loss_weights,
                             loss_names, loss_roles, primary_role, resolve_losses)
from detectors.losses import l1_loss, smooth_l1_loss
from detectors.models import MODELS
from detectors.registry import ConfigError, Registry

from detectors.train.trial import make_trial

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


def _trial(name, params=None, loss=None, losses=None):
    trial = make_trial(PATHS, "/tmp/unused", detector={"name": name, "params": params or {}}, losses=losses)
    trial["loss"] = loss  # None: the primary role's default
    return trial


def _batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=g), torch.rand(3, 96, 96, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 90.0, 44.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[30.0, 30.0, 70.0, 80.0]]), "labels": torch.tensor([1])}]
    return images, targets


def _configs(name):
    """Parameter sets that change what a detector returns: every quality x box of ``dense``
    (its presets share its code: their defaults are enough), every training scheme of
    ``faster_rcnn`` with and without FPN, both classifiers of ``rcnn``."""
    if name == "faster_rcnn":
        return [{"training": t, "fpn": f} for t, f in itertools.product(
            ("alternating", "approximate_joint", "non_approximate_joint"), (False, True))]
    if name == "rcnn":
        return [{"classifier": "svm"}, {"classifier": "softmax"}]
    if name != "dense":
        return [{}]
    return [{"quality": q, "box": b} for q, b in itertools.product(
        ("none", "centerness", "iou", "joint"), ("dirac", "gaussian", "general", "general_dfl"))]


def test_every_detector_declares_its_contract():
    assert len(MODELS.names()) >= 5
    for name in MODELS:
        entry = MODELS.entry(name)
        assert entry.params, name
        roles = loss_roles(name)
        assert roles and primary_role(name) in roles
        assert all(isinstance(r.registry, Registry) for r in roles.values())
        assert all(n.startswith("loss_") for n in loss_names(name))
        for param in entry.params.values():  # every default fits its own declaration
            assert param.check(param.default) == param.default or param.default is None, (name, param.name)
        # no injected argument (num_classes, <role>_loss, ...) leaks into the study parameters
        assert not {"num_classes", "scale", "nms_iou"} & set(entry.params)
        assert not {f"{r}_loss" for r in roles} & set(entry.params)


@pytest.mark.parametrize("name", MODELS.names())
def test_declared_loss_names_are_what_forward_returns(name):
    images, targets = _batch()
    for params in _configs(name):
        loss = {"name": "qfl", "params": {}} if params.get("quality") == "joint" else None
        torch.manual_seed(0)
        model = build_detector(_trial(name, params, loss), num_classes=3, class_counts=[2, 1, 1])
        model.train()
        out = model(images, targets)
        assert tuple(out) == active_loss_names(name, params), (name, params)
        assert set(out) <= set(loss_names(name))
        assert all(torch.isfinite(v) for v in out.values())


def test_roles_default_and_can_be_set():
    # RetinaNet's box role defaults to smooth L1 with beta 1/9 (Detectron2's RetinaNet)...
    model = build_detector(_trial("retinanet", loss={"name": "focal", "params": {"gamma": 2.0}}), 3, [1, 1, 1])
    assert model.box_loss.func is smooth_l1_loss and model.box_loss.keywords == {"beta": 1.0 / 9}
    assert model.cls_loss.keywords == {"gamma": 2.0}
    # ...and `losses: {box: {name: l1}}` swaps it without touching the classification loss.
    model = build_detector(_trial("retinanet", losses={"box": {"name": "l1"}}), 3, [1, 1, 1])
    assert model.box_loss.func is l1_loss
    assert resolve_losses("retinanet", None, {})["cls"] == {"name": "focal", "params": {}}
    # inverse_frequency alpha is resolved from the class counts when the model is built:
    # counts (3, 1) -> frequencies (0.75, 0.25) -> w = (2/3, 2), normalised so 0.75 w0 + 0.25 w1 = 1.
    model = build_detector(_trial("retinanet", loss={"name": "balanced_ce", "params": {"alpha": "inverse_frequency"}}),
                           2, [3, 1])
    assert model.cls_loss.keywords["alpha"] == pytest.approx([2 / 3, 2.0], rel=1e-5)  # eps 1e-6 in 1 / (f + eps)


def test_component_errors_name_the_key():
    with pytest.raises(ConfigError) as info:
        check_components({"name": "retinanet"}, None, {"rpn_box": {"name": "l1"}})
    assert info.value.loc == ("losses", "rpn_box") and "its loss roles: cls, box" in info.value.msg
    with pytest.raises(ConfigError, match="already set by the 'loss' section"):
        check_components({"name": "retinanet"}, {"name": "focal"}, {"cls": {"name": "ce"}})
    with pytest.raises(ConfigError) as info:
        check_components({"name": "retinanet"}, None, {"box": {"name": "focal"}})
    assert info.value.loc == ("losses", "box", "name") and "unknown box loss 'focal'" in info.value.msg
    with pytest.raises(ConfigError) as info:
        check_components({"name": "retinanet", "params": {"pos_iou": 0.3, "neg_iou": 0.4}}, None, {})
    assert "must not exceed" in info.value.msg
    with pytest.raises(ConfigError, match="use the 'qfl'"):
        check_components({"name": "gfl"}, {"name": "focal"}, {})
    with pytest.raises(ConfigError) as info:
        check_loss_weights("retinanet", {"cls": 1.0, "dfl": 0.25})
    assert info.value.loc == ("train", "loss_weights", "dfl") and "its losses: cls, box" in info.value.msg
    check_loss_weights("gfl", {"cls": 1.0, "box": 2.0, "dfl": 0.25})


# Each detector's test NMS IoU, its paper's (or reference code's): RetinaNet 0.5 (Detectron), GFL /
# ATSS / FCOS 0.6, SSD 0.45, YOLOv1 0.5 (darknet's validate_yolo), R-CNN / Fast / Faster R-CNN 0.3
# (their reference code's TEST.NMS).
PAPER_NMS = {"retinanet": 0.5, "dense": 0.6, "gfl": 0.6, "atss": 0.6, "fcos": 0.6, "ssd": 0.45, "yolov1": 0.5,
             "rcnn": 0.3, "fast_rcnn": 0.3, "faster_rcnn": 0.3}


def _nms_iou(model):
    return getattr(model, "roi_heads", model).nms_iou  # Fast / Faster R-CNN keep it in their region stage


def test_test_nms_is_each_detectors_own_unless_the_study_sets_one():
    assert set(PAPER_NMS) == set(MODELS.names())
    for name, iou in PAPER_NMS.items():
        trial = _trial(name)
        assert trial["eval"]["nms_iou"] is None  # the default: nothing injected
        assert _nms_iou(build_detector(trial, num_classes=3, class_counts=[1, 1, 1])) == iou, name
    for name in ("faster_rcnn", "retinanet"):
        trial = _trial(name)
        trial["eval"]["nms_iou"] = 0.45  # a study's eval.nms_iou: every detector takes it
        assert _nms_iou(build_detector(trial, num_classes=3, class_counts=[1, 1, 1])) == 0.45
