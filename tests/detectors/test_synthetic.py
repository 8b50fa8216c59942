"""The generated dataset: byte-for-byte determinism, caching, atomic writes, and its statistics."""
import json
import os
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from detectors.data import synthetic
from detectors.data.synthetic import DEFAULTS, SHAPES, generate

SMALL = {"num_train": 8, "num_val": 4, "seed": 1}
PATH_KEYS = ("train_images", "train_annotations", "val_images", "val_annotations", "root")


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_same_params_give_identical_bytes_in_two_caches(tmp_path):
    a = generate(SMALL, str(tmp_path / "a"))
    b = generate(dict(SMALL), str(tmp_path / "b"))
    assert os.path.basename(a["root"]) == os.path.basename(b["root"])  # same content hash
    files_a, files_b = _files(a["root"]), _files(b["root"])
    # 8 + 4 PNGs, 2 json files, the completion marker.
    assert len(files_a) == 8 + 4 + 2 + 1
    assert files_a == files_b


def test_other_seed_changes_bytes_and_splits_differ(tmp_path):
    a = generate(SMALL, str(tmp_path))
    c = generate({**SMALL, "seed": 2}, str(tmp_path))
    assert a["root"] != c["root"]
    with open(os.path.join(a["train_images"], "000001.png"), "rb") as f1, \
            open(os.path.join(c["train_images"], "000001.png"), "rb") as f2:
        assert f1.read() != f2.read()
    assert _load(a["train_annotations"])["annotations"] != _load(c["train_annotations"])["annotations"]
    # Train and val draw from different streams: image 1 of each split differs.
    with open(os.path.join(a["train_images"], "000001.png"), "rb") as f1, \
            open(os.path.join(a["val_images"], "000001.png"), "rb") as f2:
        assert f1.read() != f2.read()


def test_paths_layout_and_coco_content(tmp_path):
    paths = generate(SMALL, str(tmp_path))
    assert set(paths) == set(PATH_KEYS)
    assert all(os.path.isabs(p) and os.path.exists(p) for p in paths.values())
    assert os.path.basename(paths["root"]).startswith("synthetic-")
    assert paths["train_images"] == os.path.join(paths["root"], "train")
    data = _load(paths["train_annotations"])
    assert data["info"]["params"] == {**DEFAULTS, **SMALL}
    assert [c["id"] for c in data["categories"]] == [1, 2, 3, 4, 5]  # COCO ids start at 1
    assert [c["name"] for c in data["categories"]] == SHAPES[:5]
    assert [im["id"] for im in data["images"]] == list(range(1, 9))
    for im in data["images"]:
        with Image.open(os.path.join(paths["train_images"], im["file_name"])) as img:
            assert img.size == (128, 128) and img.mode == "RGB"
    ids = [a["id"] for a in data["annotations"]]
    assert ids == list(range(1, len(ids) + 1))
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
        assert w >= 4 and h >= 4 and ann["area"] == w * h and ann["iscrowd"] == 0


def test_second_call_reuses_the_cache_without_rewriting(tmp_path):
    first = generate(SMALL, str(tmp_path))
    stamps = {p: os.stat(os.path.join(first["root"], p)).st_mtime_ns for p in _files(first["root"])}
    again = generate(SMALL, str(tmp_path))
    assert again == first
    assert {p: os.stat(os.path.join(first["root"], p)).st_mtime_ns for p in stamps} == stamps
    assert os.listdir(tmp_path) == [os.path.basename(first["root"])]  # no temp dir left behind


def test_losing_the_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    real_rename = os.rename
    winner = generate(SMALL, str(tmp_path / "other"))["root"]

    def another_process_wins(src, dst):
        # Another generator finished first: dst now exists, complete, and ours cannot replace it.
        real_rename(winner, dst)
        real_rename(src, dst)  # raises OSError: directory not empty

    monkeypatch.setattr(synthetic.os, "rename", another_process_wins)
    paths = generate(SMALL, str(tmp_path / "cache"))
    monkeypatch.undo()
    assert os.listdir(tmp_path / "cache") == [os.path.basename(paths["root"])]
    assert len(_files(paths["root"])) == 15


def test_incomplete_directory_is_not_trusted(tmp_path):
    os.makedirs(tmp_path / synthetic.dataset_dir_name(SMALL))
    with pytest.raises(RuntimeError, match="no COMPLETE marker"):
        generate(SMALL, str(tmp_path))


def test_unknown_and_invalid_params_raise(tmp_path):
    with pytest.raises(ValueError, match="unknown parameter 'num_imgs'"):
        generate({"num_imgs": 3}, str(tmp_path))
    with pytest.raises(ValueError, match="'object_size'"):
        generate({"object_size": [30, 10]}, str(tmp_path))
    with pytest.raises(ValueError, match="'num_classes' must be in 1..8"):
        generate({"num_classes": 9}, str(tmp_path))
    assert os.listdir(tmp_path) == []  # nothing written for a bad request


def test_class_frequencies_are_long_tailed_and_small_objects_exist(tmp_path):
    paths = generate({"num_train": 80, "num_val": 1, "seed": 0}, str(tmp_path))
    anns = _load(paths["train_annotations"])["annotations"]
    counts = Counter(a["category_id"] for a in anns)
    # Zipf exponent 1 over 5 classes: p(first) / p(last) = (1/1) / (1/5) = 5.
    # 80 images x 3 objects on average ~ 240 objects: expect ~105 vs ~21.
    assert counts[1] > 2 * counts[5] > 0
    areas = np.array([a["area"] for a in anns])
    # COCO "small" is area < 32^2 = 1024; log-uniform sizes in [10, 56] make many of them.
    assert (areas < 1024).sum() >= 0.3 * len(areas)
    assert (areas >= 1024).sum() > 0
    # Rendered on top of each other, objects may overlap but none is dropped wholesale:
    # [1, 5] objects per image means every image has at least one.
    assert len({a["image_id"] for a in anns}) == 80


def test_boxes_are_the_tight_box_of_the_drawn_shape(tmp_path):
    # No clutter, no blur, no distractors: the background is one flat colour, so the
    # non-background pixels of a one-object image are exactly the shape.
    params = {"num_train": 24, "num_val": 1, "seed": 5, "clutter": 0.0, "blur": 0.0,
              "distractors": [0, 0], "objects_per_image": [1, 1], "num_classes": 8}
    paths = generate(params, str(tmp_path))
    data = _load(paths["train_annotations"])
    assert len(data["annotations"]) == 24
    for im, ann in zip(data["images"], data["annotations"]):
        with Image.open(os.path.join(paths["train_images"], im["file_name"])) as img:
            pixels = np.asarray(img).reshape(-1, 3)
        colours, n = np.unique(pixels, axis=0, return_counts=True)
        background = colours[n.argmax()]
        ys, xs = np.nonzero((np.asarray(pixels) != background).any(axis=1).reshape(128, 128))
        tight = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert ann["bbox"] == [float(v) for v in tight], im["file_name"]
