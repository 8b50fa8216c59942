"""The configurable dense detector (FCOS / ATSS / IoU-aware / GFL heads): every switch trains a step,
evaluates, and a short training lowers each of its losses."""
import copy
import json
import math
from functools import partial

import pytest
import torch

from detectors.losses import CLS_LOSSES, quality_focal_loss
from detectors.models import MODELS
from detectors.evaluation.diagnostics import score_iou_diagnostics
from detectors.models.box_repr import make_box_representation
from detectors.models.dense_heads import centerness_target

# (quality, box, assigner, cls loss) -> the losses the model must return
CONFIGS = [
    (("joint", "general_dfl", "atss", "qfl"), {"loss_cls", "loss_box", "loss_dfl"}),
    (("centerness", "dirac", "fcos", "focal"), {"loss_cls", "loss_box", "loss_quality"}),
    (("iou", "gaussian", "max_iou", "focal"), {"loss_cls", "loss_box", "loss_nll", "loss_quality"}),
    (("none", "general", "atss", "focal"), {"loss_cls", "loss_box"}),
    (("joint", "dirac", "fcos", "ce"), {"loss_cls", "loss_box"}),
    (("centerness", "general_dfl", "max_iou", "balanced_ce"), {"loss_cls", "loss_box", "loss_dfl", "loss_quality"}),
]


def _build(quality, box, assigner, loss, **kw):
    return MODELS.build("dense", num_classes=3, scale="tiny", cls_loss=CLS_LOSSES.get(loss),
                        quality=quality, box=box, assigner=assigner, **kw)


def _data():
    """Two 128 px images with bright class-coloured rectangles on dim noise."""
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=g) * 0.3 for _ in range(2)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [60.0, 60.0, 100.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.tensor([[20.0, 30.0, 70.0, 60.0], [80.0, 10.0, 120.0, 56.0], [5.0, 80.0, 30.0, 120.0]]),
         "labels": torch.tensor([1, 0, 2])},
    ]
    for img, t in zip(images, targets):
        for (x1, y1, x2, y2), label in zip(t["boxes"].int().tolist(), t["labels"].tolist()):
            img[label, y1:y2, x1:x2] = 1.0
    return images, targets


def _check_detections(out, n_images, num_classes, h, w):
    assert len(out) == n_images
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,) and det["labels"].dtype == torch.int64
        assert n <= 100
        if n:
            assert (det["boxes"][:, 2:] >= det["boxes"][:, :2]).all()
            assert det["boxes"].min() >= 0
            assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3
            assert det["labels"].min() >= 0 and det["labels"].max() < num_classes
            assert ((det["scores"] > 0) & (det["scores"] <= 1)).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()


@pytest.mark.parametrize("config,names", CONFIGS, ids=["-".join(c) for c, _ in CONFIGS])
def test_train_step_finite_and_eval_well_formed(config, names):
    torch.manual_seed(0)
    model = _build(*config)
    images, targets = _data()
    model.train()
    losses = model(images, targets)
    assert set(losses) == names
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        _check_detections(model(images), 2, 3, 128, 128)
        # Scores low enough to pass any threshold: candidates exist and decode to valid boxes.
        model.score_thresh = 0.0
        _check_detections(model([images[0][:, :96, :]]), 1, 3, 96, 128)


@pytest.mark.parametrize("config", [c for c, _ in CONFIGS[:3]], ids=lambda c: "-".join(c))
def test_image_without_objects_gives_only_classification_loss(config):
    model = _build(*config)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model([torch.rand(3, 128, 128)], empty)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(v.item() == 0.0 for k, v in losses.items() if k != "loss_cls")
    sum(losses.values()).backward()


@pytest.mark.parametrize("config", [c for c, _ in CONFIGS[:3]], ids=lambda c: "-".join(c))
def test_short_training_lowers_each_loss(config):
    torch.manual_seed(0)
    model = _build(*config)
    start = copy.deepcopy(model)
    images, targets = _data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    history = []
    for _ in range(30):
        losses = model(images, targets)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        history.append({k: v.item() for k, v in losses.items()})
    for name in history[0]:
        if name == "loss_cls" and config[0] == "joint":
            continue  # its targets are the IoUs, which rise as the boxes improve: compared below
        first = sum(h[name] for h in history[:3]) / 3
        last = sum(h[name] for h in history[-3:]) / 3
        assert last < first, (name, first, last)
    if config[0] == "joint":
        # QFL at the final soft targets: lower for the trained scores than for the initial ones.
        # (ATSS does not look at predictions, so both models see the same locations in the same order.)
        logits, soft = model.classification_terms(images, targets)
        logits0, _ = start.train().classification_terms(images, targets)
        assert soft.max() > 0.5  # the boxes did improve
        assert quality_focal_loss(logits, soft, reduction="sum") < quality_focal_loss(logits0, soft, reduction="sum")


def test_score_iou_pairs_and_classification_terms():
    torch.manual_seed(0)
    images, targets = _data()
    for config, soft in ((("joint", "general_dfl", "atss", "qfl"), True), (("iou", "dirac", "atss", "focal"), False)):
        model = _build(*config).eval()
        pairs = model.score_iou_pairs(images, targets)
        n = pairs["score"].shape[0]
        assert n > 0 and pairs["iou"].shape == (n,) and pairs["label"].shape == (n,)
        assert ((pairs["score"] >= 0) & (pairs["score"] <= 1)).all()
        assert ((pairs["iou"] >= 0) & (pairs["iou"] <= 1)).all()
        logits, tgt = model.classification_terms(images, targets)
        assert logits.shape == tgt.shape and logits.shape[1] == 3
        assert int((tgt.sum(1) > 0).sum()) == n  # one positive row per pair (IoUs here are > 0)
        if soft:  # the joint targets are exactly the pairs' IoUs
            assert torch.allclose(tgt[tgt > 0].sort().values, pairs["iou"].sort().values)
        else:
            assert set(tgt.unique().tolist()) == {0.0, 1.0}


