"""SSD: default boxes, matching, 3:1 hard negative mining, softmax CE by hand, a step, eval, a short training;
and RetinaNet without its pyramid (the FPN ablation)."""
import math

import pytest
import torch
from torchvision.models.detection._utils import SSDMatcher
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from detectors.assigners import BACKGROUND
from detectors.losses import SOFTMAX_LOSSES, softmax_ce_loss
from detectors.models import MODELS
from detectors.models.ssd import default_box_scales, hard_negative_mining, paper_aspect_ratios
from one_stage_helpers import check_detections, drawn_set, train_steps


def test_softmax_ce_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
    # row 0: -log(1/3) = log 3 = 1.098612; row 1, class 2: -log(e^3 / (e + e^2 + e^3))
    # = log(1 + e^-1 + e^-2) = log(1.503215) = 0.407606
    loss = softmax_ce_loss(logits, torch.tensor([0, 2]))
    assert loss.tolist() == pytest.approx([math.log(3), 0.407606], abs=1e-5)
    assert softmax_ce_loss(logits, torch.tensor([0, 2]), "sum").item() == pytest.approx(1.506218, abs=1e-5)
    assert softmax_ce_loss(logits, torch.tensor([0, 2]), "mean").item() == pytest.approx(0.753109, abs=1e-5)
    # soft targets: (0.5, 0.5, 0) on row 0 is still log 3
    assert softmax_ce_loss(logits[:1], torch.tensor([[0.5, 0.5, 0.0]])).item() == pytest.approx(math.log(3), abs=1e-5)
    empty = softmax_ce_loss(torch.zeros(0, 3, requires_grad=True), torch.zeros(0, dtype=torch.long), "mean")
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="invalid reduction"):
        softmax_ce_loss(logits, torch.tensor([0, 2]), "avg")
    assert SOFTMAX_LOSSES.get("softmax_ce") is softmax_ce_loss


def test_default_boxes_have_the_papers_scales_and_ssd300_count():
    # SSD300: six maps 38, 19, 10, 5, 3, 1 with 4, 6, 6, 6, 4, 4 boxes per location:
    # 38^2*4 + 19^2*6 + 10^2*6 + 5^2*6 + 3^2*4 + 1*4 = 5776 + 2166 + 600 + 150 + 36 + 4 = 8732 (paper Table 3 note).
    ratios = paper_aspect_ratios(6, [2.0, 3.0])
    assert ratios == [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0], [2.0]]
    gen = DefaultBoxGenerator(ratios, min_ratio=0.2, max_ratio=0.9)
    assert gen.num_anchors_per_location() == [4, 6, 6, 6, 4, 4]
    # s_k = 0.2 + 0.7 (k - 1) / 5: 0.2, 0.34, 0.48, 0.62, 0.76, 0.9
    assert gen.scales[:6] == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9])
    images = ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)])
    feats = [torch.zeros(1, 1, s, s) for s in (38, 19, 10, 5, 3, 1)]
    boxes = gen(images, feats)[0]
    assert boxes.shape == (8732, 4)
    # the first box of the first map: ratio 1, scale 0.2 -> 60 x 60 px at the centre of cell (0, 0)
    w, h = boxes[0, 2] - boxes[0, 0], boxes[0, 3] - boxes[0, 1]
    assert w.item() == pytest.approx(60.0, abs=1e-3) and h.item() == pytest.approx(60.0, abs=1e-3)


def test_ssd300_scales_put_the_first_map_at_a_tenth():
    # SSD300 (sec. 3.1): conv4_3 at 0.1, the other five maps from 0.2 to 0.9 in steps of 0.7 / 4 = 0.175;
    # the trailing 1.0 only sizes the last map's extra box sqrt(0.9 * 1.0).
    assert default_box_scales(6, 0.2, 0.9, 0.1) == pytest.approx([0.1, 0.2, 0.375, 0.55, 0.725, 0.9, 1.0])
    # None: every map on the ramp, steps of 0.7 / 5 = 0.14 (torchvision's own estimate, this SSD before)
    today = default_box_scales(6, 0.2, 0.9, None)
    assert today == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    assert today == pytest.approx(DefaultBoxGenerator([[2.0]] * 6, min_ratio=0.2, max_ratio=0.9).scales)


