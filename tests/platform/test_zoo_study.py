"""studies/detector_zoo.yaml: every registered detector (bar ``dense``, the presets' common model)
under one budget, each with its own default losses, from one pretrained backbone, at least 3 seeds."""
import os

from detectors.build import resolve_losses
from detectors.models import MODELS
from platform.study.expand import expand
from platform.study.load import load_study

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_zoo_expands_to_every_detector_under_one_budget(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # runs/ and reports/ resolve here
    trials = expand(load_study(os.path.join(REPO, "studies", "detector_zoo.yaml")))
    seeds = {t["seed"] for t in trials}
    assert len(seeds) >= 3  # the fewest that give the seed test a verdict
    # every detector starts from the same pretrained tiny body, as every paper started pretrained
    assert {t["detector"]["backbone"]["weights"] for t in trials} == {"pretrain"}
    assert len({t["backbone_digest"] for t in trials}) == 1
    variants = list(dict.fromkeys(t["variant"] for t in trials))
    assert len(trials) == len(variants) * len(seeds)
    names = {t["detector"]["name"] for t in trials}
    # dense's defaults are gfl's; rcnn / fast_rcnn (selective search) are compared in two_stage_evolution
    assert names == set(MODELS.names()) - {"dense", "rcnn", "fast_rcnn"}
    # the FPN ablation: RetinaNet with and without its pyramid
    assert {t["variant"]: t["detector"]["params"].get("fpn") for t in trials if t["detector"]["name"] == "retinanet"} \
        == {"retinanet": None, "retinanet-no-fpn": False}
    # one budget and one evaluation for all
    for key in ("epochs", "batch_size", "lr", "optimizer", "schedule"):
        assert len({t["train"][key] for t in trials}) == 1, key
    assert len({str(t["eval"]) for t in trials}) == 1 and len({str(t["dataset"]) for t in trials}) == 1
    # no `loss:` section: each detector trains with its own default losses
    for t in trials:
        assert t["loss"] is None and t["losses"] == {}
    assert resolve_losses("yolov1", None, {}) == {"cls": {"name": "sse", "params": {}}}
    assert resolve_losses("ssd", None, {})["cls"]["name"] == "softmax_ce"


def test_the_run_description_of_a_study_without_a_loss_section(tmp_path, monkeypatch):
    from platform.track.tracking import study_description

    monkeypatch.chdir(tmp_path)
    study = load_study(os.path.join(REPO, "studies", "detector_zoo.yaml"))
    text = study_description(study, expand(study), "reports/detector_zoo/index.html")
    assert "retinanet (tiny), default losses, 10 epochs" in text
