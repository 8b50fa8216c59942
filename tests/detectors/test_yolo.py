"""YOLOv1: grid targets, the responsible predictor, the sum-squared loss by hand, a step, eval, a short training."""
import math

import pytest
import torch

from detectors.build import check_components, default_loss_weights
from detectors.models import MODELS
from detectors.models.yolo import decode_boxes, encode_targets, responsible_predictor
from detectors.registry import ConfigError
from one_stage_helpers import check_detections, drawn_set, train_steps


def test_target_encoding_picks_the_centre_cell_and_the_largest_box():
    # 128 px, S = 4: 32 px cells. Box A [40, 8, 72, 40]: centre (56, 24) -> column 56 // 32 = 1,
    # row 24 // 32 = 0; offsets 56/32 - 1 = 0.75 and 24/32 - 0 = 0.75; width and height
    # 32/128 = 0.25 -> square roots 0.5. Box B [44, 16, 60, 28] (centre (52, 22)) falls into
    # the same cell but is smaller (16 x 12 = 192 < 1024 px^2): A keeps the cell.
    # Box C [96, 64, 128, 128] class 2: centre (112, 96) -> cell (row 3, col 3); offsets
    # 0.5 and 0.0; sqrt(32/128) = 0.5, sqrt(64/128) = 0.7071.
    boxes = torch.tensor([[40.0, 8, 72, 40], [44, 16, 60, 28], [96, 64, 128, 128]])
    enc = encode_targets(boxes, torch.tensor([0, 1, 2]), 128.0, 128.0, S=4, num_classes=3)
    assert enc["obj"].nonzero().tolist() == [[0, 1], [3, 3]]
    assert torch.allclose(enc["box"][0, 1], torch.tensor([0.75, 0.75, 0.5, 0.5]))
    assert torch.allclose(enc["box"][3, 3], torch.tensor([0.5, 0.0, 0.5, math.sqrt(0.5)]))
    assert enc["cls"][0, 1].tolist() == [1, 0, 0] and enc["cls"][3, 3].tolist() == [0, 0, 1]
    assert enc["gt"][0, 1].tolist() == [40, 8, 72, 40]
    # decoding the targets gives the boxes back
    raw = enc["box"][:, :, None]  # B = 1
    assert torch.allclose(decode_boxes(raw, 128.0, 128.0)[0, 1, 0], boxes[0])
    assert torch.allclose(decode_boxes(raw, 128.0, 128.0)[3, 3, 0], boxes[2])
    # no ground truth: no object anywhere
    empty = encode_targets(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 128.0, 128.0, 4, 3)
    assert not empty["obj"].any()


def test_the_responsible_predictor_has_the_highest_iou():
    gt = torch.zeros(1, 2, 4)
    gt[0, 0] = torch.tensor([40.0, 8, 72, 40])
    gt[0, 1] = torch.tensor([0.0, 0, 10, 10])
    pred = torch.zeros(1, 2, 2, 4)
    # cell 0: predictor 0 shifted by 8 px (IoU 24*32 / (2*1024 - 768) = 0.6), predictor 1 exact (IoU 1)
    pred[0, 0, 0] = torch.tensor([48.0, 8, 80, 40])
    pred[0, 0, 1] = torch.tensor([40.0, 8, 72, 40])
    # cell 1: neither overlaps (both IoU 0): the tie goes to predictor 0
    pred[0, 1, 0] = torch.tensor([50.0, 50, 60, 60])
    pred[0, 1, 1] = torch.tensor([70.0, 70, 80, 80])
    resp, iou = responsible_predictor(pred, gt)
    assert resp.tolist() == [[1, 0]]
    assert torch.allclose(iou[0, 0], torch.tensor([0.6, 1.0]), atol=1e-5)


