"""platform.study.datasets: a COCO dataset's annotation files are checked on the driver before anything starts;
each fault is one line naming the file and the record, exit 2, nothing written; a passed check is remembered."""
import json
import os

import pytest
import yaml

from platform.run import main
from platform.study import datasets
from platform.study.datasets import DatasetFaults, check_coco


def good_coco():
    """Two images (100x80 and 50x50), two categories, three boxes; a crowd box touches the border."""
    return {"images": [{"id": 1, "file_name": "a.png", "width": 100, "height": 80},
                       {"id": 2, "file_name": "b.png", "width": 50, "height": 50}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 5]},
                            {"id": 2, "image_id": 2, "category_id": 3, "bbox": [0.5, 0, 49.5, 50.4]},
                            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 4], "iscrowd": 1}]}


def write_dataset(tmp_path, coco):
    """val.json (or the text given) and an images dir holding a.png and b.png; the study file using them."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(b"")
    ann = tmp_path / "val.json"
    ann.write_text(coco if isinstance(coco, str) else json.dumps(coco))
    study = {"name": "d", "dataset": {"kind": "coco", "train_images": str(images), "val_images": str(images),
                                      "train_annotations": str(ann), "val_annotations": str(ann)},
             "detector": {"name": "retinanet"}, "loss": {"name": "focal"},
             "output": {"runs_dir": str(tmp_path / "runs"), "reports_dir": str(tmp_path / "reports")}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return str(path), str(ann)


def broken(change):
    coco = good_coco()
    change(coco)
    return coco


CASES = [
    ("not-json", '{"images": [\n  {"id": 1,, }]}', "line 2, column 12: not valid JSON: Expecting property name "
     "enclosed in double quotes"),
    ("duplicate-image-id", broken(lambda c: c["images"].append({"id": 2, "file_name": "a.png"})),
     "images[2] (id 2): duplicate id 2 (also images[1])"),
    ("zero-width", broken(lambda c: c["annotations"][0].update(bbox=[10, 10, 0, 5])),
     "annotations[0] (id 1): bbox [10, 10, 0, 5] has zero width"),
    # 0.5 + 49.5 = 50 fits the 50 px image; 10 + 45 = 55 is past it by 5 > 1 px
    ("box-outside", broken(lambda c: c["annotations"][1].update(bbox=[10, 0, 45, 50])),
     "annotations[1] (id 2): bbox [10, 0, 45, 50] is outside its image images[1] (id 2): ends at x + w = 55, "
     "past the width 50 (1 px tolerance)"),
    ("unknown-category", broken(lambda c: c["annotations"][2].update(category_id=2)),
     "annotations[2] (id 3): category_id 2 is not in categories"),
    ("missing-image-file", broken(lambda c: c["images"][1].update(file_name="c.png")),
     "images[1] (id 2): file {images}/c.png does not exist"),
    ("missing-field", broken(lambda c: c["annotations"][1].pop("image_id")),
     "annotations[1] (id 2): required field 'image_id' is missing"),
]


@pytest.mark.parametrize("coco,fault", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_fault_is_one_line_naming_file_and_record_and_exits_2_writing_nothing(tmp_path, capsys, coco, fault):
    study, ann = write_dataset(tmp_path, coco)
    assert main([study]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    # train and val are the same file: checked once, the first fault reported once
    assert err.splitlines() == [f"error: {ann}: {fault.format(images=tmp_path / 'images')}"]
    assert sorted(os.listdir(tmp_path)) == ["images", "study.yaml", "val.json"]


def test_every_fault_is_a_line_up_to_a_cap_then_a_count(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MAX_FAULTS", 2)
    coco = good_coco()
    for ann in coco["annotations"]:
        ann["bbox"][2] = 0  # three zero-width boxes
    coco["annotations"][0]["category_id"] = 7  # a fourth fault, found before the boxes
    _, ann = write_dataset(tmp_path, coco)
    with pytest.raises(DatasetFaults) as e:
        check_coco(ann, str(tmp_path / "images"))
    assert e.value.lines == [f"{ann}: annotations[0] (id 1): category_id 7 is not in categories",
                             f"{ann}: annotations[0] (id 1): bbox [10, 10, 0, 5] has zero width",
                             f"{ann}: 2 more faults not shown (the first 2 are above)"]


def test_a_good_file_passes_and_a_second_check_reads_only_the_verdict(tmp_path, monkeypatch):
    _, ann = write_dataset(tmp_path, good_coco())
    images, cache = str(tmp_path / "images"), str(tmp_path / "cache")
    assert check_coco(ann, images, cache) == {"images": 2, "annotations": 3, "categories": 2}
    assert len(os.listdir(tmp_path / "cache" / "checked")) == 2  # by (path, size, mtime) and by content

    def no_parse(file, data):
        raise AssertionError("parsed again")

    monkeypatch.setattr(datasets, "_parse", no_parse)
    assert check_coco(ann, images, cache) is None  # remembered
    os.utime(ann, ns=(1, 1))  # same bytes, another time: found by its content digest, still not parsed
    assert check_coco(ann, images, cache) is None
    os.remove(tmp_path / "images" / "b.png")  # the listing changed: checked again, and now it fails
    monkeypatch.undo()
    with pytest.raises(DatasetFaults, match=r"images\[1\] \(id 2\): file .*b.png does not exist"):
        check_coco(ann, images, cache)


def test_a_dry_run_checks_but_remembers_nothing(tmp_path, capsys):
    study, _ = write_dataset(tmp_path, good_coco())
    assert main([study, "--dry-run"]) == 0
    assert "1 trials" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == ["images", "study.yaml", "val.json"]
    coco = broken(lambda c: c["annotations"][0].update(bbox=[10, 10, 5, -1]))
    (tmp_path / "val.json").write_text(json.dumps(coco))
    assert main([study, "--dry-run"]) == 2
    assert capsys.readouterr().err.endswith("annotations[0] (id 1): bbox [10, 10, 5, -1] has negative height\n")
