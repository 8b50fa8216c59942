"""The held-out tuning split of a training set (detectors.data.holdout)."""
import json

import numpy as np
import pytest

from detectors.data.holdout import held_out_count, holdout_split


def _coco(n):
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 8, "height": 8} for i in range(1, n + 1)],
            "annotations": [{"id": 10 * i, "image_id": i, "category_id": 1, "bbox": [0, 0, 2, 2], "area": 4,
                             "iscrowd": 0} for i in range(1, n + 1)],
            "categories": [{"id": 1, "name": "box"}]}


def test_held_out_count_rounds_and_keeps_both_sides():
    assert held_out_count(10, 0.2) == 2      # round(0.2 * 10) = 2
    assert held_out_count(800, 0.2) == 160   # round(0.2 * 800) = 160
    assert held_out_count(3, 0.1) == 1       # round(0.3) = 0, raised to 1
    assert held_out_count(3, 0.9) == 2       # round(2.7) = 3, lowered to n - 1 = 2
    with pytest.raises(ValueError, match="at least 2"):
        held_out_count(1, 0.5)


def test_split_is_a_seeded_partition_of_the_images_with_their_boxes(tmp_path):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(_coco(10)))
    rest, held = holdout_split(str(src), 0.2, 0, str(tmp_path / "out"))
    rest, held = json.loads(open(rest).read()), json.loads(open(held).read())
    # the first 2 of numpy's seed-0 permutation of the 10 sorted ids are held out
    expected = {i + 1 for i in np.random.default_rng(0).permutation(10)[:2]}
    assert {im["id"] for im in held["images"]} == expected
    assert {im["id"] for im in rest["images"]} == set(range(1, 11)) - expected
    assert {a["image_id"] for a in held["annotations"]} == expected  # each box goes with its image
    assert len(rest["annotations"]) == 8 and held["categories"] == rest["categories"]


def test_split_is_written_once_per_content_fraction_and_seed(tmp_path):
    src = tmp_path / "train.json"
    src.write_text(json.dumps(_coco(10)))
    first = holdout_split(str(src), 0.2, 0, str(tmp_path / "out"))
    assert holdout_split(str(src), 0.2, 0, str(tmp_path / "out")) == first
    assert holdout_split(str(src), 0.2, 1, str(tmp_path / "out")) != first   # another seed
    assert holdout_split(str(src), 0.3, 0, str(tmp_path / "out")) != first   # another fraction
    src.write_text(json.dumps(_coco(12)))
    assert holdout_split(str(src), 0.2, 0, str(tmp_path / "out")) != first   # another content
