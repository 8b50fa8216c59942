"""platform.study.memo: a validated study file's expansion is remembered, and forgotten when anything it came
from changes."""
import json
import os

import yaml

from platform.study import memo
from platform.study.memo import load_expanded, remember
from platform.run import main


def write(tmp_path, **changes):
    study = {"name": "m", "dataset": {"kind": "synthetic"}, "detector": {"name": "retinanet"},
             "loss": {"name": "focal", "params": {"gamma": 2}}, "sweep": {"seeds": [0, 1]},
             "output": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")}, **changes}
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path)


def test_remembered_expansion_equals_a_fresh_one_and_skips_validation(tmp_path, monkeypatch):
    path = write(tmp_path)
    study, trials, hit = load_expanded(path)
    assert not hit and len(trials) == 2
    remember(path, study, trials)
    # a hit must not validate again: the component checks (torch, the registries) are not called
    import platform.study.checks

    def boom(*a, **k):
        raise AssertionError("validated again")

    monkeypatch.setattr(platform.study.checks, "_check_components", boom)
    again, again_trials, hit = load_expanded(path)
    assert hit and again_trials == trials
    assert again.model_dump(mode="json") == study.model_dump(mode="json")  # params normalised as validated
    assert again.loss.params["gamma"] == 2.0 and again.source == path


def test_any_change_to_the_file_or_the_code_forgets_it(tmp_path, monkeypatch):
    path = write(tmp_path)
    study, trials, _ = load_expanded(path)
    remember(path, study, trials)
    with open(path, "a") as f:
        f.write("# a comment is a change too\n")
    assert not load_expanded(path)[2]
    remember(path, *load_expanded(path)[:2])
    assert load_expanded(path)[2]
    monkeypatch.setattr(memo, "memo_key", lambda source: "detectors code changed")
    assert not load_expanded(path)[2]


def test_a_touched_coco_annotation_file_forgets_it(tmp_path):
    ann = {"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 4}], "annotations": [],
           "categories": [{"id": 1, "name": "c"}]}
    (tmp_path / "img").mkdir()
    for split in ("train", "val"):
        (tmp_path / f"{split}.json").write_text(json.dumps(ann))
    ds = {"kind": "coco", "train_images": str(tmp_path / "img"), "val_images": str(tmp_path / "img"),
          "train_annotations": str(tmp_path / "train.json"), "val_annotations": str(tmp_path / "val.json")}
    path = write(tmp_path, dataset=ds)
    remember(path, *load_expanded(path)[:2])
    assert load_expanded(path)[2]
    os.utime(tmp_path / "val.json", ns=(1, 1))  # same bytes, other time: validation reads the file again
    assert not load_expanded(path)[2]


def test_a_dry_run_writes_no_memo(tmp_path, capsys):
    path = write(tmp_path)
    assert main([path, "--dry-run"]) == 0
    assert not os.path.exists(tmp_path / "runs" / "m" / memo.MEMO_FILE)
    assert "2 trials" in capsys.readouterr().out
