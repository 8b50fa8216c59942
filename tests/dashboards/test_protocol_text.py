"""The study page says where the backbone came from and what each multi-phase scheme trained."""
from types import SimpleNamespace

from dashboards.overview import backbone_text, phases_text
from detectors.train.trial import make_trial

PATHS = {k: f"/data/{k}" for k in ("train_images", "train_annotations", "val_images", "val_annotations")}


def test_backbone_text_names_the_source_and_the_fine_tuning():
    assert backbone_text({"weights": None}, None, {}, False).startswith("random initialisation")
    pre = backbone_text({"weights": "pretrain", "freeze_at": 2, "norm": "frozen",
                         "pretrain": {"images": 8000, "epochs": 20}}, "ab" * 32,
                        {"ab" * 32: {"result": {"val_accuracy": 0.8125}}}, False)
    assert "8000 generated images, 20 epochs, held-out accuracy 0.812 (weights abababababab)" in pre
    assert "first 2 stages frozen, batch norms frozen" in pre
    own = backbone_text({"weights": "/w/r50.pth", "freeze_at": 1, "norm": "train"}, "cd" * 32, {}, False)
    assert "<code>/w/r50.pth</code> (sha256 cdcdcdcdcdcd)" in own and "batch norms trained" in own
    assert backbone_text({"weights": "pretrain"}, None, {}, True).startswith("swept")


def test_phases_text_lists_each_multi_phase_variant_with_its_epochs():
    alternating = make_trial(PATHS, "/tmp/a", detector={"name": "faster_rcnn", "params": {"training": "alternating"}},
                             loss={"name": "softmax_ce"}, train={"epochs": 8}, variant="alternating")
    joint = make_trial(PATHS, "/tmp/j", detector={"name": "faster_rcnn"}, loss={"name": "softmax_ce"},
                       train={"epochs": 8}, variant="joint")
    sd = SimpleNamespace(variants=["alternating", "joint"], failed=[],
                         finished=[{"variant": "alternating", "config": alternating},
                                   {"variant": "joint", "config": joint}])
    # 8 epochs: the RPN steps train 8, the detector steps ceil(8 / 2) = 4 (py-faster-rcnn's 80k/40k)
    assert phases_text(sd) == ("<ul style='margin:0'><li>alternating: 4 phases, rpn 8 + detector 4 + "
                               "rpn_shared 8 + detector_shared 4 epochs</li></ul>")
    sd.variants, sd.finished = ["joint"], sd.finished[1:]
    assert phases_text(sd) == ""  # one phase: the budget row says it