def test_the_loss_by_hand():
    # 64 px image, S = 2 (32 px cells), B = 2, C = 2. One object [0, 0, 32, 32] of class 1:
    # cell (0, 0), target (x, y, sqrt w, sqrt h) = (0.5, 0.5, sqrt(0.5), sqrt(0.5)).
    torch.manual_seed(0)
    model = MODELS.build("yolov1", num_classes=2, grid_size=2, boxes_per_cell=2)
    out = torch.zeros(1, 2, 2, 12)
    s = math.sqrt(0.5)
    out[0, 0, 0, 0:5] = torch.tensor([0.6, 0.5, s, s, 0.8])   # predictor 0: centre 0.1 cell to the right
    out[0, 0, 0, 5:10] = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.3])  # predictor 1: a 16 px box [8, 8, 24, 24]
    out[0, 0, 0, 10:12] = torch.tensor([0.2, 0.6])           # class probabilities
    out[0, 1, 1, 4] = 0.4                                    # a confidence in an empty cell
    targets = [{"boxes": torch.tensor([[0.0, 0, 32, 32]]), "labels": torch.tensor([1])}]
    losses = model.compute_loss(out, targets, (64, 64))
    # predictor 0's box [3.2, 0, 35.2, 32]: IoU = 28.8*32 / (2*1024 - 921.6) = 921.6 / 1126.4 = 0.818182;
    # predictor 1's IoU = 256 / 1024 = 0.25 -> predictor 0 is responsible.
    iou = 921.6 / 1126.4
    assert losses["loss_box"].item() == pytest.approx(0.1 ** 2, abs=1e-6)          # (0.6 - 0.5)^2
    assert losses["loss_obj"].item() == pytest.approx((0.8 - iou) ** 2, abs=1e-6)  # 0.000331
    assert losses["loss_noobj"].item() == pytest.approx(0.3 ** 2 + 0.4 ** 2, abs=1e-6)  # 0.09 + 0.16
    assert losses["loss_cls"].item() == pytest.approx(0.2 ** 2 + 0.4 ** 2, abs=1e-6)    # 0.04 + 0.16
    # the paper's total with lambda_coord 5, lambda_noobj 0.5, the detector's declared weights:
    # 5 * 0.01 + 0.000331 + 0.5 * 0.25 + 0.2 = 0.375331
    w = default_loss_weights("yolov1")
    assert w == {"box": 5.0, "noobj": 0.5}
    total = sum(w.get(k.removeprefix("loss_"), 1.0) * v for k, v in losses.items())
    assert total.item() == pytest.approx(0.05 + (0.8 - iou) ** 2 + 0.125 + 0.2, abs=1e-6)


def test_train_step_eval_and_losses_it_accepts():
    torch.manual_seed(0)
    model = MODELS.build("yolov1", num_classes=3)
    images, targets = drawn_set(2)
    model.train()
    losses = model(images + [torch.rand(3, 96, 160)], targets + [{"boxes": torch.zeros(0, 4),
                                                                  "labels": torch.zeros(0, dtype=torch.long)}])
    assert set(losses) == {"loss_box", "loss_obj", "loss_noobj", "loss_cls"}
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    model.score_thresh = 0.0  # untrained scores are tiny: keep every candidate to check the format
    with torch.no_grad():
        out = model([images[0], torch.rand(3, 96, 160)])
    check_detections(out[:1], 1, 3, 128, 128)
    check_detections(out[1:], 1, 3, 96, 160)
    assert out[0]["boxes"].shape[0] > 0
    # the sigmoid / softmax losses are not YOLOv1's: one line before anything starts
    with pytest.raises(ConfigError) as info:
        check_components({"name": "yolov1"}, {"name": "focal"}, {})
    assert info.value.loc == ("loss", "name") and "unknown class-probability loss 'focal'" in info.value.msg
    assert "(known: sse)" in info.value.msg


def test_a_short_training_lowers_the_loss():
    torch.manual_seed(0)
    model = MODELS.build("yolov1", num_classes=2, dropout=0.0)
    images, targets = drawn_set(4)
    first, last = train_steps(model, images, targets, steps=25, weights=default_loss_weights("yolov1"))
    assert last["total"] < 0.2 * first["total"]
    # The confidence terms need not fall monotonically: their targets (the IoU, and which predictor
    # is responsible) move as the boxes improve. Box and class terms have fixed targets.
    for k in ("loss_box", "loss_cls"):
        assert last[k] < 0.2 * first[k], (k, first, last)


def test_paper_scale_is_7_by_7_by_30_at_448():
    # S = 7, B = 2, C = 20 (VOC): 7 x 7 x (2 * 5 + 20) = 1470 outputs from a 4096-wide layer (paper sec. 2)
    with torch.device("meta"):
        model = MODELS.build("yolov1", num_classes=20, scale="paper")
    assert model.head.fc[-1].out_features == 7 * 7 * 30 and model.head.fc[1].out_features == 4096
    assert model.transform.fixed_size == (448, 448)
