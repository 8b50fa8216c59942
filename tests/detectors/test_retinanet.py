"""RetinaNet: both scales build, train a step with finite losses, and give well-formed detections."""
import math
from functools import partial

import pytest
import torch

from detectors.losses import CLS_LOSSES
from detectors.models import MODELS
from detectors.models.retinanet import RetinaHead, retinanet_anchor_generator


def _targets(n):
    return [{"boxes": torch.tensor([[10.0, 12.0, 40.0, 50.0], [60.0, 60.0, 100.0, 90.0]]),
             "labels": torch.tensor([0, 2])} for _ in range(n)]


def _check_detections(out, n_images, num_classes, h, w):
    assert len(out) == n_images
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        n = det["boxes"].shape[0]
        assert det["boxes"].shape == (n, 4) and det["boxes"].dtype == torch.float32
        assert det["scores"].shape == (n,) and det["labels"].shape == (n,)
        assert n <= 100
        if n:
            assert (det["boxes"][:, 2] >= det["boxes"][:, 0]).all() and (det["boxes"][:, 3] >= det["boxes"][:, 1]).all()
            assert det["boxes"][:, 2].max() <= w + 1e-3 and det["boxes"][:, 3].max() <= h + 1e-3
            assert det["labels"].min() >= 0 and det["labels"].max() < num_classes
            assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted, as NMS returns them


@pytest.mark.parametrize("loss", ["ce", "balanced_ce", "focal"])
def test_tiny_train_step_and_eval(loss):
    torch.manual_seed(0)
    model = MODELS.build("retinanet", num_classes=3, scale="tiny", cls_loss=CLS_LOSSES.get(loss))
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    model.train()
    losses = model(images, _targets(2))
    assert set(losses) == {"loss_cls", "loss_box"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    # 128 px: P3-P7 (strides 8-128) have 16^2 + 8^2 + 4^2 + 2^2 + 1^2 = 341 locations, 9 anchors each = 3069
    assert model.train_figures["anchors_per_image"] == 3069
    assert 0 < model.train_figures["fg_fraction"] < 0.05  # a few dozen positives among ~6000 anchors
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        _check_detections(model(images), 2, 3, 128, 128)


def test_paper_scale_builds_and_runs_a_step():
    torch.manual_seed(0)
    model = MODELS.build("retinanet", num_classes=80, scale="paper",
                         cls_loss=partial(CLS_LOSSES.get("focal"), gamma=2.0, alpha=0.25))
    # ResNet-50-FPN with 4 x conv(256) heads: about 36M parameters (torchvision's
    # retinanet_resnet50_fpn has 34.0M with 91 classes and frozen stem; same order).
    n_params = sum(p.numel() for p in model.parameters())
    assert 30e6 < n_params < 40e6
    assert len(model.head.cls_subnet) == 8  # 4 x (conv, relu)
    images = [torch.rand(3, 240, 320)]
    model.train()
    losses = model(images, _targets(1))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        _check_detections(model(images), 1, 80, 240, 320)


def test_prior_probability_initialisation():
    # b = -log((1 - pi) / pi) = -log(99) = -4.595 for pi = 0.01 (paper sec. 4.1),
    # so every anchor starts at sigmoid(b) = 0.01 foreground probability.
    head = RetinaHead(16, 9, 4, width=16, num_convs=1, norm=None, prior_prob=0.01)
    assert torch.allclose(head.cls_out.bias, torch.full((36,), -math.log(99.0)))
    logits, deltas = head([torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 2, 2)])
    assert logits.shape == (1, (16 + 4) * 9, 4) and deltas.shape == (1, (16 + 4) * 9, 4)
    assert torch.allclose(torch.sigmoid(logits), torch.full_like(logits, 0.01), atol=1e-6)


def test_anchor_generator_has_three_scales_and_ratios_per_level():
    gen = retinanet_anchor_generator(4.0)
    assert gen.num_anchors_per_location() == [9] * 5
    # P3 anchors for the paper: 32 * (2^0, 2^(1/3), 2^(2/3)) = 32, 40.3, 50.8 px.
    assert gen.sizes[0] == pytest.approx((32.0, 40.3175, 50.7968), rel=1e-4)
    assert gen.sizes[4][0] == 512.0


def test_train_mode_without_targets_raises():
    model = MODELS.build("retinanet", num_classes=2, scale="tiny")
    with pytest.raises(ValueError, match="needs targets"):
        model([torch.rand(3, 64, 64)])


def test_image_without_objects_gives_only_background_loss():
    model = MODELS.build("retinanet", num_classes=2, scale="tiny")
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model([torch.rand(3, 128, 128)], empty)
    assert losses["loss_box"].item() == 0.0
    assert losses["loss_cls"].item() > 0.0


# Head shapes the study schema accepts that used to fail only in a worker: GroupNorm needs a
# group count dividing the width (18 channels: 4 groups of 4.5 before), and with no tower
# convs the output convs take the FPN's channels, not head_width (32 vs 16 before).
@pytest.mark.parametrize("name", ["retinanet", "gfl", "atss"])
@pytest.mark.parametrize("params", [{"head_width": 18, "head_norm": "gn"}, {"head_width": 33, "head_norm": "gn"},
                                    {"head_convs": 0, "head_width": 16}])
def test_head_shapes_validation_accepts_build_and_run(name, params):
    torch.manual_seed(0)
    assert MODELS.entry(name).check_params(params)  # in range: a study may ask for these
    model = MODELS.build(name, num_classes=3, scale="tiny", **params)
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    model.train()
    losses = model(images, _targets(2))
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        _check_detections(model(images), 2, 3, 128, 128)


def test_group_norm_groups_divide_the_width():
    from detectors.models.retinanet import gn_groups

    # min(32, width // 4), lowered to a divisor: 256 -> 32 (GFL/FCOS), 32 -> 8, 18 -> 4 -> 3, 33 -> 8 -> 3, 2 -> 1.
    assert [gn_groups(w) for w in (256, 32, 18, 33, 2)] == [32, 8, 3, 3, 1]