def _first_boxes(model, size):
    """The default boxes of one ``size`` x ``size`` input, and the index where the second map begins."""
    x = torch.zeros(1, 3, size, size)
    feats = list(model.body(x).values())
    boxes = model.default_boxes(ImageList(x, [(size, size)]), feats)[0]
    h, w = feats[0].shape[-2:]
    return boxes, h * w * model.default_boxes.num_anchors_per_location()[0]


def test_the_first_map_has_boxes_of_a_tenth_of_the_input():
    model = MODELS.build("ssd", num_classes=2, input_size=300)
    boxes, second = _first_boxes(model, 300)
    sides = boxes[:, 2:] - boxes[:, :2]
    # first map, 4 boxes per location: 0.1 * 300 = 30 px; sqrt(0.1 * 0.2) * 300 = 42.43;
    # ratio 2: 30 * sqrt(2) = 42.43 wide by 30 / sqrt(2) = 21.21 high, and its transpose
    assert sides[:4].flatten().tolist() == pytest.approx([30, 30, 42.426, 42.426, 42.426, 21.213, 21.213, 42.426],
                                                         abs=1e-3)
    # the second map starts the 0.2..0.9 ramp: 0.2 * 300 = 60 px
    assert sides[second].tolist() == pytest.approx([60, 60], abs=1e-3)
    # first_scale None: the first map at min_scale, 60 px, as before
    before, _ = _first_boxes(MODELS.build("ssd", num_classes=2, input_size=300, first_scale=None), 300)
    assert (before[0, 2:] - before[0, :2]).tolist() == pytest.approx([60, 60], abs=1e-3)


def test_a_small_object_finds_a_default_box_only_at_the_first_scale():
    # A 12.8 px object centred on cell (1, 1) of the 128 px input's stride-8 map, centre (12, 12).
    gt = torch.tensor([[5.6, 5.6, 18.4, 18.4]])
    boxes, _ = _first_boxes(MODELS.build("ssd", num_classes=2), 128)
    # 0.1 * 128 = 12.8 px centred on (12, 12): the very box, IoU 1
    assert box_iou(gt, boxes).max().item() == pytest.approx(1.0, abs=1e-5)
    # first map at 0.2: the best box is 25.6 px (or 36.2 x 18.1) around it: 12.8^2 / 25.6^2 = 0.25 < 0.5
    boxes, _ = _first_boxes(MODELS.build("ssd", num_classes=2, first_scale=None), 128)
    assert box_iou(gt, boxes).max().item() == pytest.approx(0.25, abs=1e-5)


def test_matching_best_box_per_gt_then_iou_half():
    model = MODELS.build("ssd", num_classes=2)
    boxes = torch.tensor([[0.0, 0, 20, 20],     # 0: IoU 0.25 with gt A (its best): forced positive
                          [50, 50, 70, 70],     # 1: IoU 1 with gt B
                          [50, 50, 70, 80],     # 2: IoU 400/600 = 0.667 with gt B: positive too
                          [50, 50, 62, 70],     # 3: IoU 240/400 = 0.6 with gt B: positive
                          [52, 50, 60, 58],     # 4: IoU 64/400 = 0.16: background
                          [100, 100, 120, 120]])  # 5: no overlap: background
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70]])
    matched = model.assign(boxes, gt)
    assert matched.tolist() == [0, 1, 1, 1, BACKGROUND, BACKGROUND]
    # the same as torchvision's SSDMatcher (which ours replaces), on this case
    tv = SSDMatcher(0.5)(box_iou(gt, boxes))
    assert tv.tolist() == [0, 1, 1, 1, -1, -1]