def test_score_iou_diagnostics_is_json_able():
    torch.manual_seed(0)
    images, targets = _data()
    model = _build("joint", "general_dfl", "atss", "qfl")
    out = score_iou_diagnostics(model, list(zip(images, targets)), batch_size=2, device="cpu", max_points=7, bins=4)
    json.dumps(out, allow_nan=False)
    assert out["images"] == 2 and out["num_positive"] > 7
    assert len(out["points"]["score"]) == len(out["points"]["iou"]) == 7
    assert out["binned"]["iou_bin_centre"] == [0.125, 0.375, 0.625, 0.875]
    assert len(out["binned"]["mean_score"]) == 4
    assert out["pearson"] is None or -1 <= out["pearson"] <= 1


def test_presets_builder_signature_and_errors():
    params = MODELS.parameters("dense")
    assert {"quality", "box", "assigner", "reg_max", "bin_width", "anchor_scale", "atss_topk",
            "center_radius"} <= set(params)
    defaults = (params["quality"].default, params["box"].default, params["assigner"].default)
    assert defaults == ("joint", "general_dfl", "atss")
    assert params["reg_max"].default == 16 and params["bin_width"].default == 1.0
    assert "nms_iou" not in params and "cls_loss" not in params  # injected by the training code, not study params
    for name, expected in (("gfl", ("joint", "general_dfl", "atss")), ("atss", ("centerness", "dirac", "atss")),
                           ("fcos", ("centerness", "dirac", "fcos"))):
        p = MODELS.parameters(name)
        assert (p["quality"].default, p["box"].default, p["assigner"].default) == expected
        assert set(p) == set(params)
    model = MODELS.build("fcos", num_classes=2, cls_loss=partial(CLS_LOSSES.get("focal"), gamma=2.0, alpha=0.25))
    # The names pick injected parts: a Dirac box representation and the FCOS assignment rule.
    assert (model.quality, model.box_repr.name, model.assigner.func.__name__) == ("centerness", "dirac", "_fcos")
    assert MODELS.build("gfl", num_classes=2, reg_max=8).head.box_out.out_channels == 4 * 9
    # One square anchor per location: 16x16 + 8x8 + 4x4 + 2x2 + 1x1 = 341 at 128 px.
    assert model.anchor_generator.num_anchors_per_location() == [1] * 5
    with pytest.raises(ValueError, match="qfl"):
        MODELS.build("gfl", num_classes=2, cls_loss=partial(CLS_LOSSES.get("focal"), gamma=2.0))
    with pytest.raises(ValueError, match="unknown quality 'ctr'"):
        MODELS.build("dense", num_classes=2, quality="ctr")
    with pytest.raises(ValueError, match="unknown box representation"):
        MODELS.build("dense", num_classes=2, box="gauss")
    with pytest.raises(ValueError, match="needs targets"):
        MODELS.build("dense", num_classes=2)([torch.rand(3, 64, 64)])


def test_paper_scale_gfl_builds_and_runs_a_step():
    torch.manual_seed(0)
    # Small input sizes keep it cheap; the architecture is the paper's.
    model = MODELS.build("gfl", num_classes=80, scale="paper", min_size=128, max_size=160)
    # ResNet-50 without fc 23.5M + FPN with P6/P7 3.9M + 2 towers x 4 x conv3x3(256) 4.7M
    # + outputs 256*9*(80 + 4*17) = 0.34M: 32.4M.
    n_params = sum(p.numel() for p in model.parameters())
    assert 32.0e6 < n_params < 33.0e6
    assert len(model.head.cls_tower) == 12  # 4 x (conv, GN, relu)
    images, targets = _data()
    losses = model(images[:1], targets[:1])
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        _check_detections(model(images[:1]), 1, 80, 128, 128)


def test_head_target_and_decoding_helpers():
    # Centerness of sides (1, 2, 3, 4): sqrt(min(1,3)/max(1,3) * min(2,4)/max(2,4)) = sqrt(1/6) = 0.408248;
    # at the centre (2, 2, 2, 2): 1; outside the box (a negative side): 0.
    ctr = centerness_target(torch.tensor([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 2.0, 3.0, 2.0]]))
    assert ctr.tolist() == pytest.approx([math.sqrt(1 / 6), 1.0, 0.0], abs=1e-6)
    # Representations: Dirac is the ReLU'd value; general the expectation over bins * Delta.
    raw = torch.tensor([[1.5, -2.0, 0.0, 3.0]])
    assert make_box_representation("dirac").distances(raw).tolist() == [[1.5, 0.0, 0.0, 3.0]]
    one_hot = torch.full((1, 4, 5), float("-inf"))
    one_hot[0, torch.arange(4), torch.tensor([0, 1, 3, 4])] = 0.0
    assert make_box_representation("general", 4, 0.5).distances(one_hot.flatten(1)).tolist() == [[0.0, 0.5, 1.5, 2.0]]
