"""Focal-loss Figure 4 diagnostics: the cumulative loss share curves and the easy-negative share."""
from functools import partial

import pytest
import torch

from detectors.data.coco import CocoDetection
from detectors.data.synthetic import generate
from detectors.evaluation.diagnostics import classification_loss_diagnostics, cumulative_share
from detectors.losses import CLS_LOSSES
from detectors.models import MODELS


def test_cumulative_share_known_answer():
    # losses 2, 1, 1 -> sorted 1, 1, 2, total 4 -> cumulative 0.25, 0.5, 1.0.
    # Three points at fractions 0, 0.5, 1: 0 by definition, then index round(0.5*2)=1 -> 0.5, index 2 -> 1.0.
    out = cumulative_share(torch.tensor([2.0, 1.0, 1.0]), points=3)
    assert out["fraction"] == [0.0, 0.5, 1.0]
    assert out["cumulative_loss"] == pytest.approx([0.0, 0.5, 1.0])


def test_cumulative_share_empty_is_flat_zero():
    assert cumulative_share(torch.zeros(0), points=4)["cumulative_loss"] == [0.0] * 4


def test_diagnostics_on_a_model_and_dataset(tmp_path):
    torch.manual_seed(0)
    paths = generate({"num_train": 4, "num_val": 4, "seed": 2}, str(tmp_path))
    val = CocoDetection(paths["val_images"], paths["val_annotations"])
    model = MODELS.build("retinanet", num_classes=5, scale="tiny",
                         cls_loss=partial(CLS_LOSSES.get("focal"), gamma=2.0, alpha=0.25))
    diag = classification_loss_diagnostics(model, val, batch_size=2, device="cpu")
    assert diag["images"] == 4 and diag["num_positive"] > 0
    # 128 px tiny RetinaNet: (16^2 + 8^2 + 4^2 + 2^2 + 1) * 9 = 3069 anchors per image, most negative.
    assert diag["num_positive"] + diag["num_negative"] <= 4 * 3069
    assert diag["num_negative"] > 10 * diag["num_positive"]
    for side in ("positive", "negative"):
        curve = diag[side]["cumulative_loss"]
        assert curve[-1] == pytest.approx(1.0)
        assert all(a <= b + 1e-6 for a, b in zip(curve, curve[1:]))
    # With the prior init every anchor starts at p = 0.01 < 0.1, so an untrained model's
    # negatives are all "easy": their share is the whole negative loss over the total.
    expected = diag["loss_negative"] / (diag["loss_negative"] + diag["loss_positive"])
    assert diag["easy_negative_share"] == pytest.approx(expected, rel=1e-5)