def test_hard_negative_mining_keeps_three_per_positive():
    # 2 positives (boxes 0, 5) -> 6 negatives: the non-positives with the highest loss.
    # Non-positive losses: 1:5.0 2:0.2 3:3.0 4:0.4 6:0.9 7:0.05 8:2.0 9:1.5; top 6: 1, 3, 8, 9, 6, 4.
    loss = torch.tensor([9.0, 5.0, 0.2, 3.0, 0.4, 7.0, 0.9, 0.05, 2.0, 1.5])
    pos = torch.zeros(10, dtype=torch.bool)
    pos[[0, 5]] = True
    mined = hard_negative_mining(loss, pos, 3.0)
    assert mined.nonzero().flatten().tolist() == [1, 3, 4, 6, 8, 9]
    assert int(mined.sum()) == 3 * int(pos.sum()) and not (mined & pos).any()
    # no positive, no negative; more wanted than exist: all of them
    assert not hard_negative_mining(loss, torch.zeros(10, dtype=torch.bool)).any()
    many = torch.ones(10, dtype=torch.bool)
    many[[2, 7]] = False
    assert hard_negative_mining(loss, many).nonzero().flatten().tolist() == [2, 7]


def test_the_loss_counts_positives_and_mined_negatives():
    torch.manual_seed(0)
    model = MODELS.build("ssd", num_classes=2)
    images, targets = drawn_set(1)
    model.train()
    image_list, tg = model.transform(images, targets)
    feats = list(model.body(image_list.tensors).values())
    logits, deltas = model.head(feats)
    boxes = model.default_boxes(image_list, feats)
    matched = model.assign(boxes[0], tg[0]["boxes"])
    pos = matched >= 0
    labels = torch.zeros_like(matched)
    labels[pos] = tg[0]["labels"][matched[pos]] + 1
    per_box = softmax_ce_loss(logits[0], labels)
    neg = per_box.masked_fill(pos, -1).topk(3 * int(pos.sum())).values
    expected = (per_box[pos].sum() + neg.sum()) / pos.sum()  # eq. 1: / N matched
    losses = model.compute_loss(tg, logits, deltas, boxes)
    assert losses["loss_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_train_step_and_eval():
    torch.manual_seed(0)
    model = MODELS.build("ssd", num_classes=3)
    images, targets = drawn_set(2)
    model.train()
    losses = model(images + [torch.rand(3, 96, 160)], targets + [{"boxes": torch.zeros(0, 4),
                                                                  "labels": torch.zeros(0, dtype=torch.long)}])
    assert set(losses) == {"loss_cls", "loss_box"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        out = model([images[0], torch.rand(3, 96, 160)])
    check_detections(out[:1], 1, 3, 128, 128)
    check_detections(out[1:], 1, 3, 96, 160)
    assert out[0]["boxes"].shape[0] > 0


def test_a_short_training_lowers_each_loss():
    torch.manual_seed(0)
    model = MODELS.build("ssd", num_classes=2)
    images, targets = drawn_set(4)
    first, last = train_steps(model, images, targets, steps=25)
    for k in ("loss_cls", "loss_box"):
        assert last[k] < 0.5 * first[k], (k, first, last)


def test_retinanet_without_the_pyramid():
    torch.manual_seed(0)
    model = MODELS.build("retinanet", num_classes=2, fpn=False)
    # one stride-16 map carrying all five levels' 3 octaves x 3 ratios: 45 anchors per location
    assert model.anchor_generator.num_anchors_per_location() == [45]
    images, targets = drawn_set(4)
    model.train()
    image_list, _ = model.transform(images, targets)
    feats = list(model.backbone(image_list.tensors).values())
    assert len(feats) == 1 and feats[0].shape[-2:] == (8, 8)  # 128 / 16
    first, last = train_steps(model, images, targets, steps=25)
    for k in ("loss_cls", "loss_box"):
        assert last[k] < first[k], (k, first, last)
    model.eval()
    with torch.no_grad():
        check_detections(model(images[:1]), 1, 2, 128, 128)
    with_fpn = MODELS.build("retinanet", num_classes=2)
    assert with_fpn.anchor_generator.num_anchors_per_location() == [9] * 5
