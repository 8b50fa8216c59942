"""The COCO loader on a hand-written dataset: id mapping, crowd boxes, image modes, and bad input."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from detectors.data import CocoDetection, DatasetError, collate
from detectors.evaluation.evaluate import evaluate_coco, to_coco_results

ANN = "instances.json"


def _write_dataset(root, annotations=None, images=None, categories=None):
    """Four images in four modes, non-contiguous ids, a crowd box and an empty image.

    Image 10: RGB 40x30; 20: grayscale 20x20 (value 51); 30: RGBA 32x24 (red,
    half transparent); 40: palette 16x16 with no annotations. Category ids 90, 3, 7
    (deliberately unsorted in the file) -> labels cat=0 (id 3), dog=1 (7), zebra=2 (90).
    """
    img_dir = root / "images"
    img_dir.mkdir(exist_ok=True)
    Image.new("RGB", (40, 30), (10, 20, 30)).save(img_dir / "a.png")
    Image.new("L", (20, 20), 51).save(img_dir / "b.png")
    Image.new("RGBA", (32, 24), (255, 0, 0, 128)).save(img_dir / "c.png")
    Image.new("RGB", (16, 16), (0, 255, 0)).convert("P").save(img_dir / "d.png")
    if images is None:
        images = [{"id": 10, "file_name": "a.png", "width": 40, "height": 30},
                  {"id": 20, "file_name": "b.png", "width": 20, "height": 20},
                  {"id": 30, "file_name": "c.png", "width": 32, "height": 24},
                  {"id": 40, "file_name": "d.png", "width": 16, "height": 16}]
    if categories is None:
        categories = [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    if annotations is None:
        # No "area" anywhere and no "iscrowd" on some: the loader fills them in for COCOeval.
        annotations = [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5]},
            {"id": 2, "image_id": 10, "category_id": 90, "bbox": [20, 10, 15, 12], "iscrowd": 0},
            {"id": 3, "image_id": 10, "category_id": 3, "bbox": [0, 0, 40, 30], "iscrowd": 1},
            {"id": 4, "image_id": 20, "category_id": 3, "bbox": [5, 5, 6, 7]},
            {"id": 5, "image_id": 30, "category_id": 90, "bbox": [1, 2, 3, 4], "iscrowd": 0},
        ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    (root / ANN).write_text(json.dumps(data))
    return str(img_dir), str(root / ANN)


def test_loads_with_contiguous_labels_and_original_ids(tmp_path):
    ds = CocoDetection(*_write_dataset(tmp_path))
    assert ds.cat_ids == [3, 7, 90]
    assert ds.cat_id_to_label == {3: 0, 7: 1, 90: 2}
    assert ds.class_names == ["cat", "dog", "zebra"]
    assert ds.class_counts == [1, 1, 2]  # the crowd box (id 3, a cat) is not a training target
    assert ds.image_ids == [10, 20, 30, 40] and len(ds) == 4
    assert len(ds.coco.getAnnIds()) == 5  # ...but it stays in the ground truth for COCOeval

    image, target = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert target["image_id"] == 10 and isinstance(target["image_id"], int)
    # xywh [2, 3, 10, 5] -> xyxy [2, 3, 12, 8]; [20, 10, 15, 12] -> [20, 10, 35, 22].
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [20.0, 10.0, 35.0, 22.0]]))
    assert target["boxes"].dtype == torch.float32
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64


def test_image_modes_become_rgb_in_unit_range(tmp_path):
    ds = CocoDetection(*_write_dataset(tmp_path))
    rgb, _ = ds[0]
    assert torch.allclose(rgb[:, 0, 0], torch.tensor([10, 20, 30]) / 255.0)
    gray, t_gray = ds[1]
    assert gray.shape == (3, 20, 20)
    assert torch.allclose(gray, torch.full((3, 20, 20), 51 / 255.0))  # 51 / 255 = 0.2 in every channel
    assert t_gray["labels"].tolist() == [0]
    rgba, t_rgba = ds[2]
    assert rgba.shape == (3, 24, 32)  # alpha dropped, colour kept
    assert torch.allclose(rgba[:, 5, 5], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(t_rgba["boxes"], torch.tensor([[1.0, 2.0, 4.0, 6.0]]))
    palette, empty = ds[3]
    assert palette.shape == (3, 16, 16)
    assert torch.allclose(palette[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]))
    assert empty["boxes"].shape == (0, 4) and empty["boxes"].dtype == torch.float32
    assert empty["labels"].shape == (0,) and empty["labels"].dtype == torch.int64
    assert empty["image_id"] == 40


def test_hflip_uses_torch_rng_and_mirrors_boxes(tmp_path):
    paths = _write_dataset(tmp_path)
    plain = CocoDetection(*paths)
    flipped = CocoDetection(*paths, hflip_prob=1.0)
    image, _ = plain[0]
    f_image, f_target = flipped[0]
    assert torch.equal(f_image, image.flip(-1))
    # Width 40: [2, 3, 12, 8] -> [40 - 12, 3, 40 - 2, 8] = [28, 3, 38, 8].
    assert torch.equal(f_target["boxes"][0], torch.tensor([28.0, 3.0, 38.0, 8.0]))

    # hflip_prob=0 draws nothing, so torch's stream is untouched.
    state = torch.get_rng_state()
    plain[0]
    assert torch.equal(torch.get_rng_state(), state)

    # With p=0.5 the flips follow torch's global seed: same seed, same flips.
    half = CocoDetection(*paths, hflip_prob=0.5)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append([half[0][1]["boxes"][0, 0].item() for _ in range(20)])
    assert runs[0] == runs[1] and set(runs[0]) == {2.0, 28.0}


def test_collate_keeps_lists(tmp_path):
    ds = CocoDetection(*_write_dataset(tmp_path))
    images, targets = collate([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert [im.shape for im in images] == [(3, 30, 40), (3, 20, 20)]
    assert [t["image_id"] for t in targets] == [10, 20]


def test_detections_from_targets_map_back_to_original_ids_with_ap_one(tmp_path):
    ds = CocoDetection(*_write_dataset(tmp_path))
    preds = []
    for i in range(len(ds)):
        _, t = ds[i]
        preds.append({"image_id": t["image_id"], "boxes": t["boxes"],
                      "scores": torch.ones(len(t["labels"])), "labels": t["labels"]})
    results = to_coco_results(preds, ds.cat_ids)
    got = sorted((r["image_id"], r["category_id"], r["bbox"]) for r in results)
    assert got == [(10, 7, [2.0, 3.0, 10.0, 5.0]), (10, 90, [20.0, 10.0, 15.0, 12.0]),
                   (20, 3, [5.0, 5.0, 6.0, 7.0]), (30, 90, [1.0, 2.0, 3.0, 4.0])]
    out = evaluate_coco(ds.coco, results, ds.class_names, ds.cat_ids)
    assert out["metrics"]["AP"] == pytest.approx(1.0, abs=1e-6)
    assert out["metrics"]["AP50"] == pytest.approx(1.0, abs=1e-6)
    assert out["per_class_ap"] == pytest.approx({"cat": 1.0, "dog": 1.0, "zebra": 1.0}, abs=1e-6)
    # Every non-crowd box is small (largest 15 x 12 = 180 < 32^2); the only medium one
    # is the crowd box, which COCOeval ignores: no medium/large ground truth -> None.
    assert out["metrics"]["APm"] is None and out["metrics"]["APl"] is None


# --- bad input ----------------------------------------------------------------


def _error(tmp_path, **kwargs):
    with pytest.raises(DatasetError) as info:
        CocoDetection(*_write_dataset(tmp_path, **kwargs))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_image_file_names_path_and_image_id(tmp_path):
    img_dir, ann = _write_dataset(tmp_path)
    os.remove(os.path.join(img_dir, "c.png"))
    with pytest.raises(DatasetError) as info:
        CocoDetection(img_dir, ann)
    assert str(info.value) == f"instances.json: image 30: file {os.path.join(img_dir, 'c.png')} does not exist"


def test_unknown_image_and_category_ids_name_the_annotation(tmp_path):
    ok = {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5]}
    msg = _error(tmp_path, annotations=[ok, {"id": 17, "image_id": 999, "category_id": 7, "bbox": [0, 0, 5, 5]}])
    assert msg == "instances.json: annotation 17: image_id 999 is not in images"
    msg = _error(tmp_path, annotations=[ok, {"id": 17, "image_id": 10, "category_id": 99, "bbox": [0, 0, 5, 5]}])
    assert msg == "instances.json: annotation 17: category_id 99 is not in categories"
    msg = _error(tmp_path, annotations=[ok, {"id": 18, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5]}])
    assert msg.startswith("instances.json: annotation 18: bbox must be 4 finite numbers")
    # COCOeval reads a matched gt id of 0 as "unmatched": refuse it rather than miscount.
    msg = _error(tmp_path, annotations=[{"id": 0, "image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5]}])
    assert msg == "instances.json: annotation #0: id must be an integer >= 1, got 0"
    msg = _error(tmp_path, annotations=[ok, dict(ok)])
    assert msg == "instances.json: annotation 1: duplicate id"
    msg = _error(tmp_path, images=[{"id": 10, "file_name": "a.png"}, {"id": 10, "file_name": "b.png"}],
                 annotations=[])
    assert msg == "instances.json: image 10: duplicate id"


def test_unreadable_json_names_the_file(tmp_path):
    bad = tmp_path / "instances_bad.json"
    bad.write_text('{"images": [')
    with pytest.raises(DatasetError, match=r"instances_bad\.json: cannot read annotations: ") as info:
        CocoDetection(str(tmp_path), str(bad))
    assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match=r"nope\.json: cannot read annotations"):
        CocoDetection(str(tmp_path), str(tmp_path / "nope.json"))


def test_degenerate_boxes_dropped_and_outside_boxes_clipped_with_one_warning(tmp_path):
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5]},     # fine
        {"id": 2, "image_id": 10, "category_id": 7, "bbox": [5, 5, 0.5, 10]},   # 0.5 px wide: dropped
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [30, 20, 20, 20]},  # past the 40x30 image: clipped
        {"id": 4, "image_id": 10, "category_id": 3, "bbox": [50, 50, 5, 5]},    # fully outside: clipped to 0 -> dropped
    ]
    with pytest.warns(UserWarning, match=r"^instances\.json: clipped 1 boxes, dropped 2 degenerate boxes"):
        ds = CocoDetection(*_write_dataset(tmp_path, annotations=anns))
    _, target = ds[0]
    # [30, 20, 20, 20] -> xyxy [30, 20, 50, 40] -> clipped to the 40 x 30 image: [30, 20, 40, 30].
    assert torch.equal(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0], [30.0, 20.0, 40.0, 30.0]]))
    assert target["labels"].tolist() == [1, 0]
    assert ds.class_counts == [1, 1, 0]


def test_image_size_mismatch_is_reported_when_loaded(tmp_path):
    images = [{"id": 10, "file_name": "a.png", "width": 41, "height": 30}]
    ds = CocoDetection(*_write_dataset(tmp_path, images=images, annotations=[]))
    with pytest.raises(DatasetError, match=r"instances\.json: image 10: .*a\.png is 40x30 but the record says 41x30"):
        ds[0]


def test_missing_width_height_read_from_the_file(tmp_path):
    images = [{"id": 10, "file_name": "a.png"}]
    anns = [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [30, 0, 20, 5]}]
    with pytest.warns(UserWarning, match="clipped 1 boxes"):
        ds = CocoDetection(*_write_dataset(tmp_path, images=images, annotations=anns))
    # Width 40 from the PNG header: [30, 0, 50, 5] -> [30, 0, 40, 5].
    assert ds[0][1]["boxes"].tolist() == [[30.0, 0.0, 40.0, 5.0]]
    assert np.isclose(ds.coco.anns[1]["area"], 100.0)  # filled in as the box area 20 x 5
